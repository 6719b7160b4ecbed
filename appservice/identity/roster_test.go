package identity

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// verifyClinicians puts clinicians on the roster, as an admin would.
func verifyClinicians(t testing.TB, p *apptest.Pipeline, cs ...roster.Clinician) {
	t.Helper()
	ctx := context.Background()
	for _, c := range cs {
		if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return VerifyTx(ctx, tx, p.Chain, c, SourceAdmin, "os:admin") }); err != nil {
			t.Fatal(err)
		}
	}
}

const rosterV1 = `clinicians:
  - user_id: "@doc:h"
    npi: "1234567893"
    role: physician
    licence_expires: 2027-06-30
    verified_by: credentialing
  - user_id: "@rn:h"
    npi: "1003000126"
    role: nurse
    verified_by: credentialing
`

// The roster file: loaded, changes applied and audited, people dropped from
// the file revoked, a broken file refused with the last good roster kept,
// and an admin's revocation standing through reloads.
func TestRosterFile(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "roster.yaml")
			write := func(s string, age time.Duration) {
				t.Helper()
				if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
				// A distinct modification time for each version.
				mt := time.Now().Add(-age)
				os.Chtimes(path, mt, mt)
			}
			changed := 0
			f := &RosterFile{Path: path, DB: p.DB, Chain: p.Chain, Log: zerolog.Nop(), Changed: func() { changed++ }}
			status := func() string {
				t.Helper()
				list, err := ListRoster(ctx, p.DB)
				if err != nil {
					t.Fatal(err)
				}
				var out []string
				for _, e := range list {
					s := e.UserID + "=" + e.Role
					if e.Revoked() {
						s += "(revoked by " + e.RevokedBy + ")"
					}
					out = append(out, s)
				}
				return strings.Join(out, ",")
			}
			write(rosterV1, 3*time.Hour)
			if err := f.Load(ctx); err != nil || status() != "@doc:h=physician,@rn:h=nurse" || changed != 1 {
				t.Fatalf("first load: %v %s %d", err, status(), changed)
			}
			// Unchanged file: nothing happens.
			if err := f.Load(ctx); err != nil || changed != 1 {
				t.Fatalf("reload of the same file: %v %d", err, changed)
			}
			// A broken file: refused, the roster stays.
			write(rosterV1+"  - user_id: \"@x:h\"\n    npi: \"1234567890\"\n    role: nurse\n    verified_by: y\n", 2*time.Hour)
			err := f.Load(ctx)
			if !errors.As(err, new(RosterRefused)) || !strings.Contains(err.Error(), "roster.yaml:12:10: clinicians[2].npi") {
				t.Fatalf("broken file: %v", err)
			}
			if status() != "@doc:h=physician,@rn:h=nurse" {
				t.Fatalf("after a broken file: %s", status())
			}
			// An admin revokes the doctor; the nurse leaves the file; the doctor's revocation stands.
			if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return RevokeTx(ctx, tx, p.Chain, "@doc:h", "suspended", "os:admin") }); err != nil {
				t.Fatal(err)
			}
			write(rosterV1[:strings.Index(rosterV1, "  - user_id: \"@rn:h\"")], time.Hour)
			if err := f.Load(ctx); err != nil {
				t.Fatal(err)
			}
			if s := status(); s != "@doc:h=physician(revoked by os:admin),@rn:h=nurse(revoked by roster-file)" {
				t.Fatalf("after the nurse left the file: %s", s)
			}
			// An admin's verify lifts a revocation.
			e, _ := LookupClinician(ctx, p.DB, "@doc:h")
			if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return VerifyTx(ctx, tx, p.Chain, e.Clinician, SourceAdmin, "os:admin") }); err != nil {
				t.Fatal(err)
			}
			if s := status(); !strings.HasPrefix(s, "@doc:h=physician,") {
				t.Fatalf("after re-verifying: %s", s)
			}
			// Mistakes are refused as such.
			err = p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return RevokeTx(ctx, tx, p.Chain, "@nobody:h", "x", "os:admin") })
			if !appservice.IsInvalid(err) {
				t.Fatalf("revoking someone not on the roster: %v", err)
			}
			var actions []string
			for _, r := range p.Records(t) {
				if r["type"] == "roster" {
					actions = append(actions, r["action"].(string))
				}
			}
			if got := strings.Join(actions, ","); got != "verify,verify,load,load-failed,revoke,revoke,load,verify" {
				t.Fatalf("roster records %s", got)
			}
		})
	}
}
