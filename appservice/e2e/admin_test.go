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
// Commands that change anything need the admin's cross-signed session: the
// same admin's second, unverified session and a plaintext client (all the
// homeserver or a stolen access token can produce) are refused.
func TestManagementRoomCommands(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	admin := newE2EEUser(t, st, "admin")
	admin.crossSign(t)
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

	// The admin's account, but a session they never verified (a stolen
	// password, a token minted by the homeserver's operator): refused.
	stolen := admin.anotherDevice(t, st)
	// Its first sync stores the room's state an event at a time: until the
	// encryption event is in, the client would send this in plaintext.
	waitFor(t, "the second session to see the encrypted management room", func() bool {
		enc, _ := stolen.StateStore.IsEncrypted(ctx, mgmt)
		return enc && stolen.StateStore.IsInRoom(ctx, mgmt, admin.UserID)
	})
	unverified := say(stolen, "!verify "+string(mallory.UserID)+" 1003000126 physician")
	t.Logf("unverified session: %s", reply(stolen, "the refusal of an unverified session", "not verified (cross-signed)"))
	// The same account without encryption at all: the plaintext is redacted
	// as anywhere under policy, and if the bot reads it first it refuses it;
	// either way no hold is placed.
	plain, err := mautrix.NewClient(st.HSURL, admin.UserID, admin.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := plain.SendMessageEvent(ctx, mgmt, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "!hold " + string(ward) + " plain"})
	if err != nil {
		t.Fatal(err)
	}
	plaintext := resp.EventID

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

	// New cross-signing keys for the admin's account (what the homeserver's
	// operator could do after resetting its password): the session they sign
	// is not trusted until an operator unpins the old key.
	admin.crossSign(t)
	say(admin, "!hold "+string(ward)+" case 9")
	reply(admin, "the refusal after a cross-signing reset", "not the one I pinned")
	if out, errOut, err := st.Service("admin-key", "unpin", "-config", st.ServiceConfig, "-user", string(admin.UserID)); err != nil {
		t.Fatalf("admin-key unpin: %v\n%s%s", err, out, errOut)
	}
	say(admin, "!hold "+string(ward)+" case 10")
	reply(admin, "the hold after the unpin", "hold 1 placed")

	lines, raw := export(t, st)
	var denied, ok, pins []string
	for _, l := range lines {
		if l.Type == "admin.key" {
			pins = append(pins, l.Action+":"+l.Outcome)
		}
		if l.Type != "admin.command" {
			continue
		}
		switch {
		case l.Outcome == "denied" && l.EventID == string(refused):
			denied = append(denied, l.Action)
		case l.Outcome == "denied" && l.EventID == string(unverified):
			denied = append(denied, l.Action+":"+l.Detail)
		case l.Outcome == "denied" && l.EventID == string(plaintext):
			denied = append(denied, l.Action+":"+l.Detail)
		case l.Outcome == "success":
			ok = append(ok, l.Action)
		}
	}
	if d := strings.Join(denied, ","); d != "wipe,verify:device-not-cross-signed" && d != "wipe,verify:device-not-cross-signed,hold:not-encrypted" ||
		strings.Join(ok, ",") != "devices,wipe,hold" {
		t.Fatalf("admin.command records: denied %v, success %v", denied, ok)
	}
	holds := 0
	for _, l := range lines {
		if l.Type == "roster" {
			t.Fatalf("a refused command changed something: %+v", l)
		}
		if l.Type == "hold" {
			holds++
		}
	}
	if holds != 1 {
		t.Fatalf("%d holds placed; only the one after the unpin should be", holds)
	}
	// The bot pinned the admin's master key when it first read their command.
	if strings.Join(pins, ",") != "pin:success,changed:denied,unpin:success,pin:success" {
		t.Fatalf("admin.key records %v", pins)
	}
	if out, _, err := st.Service("admin-key", "list", "-config", st.ServiceConfig); err != nil || !strings.Contains(string(out), string(admin.UserID)) {
		t.Fatalf("admin-key list: %v\n%s", err, out)
	}
	for _, secret := range []string{"ticket 5150", "revenge", "lost phone", "case 9"} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("%q is in the audit trail", secret)
		}
	}
	verify(t, st)
}
