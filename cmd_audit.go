package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/admin"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
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
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	pub, err := checkpointKey(cfg, *pubFlag)
	if err != nil {
		return err
	}
	cpFile := *cpFlag
	if cpFile == "" {
		cpFile = cfg.Audit.CheckpointFile
	}
	fromFile, err := audit.ReadCheckpointFile(cpFile)
	if err != nil {
		return err
	}
	// Only the chain key: what an auditor is given verifies, and can do
	// nothing else (no pseudonyms reversed, no bot keys opened).
	db, chain, err := appservice.OpenForVerify(ctx, cfg, time.Now)
	if err != nil {
		return err
	}
	defer db.Close()
	start := time.Now()
	res, err := audit.Verify(ctx, db, chain.Keys())
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	cps, err := audit.VerifyCheckpoints(ctx, db, pub, fromFile)
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
