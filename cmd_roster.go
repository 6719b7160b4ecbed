package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/identity"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// rosterCommand is `matrix-hipaa roster list|verify|revoke|import|check`.
func rosterCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage{"usage: matrix-hipaa roster list|verify|revoke|import|check …"}
	}
	sub, args := args[0], args[1:]
	if sub == "check" {
		// Validate a roster file without touching anything: every problem as file:line.
		if len(args) != 1 {
			return errUsage{"usage: matrix-hipaa roster check FILE"}
		}
		data, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		list, err := roster.Parse(args[0], data)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d clinicians, no problems\n", args[0], len(list))
		return nil
	}
	fs, cfgPath := flags("roster "+sub, stderr)
	var run func(ctx context.Context, db *store.DB, chain *audit.Chain) error
	switch sub {
	case "list":
		run = func(ctx context.Context, db *store.DB, chain *audit.Chain) error {
			list, err := identity.ListRoster(ctx, db)
			if err != nil {
				return err
			}
			if err := recordCommand(ctx, db, chain, "roster-list", "", int64(len(list)), nil); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "USER\tNPI\tROLE\tDEPARTMENT\tLICENCE UNTIL\tSTATUS\tSOURCE\tVERIFIED BY")
			now := time.Now()
			for _, e := range list {
				until, status := "-", "verified"
				if !e.LicenceExpires.IsZero() {
					until = e.LicenceExpires.Format("2006-01-02")
				}
				switch {
				case e.Revoked():
					status = "revoked " + time.UnixMilli(e.RevokedAt).UTC().Format("2006-01-02") + " by " + e.RevokedBy
				case !e.Valid(now):
					status = "licence expired"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.UserID, e.NPI, e.Role, e.Department, until, status, e.Source, e.VerifiedBy)
			}
			return tw.Flush()
		}
	case "verify":
		var c roster.Clinician
		fs.StringVar(&c.UserID, "user", "", "Matrix user ID")
		fs.StringVar(&c.NPI, "npi", "", "10-digit NPI")
		fs.StringVar(&c.Role, "role", "", "physician, nurse, pharmacist, …")
		fs.StringVar(&c.Department, "department", "", "department")
		expires := fs.String("licence-expires", "", "last day the licence is valid (YYYY-MM-DD)")
		run = func(ctx context.Context, db *store.DB, chain *audit.Chain) error {
			if *expires != "" {
				t, err := roster.ParseDate(*expires)
				if err != nil {
					return errUsage{err.Error()}
				}
				c.LicenceExpires = t
			}
			c.VerifiedBy = operator()
			if err := identity.Verify(ctx, db, chain, c, identity.SourceAdmin, operator()); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s verified as %s\n", c.UserID, c.Role)
			return nil
		}
	case "revoke":
		user := fs.String("user", "", "Matrix user ID")
		reason := fs.String("reason", "", "why (kept with the roster, not in the audit trail)")
		run = func(ctx context.Context, db *store.DB, chain *audit.Chain) error {
			if err := identity.Revoke(ctx, db, chain, *user, *reason, operator()); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s is no longer verified; the service removes them from rooms limited to verified clinicians\n", *user)
			return nil
		}
	case "import":
		file := fs.String("fhir", "", "a FHIR R4 Bundle of Practitioner resources (JSON)")
		run = func(ctx context.Context, db *store.DB, chain *audit.Chain) error {
			data, err := os.ReadFile(*file)
			if err != nil {
				return err
			}
			by := "fhir-import:" + filepath.Base(*file)
			got, err := roster.ParseFHIRBundle(*file, data, by, time.Now())
			if err != nil {
				return err
			}
			n, err := identity.ApplyRoster(ctx, db, chain, got.Clinicians, identity.SourceFHIR, by, false)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%d practitioners read (%d inactive left out), %d roster entries added or changed\n", len(got.Clinicians), got.Inactive, n)
			return nil
		}
	default:
		return errUsage{fmt.Sprintf("unknown roster command %q (list, verify, revoke, import, check)", sub)}
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	return run(ctx, db, chain)
}
