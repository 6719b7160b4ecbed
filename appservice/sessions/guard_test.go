package sessions

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// A wipe of the service's own bot, of an administrator or of another
// server's user is refused unless forced with its own reason (a stolen
// admin credential must not sign the other admins or the bot out); a forced
// one is audited as forced.
func TestHostileWipeOfProtectedUsersNeedsForce(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	ctx := context.Background()
	guard := WipeGuard{Bot: "@hipaa:h", Domain: "h", Admin: func(u string) bool { return u == "@ciso:h" }}
	wipe := func(user string, force bool, forceReason string) error {
		_, err := RequestWipe(ctx, p.DB, p.Chain, Wipe{User: user, Scope: "none", Reason: "ticket 7", RequestedBy: "admin-api:mallory",
			Force: force, ForceReason: forceReason, Guard: guard})
		return err
	}
	for _, user := range []string{"@hipaa:h", "@ciso:h", "@doc:other.example", "@doc:h.evil"} {
		if err := wipe(user, false, ""); !appservice.IsInvalid(err) {
			t.Fatalf("wipe of %s: %v, want a refusal", user, err)
		}
		if err := wipe(user, true, "  "); !appservice.IsInvalid(err) {
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
	for _, r := range p.Records(t) {
		if r["type"] == "wipe" {
			actions = append(actions, fmt.Sprint(r["action"], "/", r["outcome"]))
		}
	}
	want := "[" + strings.Repeat("requested/denied ", 8) + "requested/success requested/success forced/success]"
	if fmt.Sprint(actions) != want {
		t.Fatalf("wipe records %v, want %s", actions, want)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM wipe`); n != 2 {
		t.Fatalf("%d wipes recorded, want 2", n)
	}
}

// A wipe without a reason is refused and audited as denied with who tried;
// nothing is stored.
func TestRefusedWipeIsAudited(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			_, err := RequestWipe(ctx, p.DB, p.Chain, Wipe{User: "@doc:h", Scope: "phi", RequestedBy: "os:dave"})
			if !appservice.IsInvalid(err) {
				t.Fatalf("%v, want a refusal", err)
			}
			var got []string
			for _, r := range p.Records(t) {
				if r["outcome"] == "denied" {
					got = append(got, fmt.Sprint(r["type"], " ", r["action"], " ", r["actor"]))
				}
			}
			if fmt.Sprint(got) != "[wipe requested os:dave]" || p.Count(t, `SELECT COUNT(*) FROM wipe`) != 0 {
				t.Fatalf("refusal audited %q", got)
			}
		})
	}
}
