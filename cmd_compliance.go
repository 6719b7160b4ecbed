package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/compliance"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// complianceReport writes the evidence report (docs/compliance.md). It
// needs the chain key alone, like audit verify, so an auditor can run it
// on a copy; running it is recorded in the trail.
func complianceReport(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("compliance report", stderr)
	since := fs.String("since", "720h", "the period's start (RFC 3339, date, or duration ago)")
	format := fs.String("format", "md", "md, json or html")
	out := fs.String("out", "", "write the report to this file (default: standard output)")
	pubFlag := fs.String("public-key", "", "checkpoint public key (ed25519:<base64>); default: the service's signing key")
	noHS := fs.Bool("offline", false, "do not ask the homeserver its version (a copy of the database, say)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if !slices.Contains(compliance.Formats, *format) {
		return errUsage{fmt.Sprintf("unknown format %q (md, json or html)", *format)}
	}
	from, err := parseTime(*since)
	if err != nil {
		return err
	}
	ctx := context.Background()
	v, err := openVerifier(ctx, *cfgPath, *pubFlag, "")
	if err != nil {
		return err
	}
	defer v.db.Close()
	cfg, db, chain := v.cfg, v.db, v.chain
	in := compliance.Input{Config: cfg, DB: db, Keys: chain.Keys(), Public: v.pub, FileCheckpoints: v.checkpoints, Since: from, Until: time.Now()}
	// The policy in force is the one the service adopted; a file that does
	// not load is itself a finding.
	in.Policy, in.PolicySince, err = appservice.PolicyInForce(ctx, db)
	if cfg.Policy != "" {
		p, ferr := policy.Load(cfg.Policy)
		in.PolicyFileRefused = ferr != nil
		if err != nil && ferr == nil {
			in.Policy, err = p, nil
		}
	} else if err != nil {
		in.Policy, err = appservice.BuiltinPolicy(), nil
	}
	if err != nil {
		return fmt.Errorf("no policy to report on (the service has never adopted one and the file does not load): %w", err)
	}
	if !*noHS {
		hs := homeserver.New(cfg.Homeserver.Address, "")
		in.Homeserver = func(ctx context.Context) (homeserver.Software, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return hs.ServerVersion(ctx)
		}
	}
	rep, err := compliance.Gather(ctx, in)
	if err == nil {
		err = write(rep, *format, *out, stdout)
	}
	outcome := audit.OutcomeSuccess
	if err != nil {
		outcome = audit.OutcomeFailure
	}
	var n int64
	if rep != nil {
		n = int64(len(rep.Findings))
	}
	if aerr := chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeAuditRead, Outcome: outcome, Actor: operator(), Action: "compliance-report", Count: n}); aerr != nil {
		return fmt.Errorf("could not record this report in the audit trail: %w", aerr)
	}
	return err
}

// write renders the report to path (whole, or not at all) or stdout.
func write(rep *compliance.Report, format, path string, stdout io.Writer) error {
	var buf bytes.Buffer
	if err := rep.Write(&buf, format); err != nil {
		return err
	}
	if path == "" {
		_, err := stdout.Write(buf.Bytes())
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
