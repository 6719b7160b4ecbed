package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Red-team tests: room members and other servers try to steer the service.
// Each asserts what the people in the room see.

func countAudit(t *testing.T, st *devstack.Stack, match func(auditLine) bool) int {
	t.Helper()
	lines, _ := export(t, st)
	n := 0
	for _, l := range lines {
		if match(l) {
			n++
		}
	}
	return n
}

func redacted(ctx context.Context, cli *mautrix.Client, room id.RoomID, ev id.EventID) bool {
	e, err := cli.GetEvent(ctx, room, ev)
	return err == nil && e.Unsigned.RedactedBecause != nil
}

// decidedBefore waits until the service has decided on marker (its redaction
// decided), then reports whether it decided to redact ev, sent before it:
// the dispatcher decides in order, so this is a certain "no" for ev.
func decidedBefore(t *testing.T, st *devstack.Stack, ev, marker id.EventID) bool {
	t.Helper()
	waitAudit(t, st, "the marker's redaction", func(l auditLine) bool {
		return l.Type == "policy.decision" && l.Action == "redact" && l.EventID == string(marker)
	})
	lines, _ := export(t, st)
	for _, l := range lines {
		if l.Type == "policy.decision" && l.Action == "redact" && l.EventID == string(ev) {
			return true
		}
	}
	return false
}

// A room admin cannot reach the looser policy of a space by adding a parent
// link to it, nor of an alias pattern by claiming an alias: plaintext is
// still redacted. Once the space's own admin lists the room (m.space.child),
// the homeserver confirms the link and the space's policy applies.
func TestRedTeamSpaceParentAndAliasClaims(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newUser(t, st, "alice") // admin of the cafeteria space
	bob := newUser(t, st, "bob")     // admin of a ward room, and the attacker
	space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", CreationContent: map[string]any{"type": "m.space"}})
	if err != nil {
		t.Fatal(err)
	}
	setPolicy(t, st, []byte(fmt.Sprintf(`version: 1
rooms:
  - space: %q
    encryption: optional
    plaintext: allow
  - alias: "#lax-*:localhost"
    plaintext: allow
`, space.RoomID)))
	ward, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	strict, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ward to be encrypted", func() bool {
		var enc event.EncryptionEventContent
		return bob.StateEvent(ctx, ward.RoomID, event.StateEncryption, "", &enc) == nil && enc.Algorithm != ""
	})

	// The attack: a parent link to the lax space, and a claimed alias that
	// matches the lax pattern (it resolves to alice's space, not the ward).
	if _, err := bob.SendStateEvent(ctx, ward.RoomID, event.StateSpaceParent, string(space.RoomID), map[string]any{"via": []string{"localhost"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.CreateAlias(ctx, id.RoomAlias("#lax-1:localhost"), space.RoomID); err != nil {
		t.Fatal(err)
	}
	_, aliasErr := bob.SendStateEvent(ctx, ward.RoomID, event.StateCanonicalAlias, "", map[string]any{"alt_aliases": []string{"#lax-1:localhost"}})
	t.Logf("claiming an alias of another room: %v", aliasErr)
	waitAudit(t, st, "the link check", func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "verify_links" })
	leak, err := bob.SendText(ctx, ward.RoomID, "pt in bed 4, claimed to be in the cafeteria space")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "plaintext in the room claiming the lax space to be redacted", func() bool {
		return redacted(ctx, alice, ward.RoomID, leak.EventID) || redacted(ctx, bob, ward.RoomID, leak.EventID)
	})

	// The space's admin lists the room: now the space's policy is the room's.
	checks := countAudit(t, st, func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "verify_links" })
	if _, err := alice.SendStateEvent(ctx, space.RoomID, event.StateSpaceChild, string(ward.RoomID), map[string]any{"via": []string{"localhost"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the check after the space listed the room", func() bool {
		return countAudit(t, st, func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "verify_links" }) > checks
	})
	allowed, err := bob.SendText(ctx, ward.RoomID, "cafeteria menu")
	if err != nil {
		t.Fatal(err)
	}
	marker, err := bob.SendText(ctx, strict.RoomID, "marker in a strict room")
	if err != nil {
		t.Fatal(err)
	}
	if decidedBefore(t, st, allowed.EventID, marker.EventID) {
		t.Fatal("plaintext redacted in a room the space really lists")
	}
	verify(t, st)
}

