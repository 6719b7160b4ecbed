// Command matrix-hipaa is a Matrix application service that enforces a
// hospital's HIPAA policy on an ordinary homeserver. See README.md.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/admin"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

const usage = `matrix-hipaa: HIPAA policy for a Matrix homeserver

Commands:
  example-config                         print the commented example config
  generate-registration -config FILE     write the homeserver registration
                        [-out FILE]      (fills in tokens on first use)
  run -config FILE                       run the service
  example-policy                         print the commented example policy
  config validate FILE                   check a config and the files it names (policy,
                                         roster, TLS, audit keys) before a restart
  policy validate FILE                   check a policy file (every error as file:line:col)
  policy explain -policy FILE -room ID [-alias A]... [-space ID]... [-claimed-alias A]... [-claimed-space ID]...
                                         which settings apply to a room, and why
  status -config FILE                    what the database says of the service: events,
                                         backlog, jobs, the audit chain and its exporters
  rooms -config FILE [-problems]         rooms the service knows: encryption, policy, the
                                         bot's power, and actions that failed for good
                                         (-problems: only rooms needing attention; exit 1 if any)
  wipe -config FILE -user ID -reason TEXT [-device ID] [-offboard [-deactivate]] [-redact phi|all|none] [-since T]
                                         sign the user out everywhere, redact their messages,
                                         remove them from their rooms (-offboard); the running
                                         service does it, this waits for the outcome
  wipe -config FILE -status N            wait for wipe N and show how it ended
  admin-token -name NAME                 a new admin API token for one person, and the
                                         admin.tokens entry (its hash) to add to the config
  admin-key list -config FILE            administrators' cross-signing master keys the bot
                                         pinned (management-room commands that change
                                         anything run only from devices they cross-signed)
  admin-key unpin -config FILE -user ID  forget a pin after the admin reset cross-signing
  keys rotate -config FILE -key job|pseudonym
                                         replace a key (service stopped); the old one is
                                         kept beside it for the key vault (docs/keys.md)
  devices -config FILE -user ID           the user's sessions: last seen, cross-signed or not
  roster list -config FILE               the verified clinician roster
  roster check FILE                      check a roster file (YAML or CSV; every error as file:line)
  roster verify -config FILE -user ID -npi N -role R [-department D] [-licence-expires DATE]
  roster revoke -config FILE -user ID -reason TEXT
  roster import -config FILE -fhir BUNDLE.json
                                         add FHIR R4 Practitioners (NPI, Matrix ID, qualification)
  hold -config FILE (-room ID | -user ID) -reason TEXT
                                         place a legal hold: their messages do not expire
  hold -config FILE -release N           release hold N (its messages expire as due)
  hold -config FILE -list                the holds standing
  audit verify -config FILE              check the audit chain and its signed checkpoints
        [-public-key K] [-checkpoints F]  (exit 0 intact)
  audit public-key -config FILE          print the checkpoint signing key's public half
  audit export -config FILE -format jsonl|syslog|fhir [-since T] [-until T]
                                         print audit records
  backup -config FILE (-out FILE | -dir DIR [-keep N])
                                         a consistent copy of the SQLite database, taken
                                         while the service runs, its audit chain checked
                                         (-dir: named by the time, the newest N kept)
  restore -config FILE -from COPY        put a backup copy in place (service stopped): the
                                         copy's chain is checked first, the replaced files
                                         are kept, and the restore is the next audit record
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "example-config":
		_, err = stdout.Write(config.Example())
	case "example-policy":
		_, err = stdout.Write(policy.Example())
	case "admin-token":
		err = adminToken(args[1:], stdout, stderr)
	case "policy":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		switch args[1] {
		case "validate":
			return policyValidate(args[2:], stdout, stderr)
		case "explain":
			err = policyExplain(args[2:], stdout, stderr)
		default:
			fmt.Fprintf(stderr, "unknown policy command %q\n\n%s", args[1], usage)
			return 2
		}
	case "config":
		if len(args) != 3 || args[1] != "validate" {
			fmt.Fprint(stderr, "usage: matrix-hipaa config validate FILE\n")
			return 2
		}
		return configValidate(args[2], stdout, stderr)
	case "generate-registration":
		err = generateRegistration(args[1:], stdout, stderr)
	case "run":
		err = runService(args[1:], stderr)
	case "audit":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		switch args[1] {
		case "public-key":
			err = auditPublicKey(args[2:], stdout, stderr)
		case "verify":
			return auditVerify(args[2:], stdout, stderr)
		case "export":
			err = auditExport(args[2:], stdout, stderr)
		default:
			fmt.Fprintf(stderr, "unknown audit command %q\n\n%s", args[1], usage)
			return 2
		}
	case "backup":
		err = backupCommand(args[1:], stdout, stderr)
	case "restore":
		err = restoreCommand(args[1:], stdout, stderr)
	case "status":
		err = statusCommand(args[1:], stdout, stderr)
	case "rooms":
		return listRooms(args[1:], stdout, stderr)
	case "hold":
		err = holdCommand(args[1:], stdout, stderr)
	case "wipe":
		err = wipeCommand(args[1:], stdout, stderr)
	case "devices":
		err = devicesCommand(args[1:], stdout, stderr)
	case "roster":
		err = rosterCommand(args[1:], stdout, stderr)
	case "admin-key":
		err = adminKeyCommand(args[1:], stdout, stderr)
	case "keys":
		err = keysCommand(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		var usageErr errUsage
		if errors.As(err, &usageErr) {
			fmt.Fprintln(stderr, err)
			return 2
		}
		var cfgErrs strictyaml.Errors
		if errors.As(err, &cfgErrs) {
			fmt.Fprintln(stderr, cfgErrs.Error()) // file:line:col: message, one per line
			return 1
		}
		fmt.Fprintln(stderr, "matrix-hipaa:", err)
		return 1
	}
	return 0
}

type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

func flags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, fs.String("config", "config.yaml", "path to config.yaml")
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage{err.Error()}
	}
	if fs.NArg() > 0 {
		return errUsage{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func generateRegistration(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("generate-registration", stderr)
	out := fs.String("out", "", "write the registration here (default: stdout)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if w := cfg.Warnings(); len(w) > 0 {
		// The registration's user namespace is made from the domain.
		return fmt.Errorf("%w\nedit these first: the registration's user namespace is made from them", w)
	}
	if _, err := cfg.EnsureTokens(); err != nil {
		return fmt.Errorf("write tokens into %s: %w", *cfgPath, err)
	}
	data, err := yaml.Marshal(cfg.Registration())
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(data)
		return err
	}
	return config.WriteFileAtomic(*out, data, 0o600)
}

func runService(args []string, stderr io.Writer) error {
	fs, cfgPath := flags("run", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	log := appservice.NewLogger(cfg.Logging, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc, err := appservice.New(ctx, cfg, log, time.Now)
	if err != nil {
		return err
	}
	if room := cfg.Admin.Room; room != "" {
		(&admin.Room{DB: svc.DB, Chain: svc.Chain, Bot: svc.Bot, HS: svc.HS, IsAdmin: cfg.Admin.IsAdmin, SingleDevice: svc.WipeCaps.AdminAPI, ManagementRoom: room,
			Guard: appservice.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin}}).Register(svc.Runner)
		go func() {
			// A seat in the management room, invited by an admin if need be.
			select {
			case <-svc.Bot.Ready():
			case <-ctx.Done():
				return
			}
			if _, err := svc.Bot.EnsureJoined(ctx, room, cfg.Admin.Users[0]); err != nil && ctx.Err() == nil {
				log.Warn().Str("error", appservice.SafeError(err)).Msg("the bot could not join the management room (admin.room); invite it there")
			}
		}()
	}
	if addr := cfg.Admin.Listen; addr != "" {
		ln, err := appservice.Listen(addr, cfg.Admin.TLSCertFile, cfg.Admin.TLSKeyFile, log.With().Str("component", "admin-api").Logger())
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		// Timeouts: a slow or stalled client cannot hold connections open.
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
			Handler: &admin.Server{DB: svc.DB, Chain: svc.Chain, Policy: svc.Policy.Current, Token: cfg.Admin.Token.Reveal(), People: adminPeople(cfg),
				Guard: appservice.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin},
				Refused: func(reason string) {
					svc.Metrics.AuthFailures.WithLabelValues(reason).Inc()
					log.Warn().Str("reason", reason).Msg("admin API request refused for its credentials")
				}}}
		go srv.Serve(ln)
		// Stopped when asked to stop, before the service closes its database.
		go func() {
			<-ctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(shut)
		}()
	}
	return svc.Run(ctx)
}

// operator names who ran a CLI command, for the audit record of a read.
func operator() string {
	if u, err := user.Current(); err == nil {
		return "os:" + u.Username
	}
	return fmt.Sprintf("os:uid-%d", os.Getuid())
}

func auditVerify(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := flags("audit verify", stderr)
	pubFlag := fs.String("public-key", "", "checkpoint public key (ed25519:<base64>); default: the service's signing key")
	cpFlag := fs.String("checkpoints", "", "checkpoint file; default: audit.checkpoint_file")
	if err := parse(fs, args); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	ctx := context.Background()
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	pub, err := checkpointKey(cfg, *pubFlag)
	if err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa:", err)
		return 1
	}
	cpFile := *cpFlag
	if cpFile == "" {
		cpFile = cfg.Audit.CheckpointFile
	}
	fromFile, err := audit.ReadCheckpointFile(cpFile)
	if err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa:", err)
		return 1
	}
	// Only the chain key: what an auditor is given verifies, and can do
	// nothing else (no pseudonyms reversed, no bot keys opened).
	db, chain, err := appservice.OpenForVerify(ctx, cfg, time.Now)
	if err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa:", err)
		return 1
	}
	defer db.Close()
	start := time.Now()
	res, err := audit.Verify(ctx, db, chain.Keys())
	if err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa: verify:", err)
		return 1
	}
	cps, err := audit.VerifyCheckpoints(ctx, db, pub, fromFile)
	if err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa: verify checkpoints:", err)
		return 1
	}
	bad := res.Bad
	if cps.Bad != nil && (bad == nil || cps.Bad.Seq < bad.Seq) {
		bad = cps.Bad
	}
	outcome := audit.OutcomeSuccess
	if bad != nil {
		outcome = audit.OutcomeFailure
	}
	if err := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAuditRead, Outcome: outcome, Actor: operator(), Action: "verify", Count: res.Records}); err != nil {
		fmt.Fprintln(stderr, "matrix-hipaa: could not record this verification in the audit trail:", err)
		return 1
	}
	if bad != nil {
		fmt.Fprintf(stdout, "BROKEN: %s (%d records intact before it)\n", bad.Error(), min(res.Records, bad.Seq-1))
		return 1
	}
	fmt.Fprintf(stdout, "OK: %d records intact, chain head %d, %d signed checkpoints check out (latest vouches for record %d) (%s)\n",
		res.Records, res.HeadSeq, cps.Checked, cps.Latest, time.Since(start).Round(time.Millisecond))
	return 0
}

// checkpointKey is the public key checkpoints are checked against: the one
// given, else the service's own signing key's (which must exist).
func checkpointKey(cfg *config.Config, given string) (ed25519.PublicKey, error) {
	if given != "" {
		return audit.ParsePublicKey(given)
	}
	path := cfg.Audit.SigningKeyFile
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no signing key at %s: pass -public-key to check checkpoints with an auditor's copy", path)
	}
	k, err := audit.LoadOrCreateSigningKey(path)
	if err != nil {
		return nil, err
	}
	return k.Pub, nil
}

func auditPublicKey(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("audit public-key", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	k, err := audit.LoadOrCreateSigningKey(cfg.Audit.SigningKeyFile)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\t%s\n", audit.FormatPublicKey(k.Pub), k.ID())
	return err
}

func parseTime(s string) (time.Time, error) {
	t, err := admin.ParseTime(s, time.Now())
	if err != nil {
		return t, errUsage{err.Error()}
	}
	return t, nil
}

func auditExport(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("audit export", stderr)
	format := fs.String("format", "jsonl", "jsonl, syslog (RFC 5424, one message per line) or fhir (R4 AuditEvent, NDJSON)")
	since := fs.String("since", "", "only records at or after this time (RFC 3339, date, or duration ago)")
	until := fs.String("until", "", "only records before this time")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *format != "jsonl" && *format != "syslog" && *format != "fhir" {
		return errUsage{fmt.Sprintf("unknown format %q (supported: jsonl, syslog, fhir)", *format)}
	}
	var r audit.Range
	var err error
	if r.Since, err = parseTime(*since); err != nil {
		return err
	}
	if r.Until, err = parseTime(*until); err != nil {
		return err
	}
	ctx := context.Background()
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	db, chain, err := appservice.OpenForVerify(ctx, cfg, time.Now)
	if err != nil {
		return err
	}
	defer db.Close()
	var n int64
	switch *format {
	case "syslog":
		n, err = audit.ExportSyslog(ctx, db, r, stdout, &audit.SyslogFormat{})
	case "fhir":
		host, _ := os.Hostname()
		n, err = audit.Export(ctx, db, r, stdout, func(b []byte, st *audit.Stored) ([]byte, error) {
			return audit.AppendFHIRLine(b, st, audit.FHIRSource{Observer: host})
		})
	default:
		n, err = audit.ExportJSONL(ctx, db, r, stdout)
	}
	outcome := audit.OutcomeSuccess
	if err != nil {
		outcome = audit.OutcomeFailure
	}
	if aerr := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAuditRead, Outcome: outcome, Actor: operator(), Action: "export-" + *format, Count: n}); aerr != nil {
		return fmt.Errorf("could not record this export in the audit trail: %w", aerr)
	}
	return err
}

func policyValidate(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: matrix-hipaa policy validate FILE")
		return 2
	}
	p, err := policy.Load(args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid (version %d, %d room overrides, hash %s)\n", args[0], p.Version, len(p.Rooms), p.Hash)
	for _, w := range p.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", args[0], w)
	}
	return 0
}

type listFlag []string

func (l *listFlag) String() string     { return fmt.Sprint(*l) }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func policyExplain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("policy", "policy.yaml", "policy file")
	room := fs.String("room", "", "room ID")
	var aliases, spaces listFlag
	var claimedAliases, claimedSpaces listFlag
	fs.Var(&aliases, "alias", "an alias of the room, confirmed by the directory (repeatable)")
	fs.Var(&spaces, "space", "the ID of a space that lists the room (repeatable)")
	fs.Var(&claimedAliases, "claimed-alias", "an alias only the room's own state claims (repeatable)")
	fs.Var(&claimedSpaces, "claimed-space", "a parent space only the room's own state claims (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *room == "" {
		return errUsage{"policy explain needs -room"}
	}
	p, err := policy.Load(*file)
	if err != nil {
		return err
	}
	e := p.For(policy.Room{ID: *room, Aliases: claimedAliases, Spaces: claimedSpaces, VerifiedAliases: aliases, VerifiedSpaces: spaces})
	fmt.Fprintf(stdout, "room %s under policy %s (hash %s):\n%s", *room, *file, p.Hash, e.Explain())
	return nil
}

func listRooms(args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := flags("rooms", stderr)
	onlyProblems := fs.Bool("problems", false, "only rooms needing attention; exit 1 if there are any")
	if err := parse(fs, args); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	fail := func(err error) int { fmt.Fprintln(stderr, "matrix-hipaa:", err); return 2 }
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	if err != nil {
		return fail(err)
	}
	defer db.Close()
	pol, err := policyForReport(ctx, cfg, db, stdout)
	if err != nil {
		return fail(err)
	}
	rooms, err := appservice.ListRooms(ctx, db, pol)
	if err := recordCommand(ctx, db, chain, "rooms", int64(len(rooms)), err); err != nil {
		return fail(err)
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
		return 1
	}
	return 0
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

func holdCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("hold", stderr)
	room := fs.String("room", "", "room ID to hold")
	user := fs.String("user", "", "user ID whose messages to hold")
	reason := fs.String("reason", "", "why (kept with the hold, not in the audit trail)")
	release := fs.Int64("release", 0, "release the hold with this ID")
	list := fs.Bool("list", false, "list the holds standing")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	switch {
	case *list:
		holds, err := appservice.StandingHolds(ctx, db)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tON\tPLACED\tBY\tREASON")
		for _, h := range holds {
			on := h.Room
			if h.User != "" {
				on = h.User
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", h.ID, on, time.UnixMilli(h.PlacedAt).UTC().Format(time.RFC3339), h.PlacedBy, h.Reason)
		}
		tw.Flush()
		// Listing shows reasons: it is a read of held data, audited.
		return chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeSuccess, Actor: operator(), Action: "hold-list", Count: int64(len(holds))})
	case *release != 0:
		if err := appservice.ReleaseHold(ctx, db, chain, *release, operator()); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "hold %d released; its messages expire as they come due\n", *release)
		return err
	default:
		if (*room == "") == (*user == "") || *reason == "" {
			return errUsage{"usage: matrix-hipaa hold -config F (-room ID | -user ID) -reason TEXT, or -release N, or -list"}
		}
		id, err := appservice.PlaceHold(ctx, db, chain, *room, *user, *reason, operator())
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "hold %d placed\n", id)
		return err
	}
}

// openData loads the config and opens the service's database and audit chain,
// for commands that work on them.
func openData(ctx context.Context, cfgPath string) (*config.Config, *store.DB, *audit.Chain, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, nil, nil, err
	}
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	return cfg, db, chain, err
}

func wipeCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("wipe", stderr)
	user := fs.String("user", "", "user ID to wipe")
	device := fs.String("device", "", "one device only (where the homeserver can)")
	offboard := fs.Bool("offboard", false, "also remove the user from every room (staff departure)")
	deactivate := fs.Bool("deactivate", false, "with -offboard: deactivate the account too (Synapse)")
	scope := fs.String("redact", "phi", "messages to redact: phi (rooms policy requires encrypted), all, or none")
	since := fs.String("since", "", "only messages at or after this time (RFC 3339, date, or duration ago)")
	reason := fs.String("reason", "", "why (kept with the wipe, not in the audit trail)")
	forceReason := fs.String("force-reason", "", "wipe a protected user (the bot, an administrator, another server's user), for this reason")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for the running service to finish")
	status := fs.Int64("status", 0, "instead of a new wipe, wait for wipe N and show its outcome")
	if err := parse(fs, args); err != nil {
		return err
	}
	from, err := parseTime(*since)
	if err != nil {
		return err
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	id := *status
	if id == 0 {
		w := appservice.Wipe{User: *user, Device: *device, Offboard: *offboard, Deactivate: *deactivate, Scope: *scope, Reason: *reason, RequestedBy: operator(),
			Force: *forceReason != "", ForceReason: *forceReason, Guard: appservice.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin}}
		if !from.IsZero() {
			w.Since = from.UnixMilli()
		}
		if id, err = appservice.RequestWipe(ctx, db, chain, w); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wipe %d requested for %s\n", id, *user)
	}
	got, err := appservice.WaitWipe(ctx, db, id, *wait)
	if errors.Is(err, sql.ErrNoRows) {
		return errUsage{fmt.Sprintf("there is no wipe %d", id)}
	}
	if err != nil {
		return err
	}
	switch got.State {
	case "done":
		fmt.Fprintf(stdout, "sessions revoked: %d (no session left, confirmed at %s)\nmessages redacted: %d\nrooms left: %d\n",
			got.Revoked, time.UnixMilli(got.ConfirmedAt).UTC().Format(time.RFC3339), got.Redacted, got.Left)
		return nil
	case "failed":
		return fmt.Errorf("wipe %d failed: %s", id, got.LastError)
	}
	return fmt.Errorf("wipe %d is at step %q after %s; is the service running? It continues in the background", id, got.State, *wait)
}

func devicesCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("devices", stderr)
	user := fs.String("user", "", "user ID")
	if err := parse(fs, args); err != nil {
		return err
	}
	if !strings.HasPrefix(*user, "@") {
		return errUsage{"usage: matrix-hipaa devices -config F -user @name:server"}
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	devs, err := homeserver.New(cfg.Homeserver.Address, cfg.AppService.ASToken.Reveal()).DeviceInventory(ctx, *user)
	outcome := audit.OutcomeSuccess
	if err != nil {
		outcome = audit.OutcomeFailure
	}
	if aerr := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAdminCommand, Outcome: outcome, Actor: operator(), Action: "devices",
		Detail: chain.Keys().User(*user), Count: int64(len(devs))}); aerr != nil {
		return fmt.Errorf("could not record this command in the audit trail: %w", aerr)
	}
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tLAST SEEN\tCROSS-SIGNED\tNAME")
	for _, d := range devs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, d.Seen(), d.Trust(), d.DisplayName)
	}
	return tw.Flush()
}

// backupCommand snapshots the database (appservice.Backup); with -dir it
// names the copy by time and keeps the newest -keep copies there.
func backupCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("backup", stderr)
	out := fs.String("out", "", "file to write the copy to (must not exist yet)")
	dir := fs.String("dir", "", "folder to write a copy named by the time to (matrix-hipaa-YYYYMMDDTHHMMSSZ.db)")
	keep := fs.Int("keep", 0, "with -dir: keep only this many copies there, removing the oldest (0: keep all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*out == "") == (*dir == "") || *keep < 0 || (*keep > 0 && *dir == "") {
		return errUsage{"usage: matrix-hipaa backup -config F (-out FILE | -dir DIR [-keep N])"}
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	path := *out
	if *dir != "" {
		path = filepath.Join(*dir, appservice.BackupName(time.Now()))
	}
	start := time.Now()
	res, err := appservice.Backup(ctx, db, chain, path, operator())
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "backup written to %s: %d events, %d audit records intact (chain head %d), %.1f MiB, in %s\n",
		path, res.Events, res.Records, res.HeadSeq, float64(res.Bytes)/(1<<20), time.Since(start).Round(time.Millisecond)); err != nil {
		return err
	}
	if *keep > 0 {
		removed, err := appservice.PruneBackups(*dir, *keep)
		for _, r := range removed {
			fmt.Fprintf(stdout, "removed the older copy %s\n", r)
		}
		return err
	}
	return nil
}

// recordCommand puts an administrator's read-only command in the audit
// trail, its outcome that of err, and returns err (joined with any failure
// to record: an unrecorded read is not shown).
func recordCommand(ctx context.Context, db *store.DB, chain *audit.Chain, action string, count int64, err error) error {
	rec := &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeSuccess, Actor: operator(), Action: action, Count: count}
	if err != nil {
		rec.Outcome = audit.OutcomeFailure
	}
	if aerr := chain.AppendTx(ctx, db, rec); aerr != nil {
		return errors.Join(err, fmt.Errorf("could not record this command in the audit trail: %w", aerr))
	}
	return err
}

// notRunning refuses while the service answers on its port.
func notRunning(cfg *config.Config) error {
	if c, err := net.DialTimeout("tcp", cfg.AppService.Listen, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("the service is running (it answers on %s): stop it first", cfg.AppService.Listen)
	}
	return nil
}

// restoreCommand puts a backup copy in place of the stopped service's SQLite
// database (appservice.Restore).
func restoreCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("restore", stderr)
	from := fs.String("from", "", "the backup copy to restore")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" {
		return errUsage{"usage: matrix-hipaa restore -config F -from COPY (with the service stopped)"}
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if cfg.Database.Type != "sqlite3" {
		return store.ErrBackupPostgres
	}
	// The running service holds the database open; replacing it underneath
	// would lose whatever it writes next.
	if err := notRunning(cfg); err != nil {
		return err
	}
	keyFile := cfg.Audit.KeyFile
	if _, err := os.Stat(keyFile); err != nil {
		return fmt.Errorf("the audit key %s is needed to check the copy: restore it from the key vault first (%w)", keyFile, err)
	}
	keys, err := audit.LoadChainKey(keyFile)
	if err != nil {
		return err
	}
	suffix := ".replaced-" + appservice.Stamp(time.Now())
	res, err := appservice.Restore(context.Background(), cfg.Database.URI, cfg.Audit.CheckpointFile, *from, keys, operator(), suffix, time.Now)
	if err != nil {
		return err
	}
	replaced := "could not be read"
	switch {
	case res.ReplacedHead > res.Head:
		replaced = fmt.Sprintf("had %d records; records %d to %d are not in the restored chain", res.ReplacedHead, res.Head+1, res.ReplacedHead)
	case res.ReplacedHead >= 0:
		replaced = fmt.Sprintf("had %d records", res.ReplacedHead)
	}
	fmt.Fprintf(stdout, "restored from %s: chain head %d, then this restore recorded as record %d\nthe replaced chain %s\n", *from, res.Head, res.Head+1, replaced)
	for _, k := range res.Kept {
		fmt.Fprintf(stdout, "kept %s\n", k)
	}
	_, err = fmt.Fprintln(stdout, "start the service; keep the replaced files with the incident record (docs/deploy.md)")
	return err
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
	st, err := appservice.ReadStatus(ctx, db, pol, dbFile)
	if err := recordCommand(ctx, db, chain, "status", 0, err); err != nil {
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
	return tw.Flush()
}

// configValidate checks a config and every file it points at, as the service
// would at start, without opening the database: for an admin before a restart.
func configValidate(path string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var problems []error
	pol, err := policy.Load(cfg.Policy)
	problems = append(problems, err)
	clinicians := -1
	if cfg.Roster != "" {
		file := cfg.Roster
		data, err := os.ReadFile(file)
		if err == nil {
			var list []roster.Clinician
			list, err = roster.Parse(file, data)
			clinicians = len(list)
		}
		problems = append(problems, err)
	}
	problems = append(problems, audit.CheckKeyFiles(appservice.KeyFiles(cfg), cfg.Audit.SigningKeyFile))
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid (homeserver %s, %s; database %s; policy %s with %d room overrides, hash %s",
		path, cfg.Homeserver.Domain, cfg.Homeserver.Software, cfg.Database.Type, cfg.Policy, len(pol.Rooms), pol.Hash)
	if clinicians >= 0 {
		fmt.Fprintf(stdout, "; roster of %d clinicians", clinicians)
	}
	fmt.Fprintln(stdout, ")")
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stdout, "WARNING %s\n", w)
	}
	return 0
}

// adminPeople maps each person's admin token hash to their name.
func adminPeople(cfg *config.Config) map[string]string {
	m := make(map[string]string, len(cfg.Admin.Tokens))
	for _, t := range cfg.Admin.Tokens {
		m[t.SHA256] = t.Name
	}
	return m
}

// adminToken makes a new admin API token for one person: the token, to
// give them, and the config entry with its hash. The config never holds
// the token, so a copy of it does not let anyone in.
func adminToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("admin-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "whose token (recorded as admin-api:NAME for every request made with it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *name == "" {
		return errUsage{"admin-token needs -name"}
	}
	tok := config.RandomToken()
	sum := sha256.Sum256([]byte(tok))
	fmt.Fprintf(stdout, "token for %s (give it to them; it is not stored anywhere):\n  %s\n\nadd to config.yaml under admin.tokens, then restart:\n  - name: %q\n    sha256: %s\n",
		*name, tok, *name, hex.EncodeToString(sum[:]))
	return nil
}
