package identity

import (
	"context"
	"fmt"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// A refused roster change is in the audit trail with who tried: a verify
// with a bad NPI or a malformed role, a revocation of someone not verified.
// Nothing else changes.
func TestRefusedRosterChangesAreAudited(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			attempts := []struct {
				name string
				err  error
			}{
				{"bad NPI", Verify(ctx, p.DB, p.Chain, roster.Clinician{UserID: "@doc:h", NPI: "1234567890", Role: "physician"}, SourceAdmin, "os:alice")},
				{"a role that is not one", Verify(ctx, p.DB, p.Chain, roster.Clinician{UserID: "@doc:h", NPI: "1234567893", Role: "Chief <b>Wizard</b>"}, SourceAdmin, "os:alice")},
				{"revoke someone not verified", Revoke(ctx, p.DB, p.Chain, "@nobody:h", "left", "os:bob")},
			}
			for _, a := range attempts {
				if !appservice.IsInvalid(a.err) {
					t.Fatalf("%s: %v, want a refusal", a.name, a.err)
				}
			}
			var got []string
			for _, r := range p.Records(t) {
				if r["outcome"] == "denied" {
					got = append(got, fmt.Sprint(r["type"], " ", r["action"], " ", r["actor"]))
				}
			}
			want := []string{"roster verify os:alice", "roster verify os:alice", "roster revoke os:bob"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("refusals audited %q, want %q", got, want)
			}
			if n := p.Count(t, `SELECT COUNT(*) FROM clinician`); n != 0 {
				t.Fatalf("a refused request changed %d rows", n)
			}
		})
	}
}