// A discovered room whose m.room.encryption was sent under another state
// key is not encrypted: the service enrols it. (Before, the odd key counted
// and the room stayed in clear.) And m.room.create's content.creator does
// not choose whom the service acts as.
func TestRedTeamOddStateKeyInDiscoveredRoom(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  encryption: optional\n"))
	mallory := newUser(t, st, "mallory")
	room, err := mallory.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.SendStateEvent(ctx, room.RoomID, event.StateEncryption, "decoy", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}); err != nil {
		t.Fatal(err)
	}
	waitAudited(t, st, []id.EventID{mustCreateEvent(t, mallory, room.RoomID)}, 30*time.Second)

	// A new installation under the strict policy finds the room.
	reinstall(t, st)
	if _, err := mallory.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "m.reaction", Class: event.MessageEventType},
		map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": mustCreateEvent(t, mallory, room.RoomID), "key": "👍"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the room to be really encrypted", func() bool {
		var enc event.EncryptionEventContent
		return mallory.StateEvent(ctx, room.RoomID, event.StateEncryption, "", &enc) == nil && enc.Algorithm != ""
	})
	verify(t, st)
}

// Plaintext is any unencrypted message event: a poll, a reaction with a
// text key, a location and a custom type, sent raw as a client would, are
// redacted in an encrypted room; an emoji reaction is not.
func TestRedTeamPlaintextOfEveryType(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	target, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "org.example.ping", Class: event.MessageEventType}, map[string]any{"x": 1})
	if err != nil {
		t.Fatal(err)
	}
	sends := []struct {
		name, typ string
		content   map[string]any
	}{
		{"poll", "m.poll.start", map[string]any{"m.poll.start": map[string]any{"question": map[string]any{"m.text": "Transfer bed 4?"},
			"answers": []any{map[string]any{"id": "y", "m.text": "yes"}}, "kind": "m.poll.disclosed", "max_selections": 1}, "m.text": "Transfer bed 4?"}},
		{"text reaction", "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target.EventID, "key": "HIV+ confirmed"}}},
		{"location", "m.room.message", map[string]any{"msgtype": "m.location", "body": "Ward 4", "geo_uri": "geo:51.5,-0.1"}},
		{"custom type", "org.example.chart_note", map[string]any{"note": "allergic to penicillin"}},
		{"live location", "m.beacon", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": target.EventID}, "org.matrix.msc3488.location": map[string]any{"uri": "geo:51.5,-0.1"}}},
	}
	var ids []id.EventID
	for _, s := range sends {
		resp, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: s.typ, Class: event.MessageEventType}, s.content)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		ids = append(ids, resp.EventID)
	}
	emoji, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "m.reaction", Class: event.MessageEventType},
		map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target.EventID, "key": "👍🏽"}})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range ids {
		waitFor(t, sends[i].name+" to be redacted", func() bool { return redacted(ctx, alice, room.RoomID, e) })
	}
	marker, err := alice.SendText(ctx, room.RoomID, "marker")
	if err != nil {
		t.Fatal(err)
	}
	if decidedBefore(t, st, emoji.EventID, marker.EventID) {
		t.Fatal("an emoji reaction was redacted")
	}
}

// A room admin sets the room's max_lifetime to 1 ms, and to 2^64-1 (which
// once wrapped to a few microseconds). Under the built-in room_retention
// (ignore) neither changes anything; where the policy honours the room's
// wish, 1 ms is lifted to retention_min (1 hour). A message sent after each
// is still there for the room.
func TestRedTeamMaxLifetime(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	for _, honour := range []bool{false, true} {
		pol := "version: 1\ndefaults:\n  retention: 30d\n  plaintext_allowed_types: [org.example.note]\n"
		if honour {
			pol += "  room_retention: honour\n"
		}
		setPolicy(t, st, []byte(pol))
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range []string{"1", "18446744073709551615", "18446744073710"} {
			// Sent raw: a client's own JSON, numbers as written.
			url := alice.BuildClientURL("v3", "rooms", room.RoomID, "state", "m.room.retention", "")
			if _, err := alice.MakeFullRequest(ctx, mautrix.FullRequest{Method: http.MethodPut, URL: url, RequestBytes: []byte(`{"max_lifetime":` + raw + `}`)}); err != nil {
				// Dendrite's canonical JSON refuses integers past 2^53 from its
				// own clients; a remote server in an old room version can still
				// send one (TestHostileMaxLifetimeStoredClamped covers it).
				t.Logf("max_lifetime %s refused by the homeserver: %v", raw, err)
				continue
			}
			note, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "org.example.note", Class: event.MessageEventType}, map[string]any{"n": raw})
			if err != nil {
				t.Fatal(err)
			}
			waitAudited(t, st, []id.EventID{note.EventID}, 20*time.Second)
			// The expiry pump runs at least once a second: a lifetime of
			// 1 ms or a wrapped one would have removed it by now.
			time.Sleep(3 * time.Second)
			if redacted(ctx, alice, room.RoomID, note.EventID) {
				t.Fatalf("honour=%v, max_lifetime %s: the message was deleted at once", honour, raw)
			}
		}
	}
}

