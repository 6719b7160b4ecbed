package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// The management room, encrypted like any other: a member who is not an
// admin asks for a wipe and is refused (and the refusal is audited); the
// admin lists a user's devices, wipes them, and is told the outcome in the
// room. The bot decrypts the commands; the reasons stay out of the trail.
func TestManagementRoomCommands(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	admin := newE2EEUser(t, st, "admin")
	mallory := newE2EEUser(t, st, "mallory")
	bob := newE2EEUser(t, st, "bob")
	mgmt := sharedEncryptedRoom(t, admin, mallory)
	ward := sharedEncryptedRoom(t, admin, bob)
	sent, err := bob.SendMessageEvent(ctx, ward, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "bed 7 stable"})
	if err != nil {
		t.Fatal(err)
	}
	waitAudited(t, st, []id.EventID{sent.EventID}, 20*time.Second)
	bob.cancel()

	if err := st.SetManagementRoom(string(mgmt), string(admin.UserID)); err != nil {
		t.Fatal(err)
	}
	st.StopService()
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bot to take its seat in the management room", func() bool {
		return admin.StateStore.IsInRoom(ctx, mgmt, botID) && mallory.StateStore.IsInRoom(ctx, mgmt, botID)
	})

	say := func(u *e2eeUser, text string) id.EventID {
		t.Helper()
		resp, err := u.SendMessageEvent(ctx, mgmt, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	reply := func(u *e2eeUser, what, contains string) string {
		t.Helper()
		e := u.waitMessage(t, what, func(e *event.Event) bool {
			return e.RoomID == mgmt && e.Sender == botID && strings.Contains(textOf(e), contains)
		})
		if e.Type != event.EventMessage || !e.Mautrix.WasEncrypted {
			t.Fatalf("the bot's reply was not encrypted")
		}
		return textOf(e)
	}

	// Not an admin: refused, told so, nothing happens.
	refused := say(mallory, "!wipe "+string(bob.UserID)+" revenge for the rota")
	t.Logf("refusal: %s", reply(mallory, "the refusal", "refused"))

	// The admin: the device list, then the wipe and its report.
	say(admin, "!devices "+string(bob.UserID))
	devs := reply(admin, "the device list", "session(s)")
	if !strings.Contains(devs, string(bob.DeviceID)) {
		t.Fatalf("device list without bob's device %s: %s", bob.DeviceID, devs)
	}
	say(admin, "!wipe "+string(bob.UserID)+" lost phone, ticket 5150")
	reply(admin, "the wipe's start", "started")
	done := reply(admin, "the wipe's report", "Sessions revoked")
	t.Logf("report: %s", done)
	if !strings.Contains(done, "Sessions revoked: 2") || !strings.Contains(done, "messages redacted: 1") || !strings.Contains(done, "confirmed at") {
		t.Fatalf("wipe report: %s", done)
	}
	if _, err := bob.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("bob's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	ev, err := admin.GetEvent(ctx, ward, sent.EventID)
	if err != nil || ev.Unsigned.RedactedBecause == nil {
		t.Fatalf("bob's message not redacted (%v)", err)
	}
	// A bad command is answered with what is wrong.
	say(admin, "!release 999")
	reply(admin, "the answer to a bad release", "no standing hold 999")

	lines, raw := export(t, st)
	var denied, ok []string
	for _, l := range lines {
		if l.Type != "admin.command" {
			continue
		}
		if l.Outcome == "denied" && l.EventID == string(refused) {
			denied = append(denied, l.Action)
		}
		if l.Outcome == "success" {
			ok = append(ok, l.Action)
		}
	}
	if strings.Join(denied, ",") != "wipe" || strings.Join(ok, ",") != "devices,wipe" {
		t.Fatalf("admin.command records: denied %v, success %v", denied, ok)
	}
	for _, secret := range []string{"ticket 5150", "revenge", "lost phone"} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("%q is in the audit trail", secret)
		}
	}
	verify(t, st)
}
