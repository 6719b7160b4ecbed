package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// A lost phone: the admin runs `matrix-hipaa wipe -offboard`. The user's
// client is signed out (M_UNKNOWN_TOKEN), their encrypted messages are
// redacted for the other members, they are out of the room, and the
// service's own token still works.
func TestWipeSignsOutRedactsAndOffboards(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	roomID := sharedEncryptedRoom(t, alice, bob)
	var sent []id.EventID
	for _, text := range []string{"pt in bed 4: BP 90/60", "paged cardiology"} {
		resp, err := bob.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	waitAudited(t, st, sent, 20*time.Second)
	bob.cancel() // stop bob's sync loop: the test makes bob's next request itself

	// The inventory before: the session registration opened (no keys) and
	// bob's E2EE client (keys, not cross-signed).
	inv, errOut, err := st.Service("devices", "-user", string(bob.UserID))
	if err != nil {
		t.Fatalf("devices: %v %s", err, errOut)
	}
	t.Logf("devices:\n%s", inv)
	if !strings.Contains(string(inv), string(bob.DeviceID)) || strings.Count(string(inv), "\n") != 3 || !strings.Contains(string(inv), "no keys") {
		t.Fatalf("device inventory:\n%s", inv)
	}

	out, errOut, err := st.Service("wipe", "-user", string(bob.UserID), "-offboard", "-reason", "lost phone, ticket 4411")
	if err != nil {
		t.Fatalf("wipe: %v\n%s%s", err, out, errOut)
	}
	t.Logf("wipe:\n%s", out)
	// Two sessions: the one registration opened, and bob's client.
	if !strings.Contains(string(out), "sessions revoked: 2") || !strings.Contains(string(out), "messages redacted: 2") || !strings.Contains(string(out), "rooms left: 1") {
		t.Fatalf("wipe summary: %s", out)
	}
	// Bob's client is signed out.
	if _, err := bob.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("bob's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	// His messages are gone for alice, and he is out of the room.
	for _, e := range sent {
		ev, err := alice.GetEvent(ctx, roomID, e)
		if err != nil || ev.Unsigned.RedactedBecause == nil {
			t.Fatalf("%s not redacted (%v)", e, err)
		}
	}
	if inv, _, err := st.Service("devices", "-user", string(bob.UserID)); err != nil || strings.Count(string(inv), "\n") != 1 {
		t.Fatalf("devices after the wipe (%v):\n%s", err, inv)
	}
	members, err := alice.JoinedMembers(ctx, roomID)
	if err != nil || hasMember(members, bob.UserID) {
		t.Fatalf("bob still in the room (%v)", err)
	}
	// The service still acts: alice's plaintext is still redacted.
	plain, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "plain"}, mautrix.ReqSendEvent{DontEncrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the service to keep enforcing after the wipe", func() bool {
		ev, err := alice.GetEvent(ctx, roomID, plain.EventID)
		return err == nil && ev.Unsigned.RedactedBecause != nil
	})
	// Every step is on the record; the reason is not.
	lines, raw := export(t, st)
	var steps []string
	for _, l := range lines {
		if l.Type == "wipe" {
			steps = append(steps, l.Action)
		}
	}
	if strings.Join(steps, ",") != "requested,revoked,redacted,offboarded,done" || strings.Contains(string(raw), "ticket 4411") {
		t.Fatalf("audited steps %v (reason in trail: %v)", steps, strings.Contains(string(raw), "ticket 4411"))
	}
}

// The homeserver goes down in the middle of a wipe (after the sessions were
// revoked, while messages are being redacted) and stays down far longer than
// the job's retry budget. The wipe waits for it, then finishes: every
// message redacted, every step on the record once.
func TestWipeResumesAfterHomeserverOutage(t *testing.T) {
	st := startStack(t, devstack.Options{JobMaxAttempts: 3, AdminToken: adminToken})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	roomID := sharedEncryptedRoom(t, alice, bob)
	var sent []id.EventID
	for i := 0; i < 80; i++ {
		resp, err := bob.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fmt.Sprintf("obs %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	waitAudited(t, st, sent, 30*time.Second)
	bob.cancel()

	out, errOut, err := st.Service("wipe", "-user", string(bob.UserID), "-reason", "lost pager", "-wait", "0s")
	if err == nil || !strings.Contains(string(out), "wipe 1 requested") {
		t.Fatalf("wipe request: %v %s %s", err, out, errOut)
	}
	// Down as soon as the sessions are revoked: the redactions are under way.
	var state string
	for deadline := time.Now().Add(30 * time.Second); state != "revoked" && state != "redacted"; {
		if time.Now().After(deadline) {
			t.Fatalf("wipe never reached the redaction step (at %q)", state)
		}
		state = wipeState(t, st, 1)
		time.Sleep(20 * time.Millisecond)
	}
	st.StopDendrite()
	t.Logf("homeserver stopped with the wipe at %q", state)
	time.Sleep(6 * time.Second) // 3 attempts at 100–400 ms would be long spent
	if s := wipeState(t, st, 1); s == "failed" || s == "done" {
		t.Fatalf("wipe %s while the homeserver was down", s)
	}
	if err := st.StartDendrite(ctx); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = st.Service("wipe", "-status", "1", "-wait", "90s")
	if err != nil {
		t.Fatalf("wipe -status: %v %s %s", err, out, errOut)
	}
	t.Logf("after the outage:\n%s", out)
	if !strings.Contains(string(out), "sessions revoked: 2") || !strings.Contains(string(out), "messages redacted: 80") {
		t.Fatalf("wipe summary: %s", out)
	}
	if _, err := bob.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("bob's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	for _, e := range sent {
		ev, err := alice.GetEvent(ctx, roomID, e)
		if err != nil || ev.Unsigned.RedactedBecause == nil {
			t.Fatalf("%s not redacted (%v)", e, err)
		}
	}
	lines, _ := export(t, st)
	var steps []string
	for _, l := range lines {
		if l.Type == "wipe" {
			steps = append(steps, l.Action)
		}
	}
	// A plain wipe leaves no rooms: no "offboarded" step on the record.
	if strings.Join(steps, ",") != "requested,revoked,redacted,done" {
		t.Fatalf("audited steps %v", steps)
	}
	verify(t, st)
}

// wipeState reads a wipe's step through the admin API.
func wipeState(t *testing.T, st *devstack.Stack, id int) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/_hipaa/admin/v1/wipes/%d", st.Opts.AdminPort, id), nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("X-Hipaa-Actor", "e2e")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var w struct {
		State string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		t.Fatal(err)
	}
	return w.State
}

