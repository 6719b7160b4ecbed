package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Rooms limited to verified clinicians, on Dendrite: an unverified person
// invited in is removed with the reason (and the inviter told), a verified
// one stays (and is announced with their role), a FHIR Bundle import admits
// a new clinician, and a licence that has expired removes its holder.
func TestVerifiedClinicianRooms(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	server := st.Opts.ServerName
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := st.Service(args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, out, errOut)
		}
		return string(out)
	}
	alice := newE2EEUser(t, st, "alice") // the attending who runs the room
	bob := newUser(t, st, "bob")         // not on the roster
	dave := newUser(t, st, "dave")       // a nurse whose licence will lapse
	carol := newUser(t, st, "carol")     // arrives through the FHIR import
	run("roster", "verify", "-user", string(alice.UserID), "-npi", "1234567893", "-role", "physician", "-department", "ICU")
	run("roster", "verify", "-user", "@dave:"+server, "-npi", "1003000126", "-role", "nurse", "-licence-expires", "2099-12-31")
	setPolicy(t, st, bytes.Replace(policy.Example(), []byte("  dry_run: false\n"), []byte("  dry_run: false\n  members: verified\n  announce_roles: true\n"), 1))

	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	botID := id.UserID("@hipaa:" + server)
	waitFor(t, "the room to be encrypted and the bot in it", func() bool {
		enc, _ := alice.StateStore.IsEncrypted(ctx, room.RoomID)
		return enc && alice.StateStore.IsInRoom(ctx, room.RoomID, botID)
	})
	membership := func(u id.UserID) *event.MemberEventContent {
		var m event.MemberEventContent
		if err := alice.StateEvent(ctx, room.RoomID, event.StateMember, string(u), &m); err != nil {
			return nil
		}
		return &m
	}
	invite := func(u *mautrix.Client) {
		t.Helper()
		if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: u.UserID}); err != nil {
			t.Fatal(err)
		}
	}

	// Bob, unverified: his invite is withdrawn with the reason, and alice is told.
	invite(bob)
	waitFor(t, "bob's invite to be withdrawn", func() bool {
		m := membership(bob.UserID)
		return m != nil && m.Membership == event.MembershipLeave
	})
	if m := membership(bob.UserID); !strings.Contains(m.Reason, "not on the verified clinician roster") {
		t.Fatalf("bob was told %q", m.Reason)
	}
	told := alice.waitMessage(t, "the notice about bob", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), "your invite of "+string(bob.UserID)+" was withdrawn")
	})
	t.Logf("alice was told: %s", textOf(told))
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err == nil {
		t.Fatal("bob could still join after his invite was withdrawn")
	}

	// Dave, a verified nurse: joins and stays, announced with his role.
	invite(dave)
	if _, err := dave.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	alice.waitMessage(t, "dave's announcement", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), string(dave.UserID)+" joined: verified nurse")
	})

	// Carol, unknown to the roster until the FHIR import, is admitted after it.
	// (She is not invited before the import: re-inviting someone ~100 ms after
	// their invite was withdrawn sometimes left Dendrite's room state at the
	// withdrawal although the service received the new invite and her join;
	// see the note on the issue.)
	if m := membership(carol.UserID); m != nil {
		t.Fatalf("carol has a membership before being invited: %+v", m)
	}
	bundle := filepath.Join(t.TempDir(), "practitioners.json")
	if err := os.WriteFile(bundle, []byte(fmt.Sprintf(`{"resourceType": "Bundle", "type": "collection", "entry": [
		{"resource": {"resourceType": "Practitioner", "id": "carol", "identifier": [
			{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1679576722"},
			{"system": "urn:matrix:user-id", "value": "%s"}],
		 "qualification": [{"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0360", "code": "PharmD"}]}, "period": {"end": "2099-01-31"}}]}}]}`,
		carol.UserID)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("import: %s", run("roster", "import", "-fhir", bundle))
	invite(carol)
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	alice.waitMessage(t, "carol's announcement", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), string(carol.UserID)+" joined: verified pharmacist")
	})

	// Dave's licence on record lapses: he is removed and told why.
	run("roster", "verify", "-user", string(dave.UserID), "-npi", "1003000126", "-role", "nurse", "-licence-expires", "2020-01-31")
	start := time.Now()
	waitForLong(t, "dave's removal", 60*time.Second, func() bool {
		m := membership(dave.UserID)
		return m != nil && m.Membership == event.MembershipLeave
	})
	t.Logf("dave removed %s after his licence record lapsed", time.Since(start).Round(time.Second))
	if m := membership(dave.UserID); !strings.Contains(m.Reason, "expired on 2020-01-31") {
		t.Fatalf("dave was told %q", m.Reason)
	}
	// Carol, still verified, stays.
	if m := membership(carol.UserID); m == nil || m.Membership != event.MembershipJoin {
		lines, _ := export(t, st)
		for _, l := range lines {
			if l.Type == "membership" || l.Type == "roster" || (l.Type == "job.applied" && l.Action == "check_member") ||
				(l.Type == "event.received" && l.EventType == "m.room.member") {
				t.Logf("%d %s %s %s %s %s %s", l.Seq, l.Type, l.Action, l.Detail, l.Actor, l.EventID, l.Time)
			}
		}
		t.Fatalf("carol's membership %+v", m)
	}

	lines, raw := export(t, st)
	var got []string
	for _, l := range lines {
		if l.Type == "membership" {
			got = append(got, l.Action+":"+l.Detail)
		}
	}
	// alice's join; bob's invite; dave's invite and join; carol's invite
	// and join after the import; dave's removal.
	want := "admit:,refuse:not_verified,admit:,admit:,admit:,admit:,remove:licence_expired"
	if strings.Join(got, ",") != want {
		t.Fatalf("membership records %v, want %s", got, want)
	}
	for _, s := range []string{"@bob", "@dave", "1003000126"} {
		if bytes.Contains(raw, []byte(s)) {
			t.Fatalf("%q in the audit trail", s)
		}
	}
	verify(t, st)
}

