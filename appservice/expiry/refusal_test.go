package expiry

import (
	"context"
	"fmt"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// An administrator's refused attempt is in the audit trail with who tried: a
// hold without a reason (a wipe's is tested in package sessions, a roster
// change's in package identity). Nothing else changes.
func TestRefusedAdminActionsAreAudited(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			attempts := []struct {
				name string
				err  error
			}{
				{"hold without a reason", func() error { _, err := PlaceHold(ctx, p.DB, p.Chain, "!r:h", "", "", "os:carol"); return err }()},
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
			want := []string{"hold place os:carol"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("refusals audited %q, want %q", got, want)
			}
			if n := p.Count(t, `SELECT COUNT(*) FROM legal_hold`); n != 0 {
				t.Fatalf("a refused request changed %d rows", n)
			}
		})
	}
}