// Idle logoff: with session_idle_timeout 1m, a user whose clients have all
// stopped talking to the homeserver is signed out (audited); one whose
// client keeps syncing is not.
func TestIdleSessionsAreSignedOut(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	sharedEncryptedRoom(t, alice, bob)
	// On Synapse, which can end one session, bob also has a session on his
	// desk computer that has not been used since he logged in: not idle,
	// so it must stay.
	var desk *mautrix.Client
	if homeserver == "synapse" {
		var err error
		if desk, err = st.LoginAs(ctx, "bob", bob.password); err != nil {
			t.Fatal(err)
		}
	}
	bob.cancel() // bob's phone goes quiet; alice's client keeps syncing
	setPolicy(t, st, bytes.Replace(policy.Example(), []byte("session_idle_timeout: 0"), []byte("session_idle_timeout: 1m"), 1))
	start := time.Now()
	// Synapse records activity at most every two minutes, so the service
	// waits that much longer there before a session counts as idle.
	limit := 150 * time.Second
	if homeserver == "synapse" {
		limit += 2 * time.Minute
	}
	// Asking the homeserver as bob would count as activity: watch the
	// audit trail, and ask only once the service says it signed him out.
	var ended []auditLine
	for len(ended) == 0 {
		if time.Since(start) > limit {
			t.Fatalf("bob not signed out %s after going idle", time.Since(start).Round(time.Second))
		}
		time.Sleep(2 * time.Second)
		lines, _ := export(t, st)
		for _, l := range lines {
			if l.Type == "session" {
				ended = append(ended, l)
			}
		}
	}
	if _, err := bob.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("bob's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	t.Logf("bob signed out %s after his client went quiet", time.Since(start).Round(time.Second))
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("alice, active, was signed out too: %v", err)
	}
	// On Synapse the idle device alone is deleted (admin API): bob's other
	// sessions (the desk login, the one his account was registered with)
	// were never used, and a session without a last-seen time is never
	// counted idle. Dendrite can only sign a user out everywhere, which it
	// does once all are idle.
	want := "idle_logoff"
	if homeserver == "synapse" {
		want = "idle_device_logoff"
	}
	if len(ended) != 1 || ended[0].Action != want {
		t.Fatalf("session records %+v, want one %s", ended, want)
	}
	if desk != nil {
		if _, err := desk.Whoami(ctx); err != nil {
			t.Fatalf("bob's desk session, not idle, was signed out too: %v", err)
		}
	}
	verify(t, st)
}

// A legal hold binds a wipe: a wiped user's messages in a held room stay
// for the other members (the record), those in other rooms are redacted,
// and the wipe says how many it left and why.
func TestWipeLeavesHeldMessages(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	held := sharedEncryptedRoom(t, alice, bob)
	other := sharedEncryptedRoom(t, alice, bob)
	send := func(room id.RoomID, text string) id.EventID {
		t.Helper()
		resp, err := bob.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID
	}
	inHeld, inOther := send(held, "incident report, bed 9"), send(other, "handover notes")
	waitAudited(t, st, []id.EventID{inHeld, inOther}, 20*time.Second)
	bob.cancel()
	if out, errOut, err := st.Service("hold", "-room", string(held), "-reason", "litigation 2026-17"); err != nil {
		t.Fatalf("hold: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err := st.Service("wipe", "-user", string(bob.UserID), "-redact", "all", "-reason", "lost phone")
	if err != nil {
		t.Fatalf("wipe: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(string(out), "messages redacted: 1") || !strings.Contains(string(out), "messages left under a legal hold: 1") {
		t.Fatalf("wipe summary: %s", out)
	}
	// What alice sees: the held message as it was, the other redacted.
	ev, err := alice.GetEvent(ctx, held, inHeld)
	if err != nil || ev.Unsigned.RedactedBecause != nil || ev.Type != event.EventEncrypted {
		t.Fatalf("the held message for alice: %+v (%v)", ev, err)
	}
	ev, err = alice.GetEvent(ctx, other, inOther)
	if err != nil || ev.Unsigned.RedactedBecause == nil {
		t.Fatalf("the message outside the hold was not redacted (%v)", err)
	}
	if n := countAudit(t, st, func(l auditLine) bool { return l.Type == "wipe" && l.Action == "held" }); n != 1 {
		t.Fatalf("%d wipe held records, want 1", n)
	}
}
