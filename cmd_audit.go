package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/admin"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

func auditVerify(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("audit verify", stderr)
	pubFlag := fs.String("public-key", "", "checkpoint public key (ed25519:<base64>); default: the service's signing key")
	cpFlag := fs.String("checkpoints", "", "checkpoint file; default: audit.checkpoint_file")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	v, err := openVerifier(ctx, *cfgPath, *pubFlag, *cpFlag)
	if err != nil {
		return err
	}
	defer v.db.Close()
	db, chain := v.db, v.chain
	start := time.Now()
	res, err := audit.Verify(ctx, db, chain.Keys())
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	cps, err := audit.VerifyCheckpoints(ctx, db, v.pub, v.checkpoints)
	if err != nil {
		return fmt.Errorf("verify checkpoints: %w", err)
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
		return fmt.Errorf("could not record this verification in the audit trail: %w", err)
	}
	if bad != nil {
		fmt.Fprintf(stdout, "BROKEN: %s (%d records intact before it)\n", bad.Error(), min(res.Records, bad.Seq-1))
		return errFinding
	}
	fmt.Fprintf(stdout, "OK: %d records intact, chain head %d, %d signed checkpoints check out (latest vouches for record %d) (%s)\n",
		res.Records, res.HeadSeq, cps.Checked, cps.Latest, time.Since(start).Round(time.Millisecond))
	return nil
}

// verifier is what checking the trail needs: the config, the checkpoint
// public key, the checkpoint file's checkpoints, and the database with a
// chain that holds only the chain key (what an auditor is given verifies,
// and can do nothing else: no pseudonyms reversed, no bot keys opened).
type verifier struct {
	cfg         *config.Config
	pub         ed25519.PublicKey
	checkpoints []audit.Checkpoint
	db          *store.DB
	chain       *audit.Chain
}

// openVerifier opens what verifying needs; pubFlag and cpFile default to
// the service's signing key and audit.checkpoint_file.
func openVerifier(ctx context.Context, cfgPath, pubFlag, cpFile string) (*verifier, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, err
	}
	v := &verifier{cfg: cfg}
	if v.pub, err = checkpointKey(cfg, pubFlag); err != nil {
		return nil, err
	}
	if cpFile == "" {
		cpFile = cfg.Audit.CheckpointFile
	}
	if v.checkpoints, err = audit.ReadCheckpointFile(cpFile); err != nil {
		return nil, err
	}
	if v.db, v.chain, err = appservice.OpenForVerify(ctx, cfg, time.Now); err != nil {
		return nil, err
	}
	return v, nil
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
	user := fs.String("user", "", "only records about this user: a Matrix ID (needs the pseudonym key) or its pseudonym u_…")
	room := fs.String("room", "", "only records about this room: a room ID (needs the pseudonym key) or its pseudonym r_…")
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
	// A pseudonym given as such needs only the chain key (an auditor's
	// copy); an ID is turned into one with the pseudonym key.
	open := appservice.OpenForVerify
	if (*user != "" && !strings.HasPrefix(*user, "u_")) || (*room != "" && !strings.HasPrefix(*room, "r_")) {
		if err := havePseudonymKey(cfg); err != nil {
			return err
		}
		open = appservice.OpenStore
	}
	db, chain, err := open(ctx, cfg, time.Now)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, a := range []struct{ given, kind string }{{*user, "user"}, {*room, "room"}} {
		if a.given == "" {
			continue
		}
		p, err := pseudonymOf(chain.Keys(), a.kind, a.given)
		if err != nil {
			return err
		}
		r.About = append(r.About, p)
	}
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
	// Whom an investigator searched for is on the record, as the pseudonym.
	about := strings.Join(r.About, " ")
	if aerr := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAuditRead, Outcome: outcome, Actor: operator(), Action: "export-" + *format, Detail: about, Count: n}); aerr != nil {
		return fmt.Errorf("could not record this export in the audit trail: %w", aerr)
	}
	return err
}

// auditPseudonym prints the pseudonym the audit trail knows a user or room
// by, for an investigator to search exports and a SIEM for. Computing one
// tests a guess against the pseudonym key, so each is itself recorded.
func auditPseudonym(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("audit pseudonym", stderr)
	user := fs.String("user", "", "a Matrix user ID (@name:server)")
	room := fs.String("room", "", "a room ID (!id:server)")
	if err := parse(fs, args); err != nil {
		return err
	}
	kind, given := "user", *user
	if *room != "" {
		kind, given = "room", *room
	}
	if (*user == "") == (*room == "") {
		return errUsage{"usage: matrix-hipaa audit pseudonym -config F (-user ID | -room ID)"}
	}
	ctx := context.Background()
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if err := havePseudonymKey(cfg); err != nil {
		return err
	}
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	if err != nil {
		return err
	}
	defer db.Close()
	p, err := pseudonymOf(chain.Keys(), kind, given)
	if err != nil {
		return err
	}
	if err := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAuditRead, Outcome: audit.OutcomeSuccess, Actor: operator(), Action: "pseudonym", Detail: p}); err != nil {
		return fmt.Errorf("could not record this in the audit trail, so it is not shown: %w", err)
	}
	_, err = fmt.Fprintln(stdout, p)
	return err
}

// pseudonymOf is the pseudonym of a user or room given by its Matrix ID,
// or the pseudonym itself where one is given.
func pseudonymOf(keys *audit.Keys, kind, given string) (string, error) {
	prefix, sigil, pseudo := "u_", "@", keys.User
	if kind == "room" {
		prefix, sigil, pseudo = "r_", "!", keys.Room
	}
	switch {
	case strings.HasPrefix(given, prefix) && len(given) == len(prefix)+32:
		return given, nil
	case strings.HasPrefix(given, sigil) && strings.Contains(given, ":"):
		return pseudo(given), nil
	}
	return "", errUsage{fmt.Sprintf("-%s %q: give a %s ID (%sname:server) or its pseudonym (%s…)", kind, given, kind, sigil, prefix)}
}

// havePseudonymKey refuses to turn IDs into pseudonyms where the key is not
// (an auditor's copy holds only the chain key): opening the store would make
// a new key, and with it pseudonyms that match nothing in the trail.
func havePseudonymKey(cfg *config.Config) error {
	if _, err := os.Stat(cfg.Keys.PseudonymFile); err != nil {
		return fmt.Errorf("no pseudonym key at %s (keys.pseudonym_file), so IDs cannot be turned into pseudonyms here: give the pseudonym (u_… or r_…) instead, from `matrix-hipaa audit pseudonym` on the service's host", cfg.Keys.PseudonymFile)
	}
	return nil
}