// pushTxn sends a transaction to the service as the homeserver does.
func pushTxn(t *testing.T, st *devstack.Stack, txnID string, body []byte) int {
	t.Helper()
	cfg, err := config.Load(st.ServiceConfig)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPut, cfg.AppService.URL+"/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+cfg.AppService.HSToken.Reveal())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("push %s: %v", txnID, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Another server's users flood a room with back-dated plaintext (pushed as
// the homeserver pushes remote events), and a body nests millions deep: the
// service keeps answering, tells each sender once, queues nothing as a
// remote user, and a wipe behind the full queue of notices still starts at
// once.
func TestRedTeamRemoteFloodAndWipeBehindIt(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	carol := newUser(t, st, "carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	setPolicy(t, st, []byte(fmt.Sprintf("version: 1\nrooms:\n  - room_id: %q\n    plaintext: warn\n", room.RoomID)))

	// A body of 5.6 million '[' once killed the process.
	if code := pushTxn(t, st, "deep", bytes.Repeat([]byte("["), 5_600_000)); code != 400 {
		t.Fatalf("deep body: %d, want 400", code)
	}
	// Notices are bucketed by 10-minute windows of the service's clock
	// (docs/policy.md): a flood straddling a boundary rightly tells a
	// sender twice, so it starts well inside one window.
	if left := 10*time.Minute - time.Duration(time.Now().UnixMilli()%(10*60*1000))*time.Millisecond; left < 90*time.Second {
		t.Logf("waiting %s for the next notice window", left.Round(time.Second))
		time.Sleep(left + time.Second)
	}
	const senders = 300
	var events []map[string]any
	for i := range senders {
		for j := range 3 {
			events = append(events, map[string]any{
				"event_id": fmt.Sprintf("$flood-%d-%d", i, j), "room_id": string(room.RoomID), "type": "m.room.message",
				"sender": fmt.Sprintf("@u%d:evil.example", i), "origin_server_ts": int64(1_000_000 + 3_600_000*j), // back-dated, an hour apart
				"content": map[string]any{"msgtype": "m.text", "body": "plaintext from afar"},
			})
		}
	}
	for start := 0; start < len(events); start += 100 {
		body, _ := json.Marshal(map[string]any{"events": events[start:min(start+100, len(events))]})
		if code := pushTxn(t, st, fmt.Sprintf("flood-%d", start), body); code != 200 {
			t.Fatalf("flood transaction: %d", code)
		}
	}
	waitAudit(t, st, "the flood's last decision", func(l auditLine) bool {
		return l.Type == "policy.decision" && l.EventID == fmt.Sprintf("$flood-%d-2", senders-1)
	})

	// A wipe while hundreds of notices wait.
	t0 := time.Now()
	out, errOut, err := st.Service("wipe", "-user", string(carol.UserID), "-reason", "lost phone, ticket 9")
	if err != nil {
		t.Fatalf("wipe: %v\n%s%s", err, out, errOut)
	}
	took := time.Since(t0)
	sent := countAudit(t, st, func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "notice" })
	t.Logf("wipe done in %s with %d of %d flood notices sent", took.Round(time.Millisecond), sent, senders)
	if sent >= senders {
		t.Fatal("the flood was over before the wipe: the test shows nothing")
	}
	if took > 5*time.Second {
		t.Fatalf("the wipe took %s behind the flood", took)
	}
	if code := pushTxn(t, st, "after", []byte(`{"events":[]}`)); code != 200 {
		t.Fatalf("service stopped answering: %d", code)
	}
	// Each remote sender was told once in the window, though each sent
	// three messages an hour apart by their own server's clock; none was
	// acted as.
	deadline := time.Now().Add(2 * time.Minute)
	for countAudit(t, st, func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "notice" }) < senders {
		if time.Now().After(deadline) {
			t.Fatal("the flood's notices were not all sent")
		}
		time.Sleep(time.Second)
	}
	time.Sleep(2 * time.Second)
	if n := countAudit(t, st, func(l auditLine) bool { return l.Type == "job.applied" && l.Action == "notice" }); n != senders {
		t.Fatalf("%d notices sent to %d senders of 3 back-dated messages each, want one each", n, senders)
	}
	if n := countAudit(t, st, func(l auditLine) bool {
		return (l.Type == "job.applied" || l.Type == "job.failed") && l.Action == "redact"
	}); n != 0 {
		t.Fatalf("%d redactions under plaintext: warn", n)
	}
	verify(t, st)
}

