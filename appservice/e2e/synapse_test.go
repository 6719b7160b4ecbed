package e2e

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// onSynapse skips a test of what only Synapse's admin API offers; the
// Dendrite run has its own test of what Dendrite does instead (a wipe signs
// out everywhere, offboarding leaves the account for the identity system).
func onSynapse(t *testing.T) {
	t.Helper()
	if homeserver != "synapse" {
		t.Skip("Synapse's admin API only; on Dendrite see TestWipeSignsOutRedactsAndOffboards")
	}
}

// A lost phone is wiped on its own: that session's token is dead, the
// laptop's still works. Then the clinician leaves: offboarding with
// deactivation ends the laptop's session too, and the account's password no
// longer logs in. What the user sees is asserted, not the requests.
func TestSynapseSingleDeviceWipeAndDeactivation(t *testing.T) {
	onSynapse(t)
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	_, password := newAccount(t, st, "carol")
	login := func(device string) *mautrix.Client {
		c, err := mautrix.NewClient(st.HSURL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Login(ctx, &mautrix.ReqLogin{
			Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"},
			Password: password, DeviceID: id.DeviceID(device), StoreCredentials: true,
		}); err != nil {
			t.Fatalf("login on %s: %v", device, err)
		}
		return c
	}
	phone, laptop := login("PHONE"), login("LAPTOP")
	user := string(phone.UserID)
	out, errOut, err := st.Service("wipe", "-user", user, "-device", "PHONE", "-reason", "lost phone, ticket 12")
	if err != nil {
		t.Fatalf("wipe -device: %v\n%s%s", err, out, errOut)
	}
	if _, err := phone.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("the wiped phone's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	if _, err := laptop.Whoami(ctx); err != nil {
		t.Fatalf("the laptop, not wiped, was signed out too: %v", err)
	}
	out, errOut, err = st.Service("wipe", "-user", user, "-offboard", "-deactivate", "-reason", "left the hospital")
	if err != nil {
		t.Fatalf("offboard -deactivate: %v\n%s%s", err, out, errOut)
	}
	if _, err := laptop.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("the laptop after deactivation: %v, want M_UNKNOWN_TOKEN", err)
	}
	again, _ := mautrix.NewClient(st.HSURL, "", "")
	_, err = again.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"}, Password: password,
	})
	// Synapse removes a deactivated account's password, so the same
	// password that logged in the laptop above is now refused.
	if !errors.Is(err, mautrix.MUserDeactivated) && !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("logging in to the deactivated account: %v, want it refused", err)
	}
	verify(t, st)
}
