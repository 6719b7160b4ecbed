package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/enforce"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/pushers"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func listRooms(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("rooms", stderr)
	onlyProblems := fs.Bool("problems", false, "only rooms needing attention; exit 1 if there are any")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	ctx := context.Background()
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	if err != nil {
		return err
	}
	defer db.Close()
	pol, err := policyForReport(ctx, cfg, db, stdout)
	if err != nil {
		return err
	}
	rooms, err := enforce.ListRooms(ctx, db, pol)
	if err := recordCommand(ctx, db, chain, "rooms", "", int64(len(rooms)), err); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROOM\tENCRYPTED\tPOLICY\tJOIN RULE\tGUESTS\tBOT POWER\tATTENTION")
	attention := 0
	for i := range rooms {
		r := &rooms[i]
		notes := r.Attention()
		if r.NeedsAttention() {
			attention++
		} else if *onlyProblems {
			continue
		}
		if r.Underpowered() {
			notes = append(notes, fmt.Sprintf("(bot at power %d: the room's creator fixes its settings)", r.BotPower))
		}
		pol := "optional"
		if r.EncryptionRequired {
			pol = "required"
		}
		bot := "-"
		if r.BotJoined {
			bot = fmt.Sprintf("%d/%d", r.BotPower, r.Needed)
		}
		note := strings.Join(notes, "; ")
		if note == "" {
			note = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, yesNo(r.Encrypted), pol, orDash(r.JoinRule), orDash(r.GuestAccess), bot, note)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d rooms, %d needing attention\n", len(rooms), attention)
	if *onlyProblems && attention > 0 {
		return errFinding
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// policyForReport is the policy `status` and `rooms` report on: the file's,
// or, while the file is refused, the one the running service keeps in force
// (saying so first: that is when an admin most needs these commands).
func policyForReport(ctx context.Context, cfg *config.Config, db *store.DB, out io.Writer) (*policy.Policy, error) {
	file := cfg.Policy
	if cfg.Policy == "" {
		return appservice.BuiltinPolicy(), nil
	}
	pol, err := policy.Load(file)
	if err == nil {
		return pol, nil
	}
	inForce, since, ierr := appservice.PolicyInForce(ctx, db)
	if ierr != nil {
		return nil, err // the service has never run: nothing else to report on
	}
	fmt.Fprintf(out, "policy file %s is REFUSED; the service keeps the policy in force (%s, since %s), which this reports on:\n%s\n\n",
		file, inForce.Hash, since.UTC().Format(time.RFC3339), err)
	return inForce, nil
}

// statusCommand prints the service's state as its database shows it.
func statusCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("status", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	pol, err := policyForReport(ctx, cfg, db, stdout)
	if err != nil {
		return err
	}
	dbFile := ""
	if cfg.Database.Type == "sqlite3" {
		dbFile = cfg.Database.URI
	}
	st, err := appservice.ReadStatus(ctx, db, dbFile)
	if err == nil {
		st.Rooms, st.RoomIssues, err = enforce.RoomCounts(ctx, db, pol)
	}
	if err := recordCommand(ctx, db, chain, "status", "", 0, err); err != nil {
		return err
	}
	now := time.Now()
	when := func(ms int64) string {
		if ms == 0 {
			return "never"
		}
		t := time.UnixMilli(ms)
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), now.Sub(t).Round(time.Second))
	}
	size := "(PostgreSQL)"
	if st.DatabaseBytes >= 0 {
		size = fmt.Sprintf("%.1f MiB", float64(st.DatabaseBytes)/(1<<20))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "database\t%s, schema %d, %s\n", cfg.Database.Type, st.Schema, size)
	fmt.Fprintf(tw, "events received\t%d, the last %s\n", st.EventsReceived, when(st.LastReceived))
	fmt.Fprintf(tw, "waiting for policy\t%d\n", st.Waiting)
	fmt.Fprintf(tw, "actions\t%d pending, %d failed for good\n", st.JobsPending, st.JobsFailed)
	fmt.Fprintf(tw, "audit chain\t%d records, the last %s\n", st.AuditHead, when(st.AuditHeadTime))
	fmt.Fprintf(tw, "signed checkpoint\tvouches for record %d, written %s\n", st.CheckpointSeq, when(st.CheckpointTime))
	for _, e := range st.Exporters {
		fmt.Fprintf(tw, "exporter %s\t%d records behind, last delivery %s\n", e.Name, e.Behind, when(e.LastDelivered))
	}
	fmt.Fprintf(tw, "legal holds\t%d standing\n", st.HoldsStanding)
	fmt.Fprintf(tw, "rooms\t%d known, %d need attention (matrix-hipaa rooms -problems)\n", st.Rooms, st.RoomIssues)
	switch flagged, checked, at, err := pushers.Flagged(ctx, db); {
	case err != nil:
		return err
	case at == 0:
		fmt.Fprintf(tw, "pushers\tnot checked yet\n")
	default:
		fmt.Fprintf(tw, "pushers\t%d users checked %s: %s\n", checked, when(at), pushers.Report(flagged))
	}
	return tw.Flush()
}