// Another server's user floods the bot with invites over federation: the
// bot joins none of their rooms (the bot would be sent their keys and serve
// their members), while an invite from a user of its own server is taken.
func TestRedTeamRemoteInviteFlood(t *testing.T) {
	st := startStack(t, devstack.Options{Federate: true})
	// Another server, federated over loopback, with no application service.
	remote := startStack(t, devstack.Options{Federate: true, NoAppService: true})
	ctx := context.Background()
	// No enrolment: the bot joins only rooms it is invited to.
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  encryption: optional\n"))
	bot := botOf(t, st)
	mallory := newUser(t, remote, "mallory")
	var theirs []id.RoomID
	for i := range 10 {
		room, err := mallory.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: fmt.Sprintf("flood %d", i), Invite: []id.UserID{bot}})
		if err != nil {
			t.Fatalf("remote room %d (is federation up?): %v", i, err)
		}
		theirs = append(theirs, room.RoomID)
	}
	alice := newUser(t, st, "alice")
	ours, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bot}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bot to take the local invite", func() bool {
		m, err := alice.JoinedMembers(ctx, ours.RoomID)
		return err == nil && hasMember(m, bot)
	})
	// The remote invites were sent first; the bot's sync has seen them.
	for _, r := range theirs {
		var member event.MemberEventContent
		if err := mallory.StateEvent(ctx, r, event.StateMember, string(bot), &member); err != nil {
			t.Fatalf("bot's membership in a remote room: %v", err)
		}
		if member.Membership != event.MembershipInvite {
			t.Fatalf("the bot's membership in a remote user's room is %s, want invite (not joined)", member.Membership)
		}
	}
	logs, _ := os.ReadFile(st.ServiceLog)
	if n := bytes.Count(logs, []byte("ignored an invite from another server")); n < len(theirs) {
		t.Fatalf("the service logged %d ignored invites, want %d", n, len(theirs))
	}
}

// A remote server names its user @x"><img src=x onerror=alert(1)>:evil.example
// and has them post plaintext in an encrypted room (pushed as the homeserver
// pushes remote events). The bot's notice mentions them: in the room
// member's client the formatted body carries the ID as text, escaped, and
// no markup of theirs.
func TestRedTeamHostileUserIDInNotice(t *testing.T) {
	st := startStack(t, devstack.Options{})
	alice := newE2EEUser(t, st, "alice")
	botID := botOf(t, st)
	room := enrolledRoom(t, st, alice)
	evil := `@x"><img src=x onerror=alert(1)>:evil.example`
	body, _ := json.Marshal(map[string]any{"events": []map[string]any{{
		"event_id": "$evil-1", "room_id": string(room), "type": "m.room.message", "sender": evil, "origin_server_ts": 1,
		"content": map[string]any{"msgtype": "m.text", "body": "hi"},
	}}})
	if code := pushTxn(t, st, "evil-1", body); code != 200 {
		t.Fatalf("push: %d", code)
	}
	notice := alice.waitMessage(t, "the bot's notice", func(e *event.Event) bool { return e.Sender == botID })
	c := notice.Content.AsMessage()
	if strings.Contains(c.FormattedBody, "<img") || strings.Contains(c.FormattedBody, `"><`) {
		t.Fatalf("the notice carries the user ID's markup: %q", c.FormattedBody)
	}
	if !strings.Contains(c.FormattedBody, "&lt;img src=x onerror=alert(1)&gt;") || !strings.Contains(c.FormattedBody, "%22%3E%3Cimg") {
		t.Fatalf("the notice does not name the user, escaped: %q", c.FormattedBody)
	}
}
