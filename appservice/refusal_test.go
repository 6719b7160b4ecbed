package appservice

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// An administrator's refused attempt is in the audit trail with who tried:
// a roster verify with a bad NPI or a malformed role, a revocation of someone
// not verified, a hold or a wipe without a reason. Nothing else changes.
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
				{"wipe without a reason", func() error {
					_, err := RequestWipe(ctx, p.db, p.chain, Wipe{User: "@doc:h", Scope: "phi", RequestedBy: "os:dave"})
					return err
				}()},
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
			want := []string{"roster verify os:alice", "roster verify os:alice", "roster revoke os:bob", "hold place os:carol", "wipe requested os:dave"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("refusals audited %q, want %q", got, want)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM clinician`) + p.count(t, `SELECT COUNT(*) FROM legal_hold`) + p.count(t, `SELECT COUNT(*) FROM wipe`); n != 0 {
				t.Fatalf("a refused request changed %d rows", n)
			}
		})
	}
}

// A wipe of the service's own bot, of an administrator or of another
// server's user is refused unless forced with its own reason (a stolen
// admin credential must not sign the other admins or the bot out); a forced
// one is audited as forced.
func TestHostileWipeOfProtectedUsersNeedsForce(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ctx := context.Background()
	guard := WipeGuard{Bot: "@hipaa:h", Domain: "h", Admin: func(u string) bool { return u == "@ciso:h" }}
	wipe := func(user string, force bool, forceReason string) error {
		_, err := RequestWipe(ctx, p.db, p.chain, Wipe{User: user, Scope: "none", Reason: "ticket 7", RequestedBy: "admin-api:mallory",
			Force: force, ForceReason: forceReason, Guard: guard})
		return err
	}
	for _, user := range []string{"@hipaa:h", "@ciso:h", "@doc:other.example", "@doc:h.evil"} {
		if err := wipe(user, false, ""); !IsInvalid(err) {
			t.Fatalf("wipe of %s: %v, want a refusal", user, err)
		}
		if err := wipe(user, true, "  "); !IsInvalid(err) {
			t.Fatalf("forced wipe of %s without a reason: %v, want a refusal", user, err)
		}
	}
	if err := wipe("@doc:h", false, ""); err != nil {
		t.Fatalf("an ordinary wipe: %v", err)
	}
	if err := wipe("@ciso:h", true, "account compromised, INC-42"); err != nil {
		t.Fatalf("a forced wipe: %v", err)
	}
	var actions []string
	for _, r := range p.exported(t) {
		if r["type"] == "wipe" {
			actions = append(actions, fmt.Sprint(r["action"], "/", r["outcome"]))
		}
	}
	want := "[" + strings.Repeat("requested/denied ", 8) + "requested/success requested/success forced/success]"
	if fmt.Sprint(actions) != want {
		t.Fatalf("wipe records %v, want %s", actions, want)
	}
	if n := p.count(t, `SELECT COUNT(*) FROM wipe`); n != 2 {
		t.Fatalf("%d wipes recorded, want 2", n)
	}
}