func waitForLong(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A verified clinician's session that they have not cross-signed: under
// unverified_sessions: sign_out they are told in a direct message from the
// bot, and once the grace period has passed the session is signed out
// (on Dendrite, which cannot end one session, all of theirs).
func TestUnverifiedSessionsOfClinicians(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice") // mautrix's crypto, no cross-signing set up
	bob := newE2EEUser(t, st, "bob")     // not a clinician: left alone
	if _, errOut, err := st.Service("roster", "verify", "-user", string(alice.UserID), "-npi", "1234567893", "-role", "physician"); err != nil {
		t.Fatalf("roster verify: %v %s", err, errOut)
	}
	signOutUnverifiedSessions(t, st)
	start := time.Now()
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	warning := alice.waitMessage(t, "the bot's warning", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), "your session "+string(alice.DeviceID)+" is not verified")
	})
	if !warning.Mautrix.WasEncrypted {
		t.Fatal("the warning was not encrypted")
	}
	t.Logf("warned %s after the policy: %s", time.Since(start).Round(time.Second), textOf(warning))
	// The bot's direct message room is under policy like any room
	// (encrypted, no guests): it needs nobody.
	waitFor(t, "the service to have seen the DM room", func() bool {
		out, _, _ := st.Service("rooms")
		return strings.Contains(string(out), string(warning.RoomID))
	})
	if v, listing := attentionViews(t, st); v.rooms != 0 {
		t.Fatalf("the bot's DM room needs attention: %+v\n%s", v, listing)
	}
	waitUnverifiedSignedOut(t, st)
	t.Logf("signed out %s after the policy", time.Since(start).Round(time.Second))
	alice.cancel()
	if _, err := alice.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("alice's next request: %v, want M_UNKNOWN_TOKEN", err)
	}
	if _, err := bob.Whoami(ctx); err != nil {
		t.Fatalf("bob, not a clinician, was affected: %v", err)
	}
	verify(t, st)
}

// signOutUnverifiedSessions puts the example policy in force with
// unverified_sessions: sign_out and a grace of one minute.
func signOutUnverifiedSessions(t *testing.T, st *devstack.Stack) {
	t.Helper()
	setPolicy(t, st, bytes.Replace(policy.Example(), []byte("unverified_sessions: allow\nunverified_session_grace: 24h"),
		[]byte("unverified_sessions: sign_out\nunverified_session_grace: 1m"), 1))
}

// waitUnverifiedSignedOut waits for an unverified session's sign-out to be
// on the record.
func waitUnverifiedSignedOut(t *testing.T, st *devstack.Stack) {
	t.Helper()
	waitForLong(t, "the unverified session to be signed out", 150*time.Second, func() bool {
		lines, _ := export(t, st)
		for _, l := range lines {
			if l.Type == "session" && l.Action == "unverified_signed_out" {
				return true
			}
		}
		time.Sleep(2 * time.Second)
		return false
	})
}
