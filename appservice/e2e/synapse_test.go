package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// onSynapse skips, on the Dendrite pass, a test of what only Synapse
// offers, saying why; deploy/test.sh runs the Synapse pass too.
func onSynapse(t *testing.T, why string) {
	t.Helper()
	if homeserver != "synapse" {
		t.Skip("Synapse only: " + why)
	}
}

// A lost phone is wiped on its own: that session's token is dead, the
// laptop's still works. Then the clinician leaves: offboarding with
// deactivation ends the laptop's session too, and the account's password no
// longer logs in. What the user sees is asserted, not the requests.
func TestSynapseSingleDeviceWipeAndDeactivation(t *testing.T) {
	onSynapse(t, "its admin API ends one device and deactivates accounts; on Dendrite see TestWipeSignsOutRedactsAndOffboards")
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

// Expired messages leave Synapse's database too (homeserver.purge_history):
// after their lifetime the older ones are gone for a member (404 from
// /event), not only redacted. Synapse keeps the newest event before a
// purge's bound, so the newest expired message stays until a later purge
// passes it: redacted, its content already gone. Synapse only: Dendrite has
// no purge API.
func TestSynapsePurgeRemovesExpiredHistory(t *testing.T) {
	onSynapse(t, "Dendrite has no purge API")
	st := startStack(t, devstack.Options{HomeserverConfig: map[string]any{"purge_history": true, "purge_interval": "2s"}})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  retention: 3s\n"))
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	room := sharedEncryptedRoom(t, alice, bob)
	var sent []id.EventID
	for _, text := range []string{"obs 14:00 stable", "obs 14:05 febrile", "obs 14:10 settled"} {
		resp, err := alice.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	gone := func(ev id.EventID) bool {
		_, err := bob.GetEvent(ctx, room, ev)
		return errors.Is(err, mautrix.MNotFound)
	}
	waitForLong(t, "the two older expired messages to be purged", 60*time.Second, func() bool { return gone(sent[0]) && gone(sent[1]) })
	last, err := bob.GetEvent(ctx, room, sent[2])
	if err != nil {
		t.Fatalf("the newest expired message: %v (Synapse keeps the event a purge's bound lands on)", err)
	}
	if last.Unsigned.RedactedBecause == nil || len(last.Content.Raw) != 0 {
		t.Fatalf("the newest expired message is kept but not redacted: %+v", last.Content.Raw)
	}
	// The purges are on the record, as jobs applied.
	db := serviceDB(t, st, "mode=ro")
	var purges int
	waitFor(t, "a purge job to be done", func() bool {
		return db.QueryRow(`SELECT COUNT(*) FROM job WHERE kind = 'purge_history' AND state = 'done'`).Scan(&purges) == nil && purges > 0
	})
	t.Logf("%d purges done; 2 of 3 expired messages gone from the database, the newest kept redacted", purges)
	verify(t, st)
}

// A real client's read receipt reaches the service where the room's reads
// are tracked (read_tracking: on): on Synapse as an ephemeral event pushed
// with the transactions (MSC2409); on Dendrite, which pushes none, through
// the bot's own sync of the room. A receipt in a room without read
// tracking is never stored.
func TestReadReceiptsKeptWhereTracked(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	tracked := enrolledRoom(t, st, alice, bob.UserID)
	quiet := enrolledRoom(t, st, alice, bob.UserID)
	for _, r := range []id.RoomID{tracked, quiet} {
		if _, err := bob.JoinRoomByID(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	setPolicy(t, st, []byte(fmt.Sprintf("version: 1\nrooms:\n  - room_id: %q\n    read_tracking: on\n", tracked)))
	db := serviceDB(t, st, "mode=ro")
	for _, room := range []id.RoomID{quiet, tracked} {
		waitFor(t, "both clients to see the encrypted room", func() bool {
			a, _ := alice.StateStore.IsEncrypted(ctx, room)
			b, _ := bob.StateStore.IsEncrypted(ctx, room)
			return a && b && alice.StateStore.IsInRoom(ctx, room, bob.UserID)
		})
		resp, err := alice.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "please review the chart"})
		if err != nil {
			t.Fatal(err)
		}
		bob.waitMessage(t, "alice's message", func(e *event.Event) bool { return e.ID == resp.EventID })
		if err := bob.SendReceipt(ctx, room, resp.EventID, event.ReceiptTypeRead, nil); err != nil {
			t.Fatal(err)
		}
		if room == tracked {
			var got string
			waitFor(t, "bob's receipt to be stored", func() bool {
				return db.QueryRow(`SELECT event_id FROM read_receipt WHERE room_id = ? AND user_id = ? AND receipt_type = 'm.read'`, string(room), string(bob.UserID)).Scan(&got) == nil &&
					got == string(resp.EventID)
			})
		}
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM read_receipt WHERE room_id = ?`, string(quiet)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d receipts stored in the room without read tracking (%v)", n, err)
	}
	metrics := string(httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)))
	if !strings.Contains(metrics, `hipaa_events_total{class="receipt",delivery="stored"}`) || !strings.Contains(metrics, `hipaa_events_total{class="receipt",delivery="untracked"}`) {
		t.Fatalf("receipts not counted in the metrics as stored and untracked")
	}
}

// Users whose pushers are sent whole events (their lock screen may show
// message text) are found through Synapse's admin API, and reported in
// `status`, the metric and the management room; a pusher that asks for
// event IDs only is not reported. Synapse only: its admin API lists
// pushers.
func TestSynapsePushersWithContentReported(t *testing.T) {
	onSynapse(t, "its admin API lists pushers")
	st := startStack(t, devstack.Options{HomeserverConfig: map[string]any{"pusher_check_interval": "1s"}})
	ctx := context.Background()
	botID := botOf(t, st)
	admin := newE2EEUser(t, st, "admin")
	carol := newE2EEUser(t, st, "carol")
	dave := newE2EEUser(t, st, "dave")
	mgmt := sharedEncryptedRoom(t, admin, carol)
	if err := st.SetManagementRoom(string(mgmt), string(admin.UserID)); err != nil {
		t.Fatal(err)
	}
	st.StopService()
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	setPusher := func(u *e2eeUser, format string) {
		t.Helper()
		data := map[string]any{"url": "https://push.example.org/_matrix/push/v1/notify"}
		if format != "" {
			data["format"] = format
		}
		body := map[string]any{"kind": "http", "app_id": "org.example.hipaa.test", "app_display_name": "Test", "device_display_name": "phone",
			"pushkey": "key-" + string(u.DeviceID), "lang": "en", "data": data}
		if _, err := u.MakeRequest(ctx, http.MethodPost, u.BuildClientURL("v3", "pushers", "set"), body, nil); err != nil {
			t.Fatalf("set pusher: %v", err)
		}
	}
	setPusher(carol, "")
	setPusher(dave, "event_id_only")
	notice := admin.waitMessage(t, "the management room's pusher notice", func(e *event.Event) bool {
		return e.RoomID == mgmt && e.Sender == botID && strings.Contains(textOf(e), "pusher")
	})
	text := textOf(notice)
	if !strings.Contains(text, string(carol.UserID)) || strings.Contains(text, string(dave.UserID)) || !notice.Mautrix.WasEncrypted {
		t.Fatalf("pusher notice (encrypted %v): %s", notice.Mautrix.WasEncrypted, text)
	}
	metrics := string(httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)))
	if !strings.Contains(metrics, "hipaa_users_with_content_pushers 1\n") {
		t.Fatalf("metric: want hipaa_users_with_content_pushers 1")
	}
	out, errOut, err := st.Service("status", "-config", st.ServiceConfig)
	if err != nil {
		t.Fatalf("status: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(string(out), "1 user(s) have a pusher that is sent whole events") || !strings.Contains(string(out), string(carol.UserID)) {
		t.Fatalf("status:\n%s", out)
	}
	// On the record, as a pseudonym: carol only, once.
	lines, raw := export(t, st)
	found := 0
	for _, l := range lines {
		if l.Type == "policy.decision" && l.Detail == "pusher-sends-content" {
			found++
		}
	}
	if found != 1 || strings.Contains(string(raw), string(carol.UserID)) {
		t.Fatalf("%d pusher-sends-content records (want 1), user ID in the trail: %v", found, strings.Contains(string(raw), string(carol.UserID)))
	}
	// And on request, in the management room.
	if _, err := admin.SendMessageEvent(ctx, mgmt, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "!pushers"}); err != nil {
		t.Fatal(err)
	}
	answer := admin.waitMessage(t, "the answer to !pushers", func(e *event.Event) bool {
		return e.RoomID == mgmt && e.Sender == botID && strings.HasPrefix(textOf(e), "1 user(s)")
	})
	if !strings.Contains(textOf(answer), string(carol.UserID)) {
		t.Fatalf("!pushers: %s", textOf(answer))
	}
	t.Logf("notice: %s", text)
}

// A room the service has no record of, and that sends it no event, is
// found in Synapse's admin room list when the service starts and brought
// under policy: here a plaintext room made while policy let it be, whose
// record the service then lost (as if it had been created before the
// service was installed), is encrypted once policy requires it, without
// anyone writing in it. Synapse only: Dendrite has no room list API.
func TestSynapseDiscoversListedRooms(t *testing.T) {
	onSynapse(t, "Dendrite has no room list API")
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\n"))
	alice := newUser(t, st, "alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	db := serviceDB(t, st, "")
	waitFor(t, "the service to know the room", func() bool {
		var n int
		return db.QueryRow(`SELECT COUNT(*) FROM room_state WHERE room_id = ?`, string(room)).Scan(&n) == nil && n == 1
	})
	st.StopService()
	for _, table := range []string{"room_state", "inbox"} {
		if _, err := db.Exec(`DELETE FROM `+table+` WHERE room_id = ?`, string(room)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(st.ServiceConfig), "policy.yaml"), []byte("version: 1\ndefaults:\n  encryption: required\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	waitForLong(t, "the listed room to be encrypted", 60*time.Second, func() bool {
		var enc map[string]any
		return alice.StateEvent(ctx, room, event.StateEncryption, "", &enc) == nil && enc["algorithm"] == "m.megolm.v1.aes-sha2"
	})
	lines, _ := export(t, st)
	listed := false
	for _, l := range lines {
		listed = listed || (l.Type == "policy.decision" && l.Detail == "room-listed")
	}
	if !listed {
		t.Fatal("no room-listed record in the audit trail")
	}
	verify(t, st)
}

// Of a clinician's two sessions, the one they never cross-signed is signed
// out under unverified_sessions: sign_out, alone: that session's token is
// dead, their verified session's still works. Synapse only: Dendrite cannot
// end one session, and TestUnverifiedSessionsOfClinicians shows what it does.
func TestSynapseUnverifiedSessionSignedOutAlone(t *testing.T) {
	onSynapse(t, "Dendrite cannot end one session; see TestUnverifiedSessionsOfClinicians")
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	alice.crossSign(t)
	phone := alice.anotherDevice(t, st) // a second session, not cross-signed
	if _, errOut, err := st.Service("roster", "verify", "-user", string(alice.UserID), "-npi", "1234567893", "-role", "physician"); err != nil {
		t.Fatalf("roster verify: %v %s", err, errOut)
	}
	signOutUnverifiedSessions(t, st)
	waitUnverifiedSignedOut(t, st)
	phone.cancel()
	if _, err := phone.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("the unverified session's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("the cross-signed session was signed out too: %v", err)
	}
	verify(t, st)
}
