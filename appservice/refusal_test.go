package appservice

import (
	"context"
	"fmt"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// An administrator's refused attempt is in the audit trail with who tried:
// a roster verify with a bad NPI or a malformed role, a revocation of someone
// not verified, a hold without a reason (a wipe's: in package sessions).
// Nothing else changes.
func TestRefusedAdminActionsAreAudited(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			attempts := []struct {
				name string
				err  error
			}{
				{"bad NPI", Verify(ctx, p.db, p.chain, roster.Clinician{UserID: "@doc:h", NPI: "1234567890", Role: "physician"}, SourceAdmin, "os:alice")},
				{"a role that is not one", Verify(ctx, p.db, p.chain, roster.Clinician{UserID: "@doc:h", NPI: "1234567893", Role: "Chief <b>Wizard</b>"}, SourceAdmin, "os:alice")},
				{"revoke someone not verified", Revoke(ctx, p.db, p.chain, "@nobody:h", "left", "os:bob")},
				{"hold without a reason", func() error { _, err := PlaceHold(ctx, p.db, p.chain, "!r:h", "", "", "os:carol"); return err }()},
			}
			for _, a := range attempts {
				if !IsInvalid(a.err) {
					t.Fatalf("%s: %v, want a refusal", a.name, a.err)
				}
			}
			var got []string
			for _, r := range p.exported(t) {
				if r["outcome"] == "denied" {
					got = append(got, fmt.Sprint(r["type"], " ", r["action"], " ", r["actor"]))
				}
			}
			want := []string{"roster verify os:alice", "roster verify os:alice", "roster revoke os:bob", "hold place os:carol"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("refusals audited %q, want %q", got, want)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM clinician`) + p.count(t, `SELECT COUNT(*) FROM legal_hold`); n != 0 {
				t.Fatalf("a refused request changed %d rows", n)
			}
		})
	}
}
