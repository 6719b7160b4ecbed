package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// With a 3 s message lifetime, encrypted messages disappear for a real
// client on time, and one sent just before the service was killed goes as
// soon as the service is back after its due time.
func TestMessagesExpireOnTimeAcrossACrash(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  retention: 3s\n"))
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	roomID := sharedEncryptedRoom(t, alice, bob)
	redactedAt := func(ev id.EventID) time.Time {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if e, err := bob.GetEvent(ctx, roomID, ev); err == nil && e.Unsigned.RedactedBecause != nil {
				return time.Now()
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s never expired", ev)
		return time.Time{}
	}
	send := func(text string) (id.EventID, time.Time) {
		resp, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID, time.Now()
	}

	// Members are told the room's lifetime by the bot, encrypted.
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	told := alice.waitMessage(t, "the bot's lifetime notice", func(e *event.Event) bool { return e.Sender == botID })
	if !told.Mautrix.WasEncrypted || !strings.Contains(textOf(told), "deleted 3 seconds after they are sent") {
		t.Fatalf("lifetime notice %q (encrypted %v)", textOf(told), told.Mautrix.WasEncrypted)
	}

	first, sentAt := send("obs at 14:00: stable")
	got := bob.waitMessage(t, "the message", func(e *event.Event) bool { return e.ID == first })
	if !got.Mautrix.WasEncrypted || textOf(got) != "obs at 14:00: stable" {
		t.Fatalf("bob read %q", textOf(got))
	}
	gone := redactedAt(first)
	if life := gone.Sub(sentAt); life < 3*time.Second || life > 4*time.Second {
		t.Fatalf("message lived %s, want 3 s (and under a second late)", life)
	}
	t.Logf("lived %s (lifetime 3 s)", gone.Sub(sentAt).Round(time.Millisecond))

	// Sent, then the service is killed before the message is due, and back after.
	second, sentAt := send("obs at 14:05: call me")
	waitAudited(t, st, []id.EventID{second}, 10*time.Second)
	st.KillService()
	time.Sleep(5 * time.Second)
	if e, err := bob.GetEvent(ctx, roomID, second); err != nil || e.Unsigned.RedactedBecause != nil {
		t.Fatalf("expired while the service was down? %v", err)
	}
	back := time.Now()
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	gone = redactedAt(second)
	t.Logf("after restart: expired %s after the service came back (%s after sending)", gone.Sub(back).Round(time.Millisecond), gone.Sub(sentAt).Round(time.Millisecond))
	if gone.Sub(back) > 3*time.Second {
		t.Fatalf("overdue message took %s after restart", gone.Sub(back))
	}
}

// A legal hold placed with the CLI keeps a room's messages past their
// lifetime; releasing it lets them expire at once.
func TestLegalHoldKeepsMessages(t *testing.T) {
	st := startStack(t, devstack.Options{AdminToken: adminToken})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  retention: 2s\n  plaintext: allow\n  encryption: optional\n"))
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err := st.Service("hold", "-room", string(room.RoomID), "-reason", "litigation 2026-114")
	if err != nil || !strings.Contains(string(out), "hold 1 placed") {
		t.Fatalf("hold: %v %s%s", err, out, errOut)
	}
	sent, err := alice.SendText(ctx, room.RoomID, "kept for counsel")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	if e, err := alice.GetEvent(ctx, room.RoomID, sent.EventID); err != nil || e.Unsigned.RedactedBecause != nil {
		t.Fatalf("a held message expired (%v)", err)
	}
	list, _, err := st.Service("hold", "-list")
	if err != nil || !strings.Contains(string(list), string(room.RoomID)) || !strings.Contains(string(list), "litigation 2026-114") {
		t.Fatalf("hold -list: %v\n%s", err, list)
	}
	// Released through the admin HTTP API, as a records system would.
	released := time.Now()
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/_hipaa/admin/v1/holds/1/release", st.Opts.AdminPort),
		strings.NewReader(`{"by":"counsel@hospital"}`))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("release through the admin API: HTTP %d", resp.StatusCode)
	}
	waitFor(t, "the held message to expire after release", func() bool {
		e, err := alice.GetEvent(ctx, room.RoomID, sent.EventID)
		return err == nil && e.Unsigned.RedactedBecause != nil
	})
	t.Logf("expired %s after the hold was released", time.Since(released).Round(time.Millisecond))
	// The trail has both hold records, without the reason.
	lines, raw := export(t, st)
	holds := 0
	for _, l := range lines {
		if l.Type == "hold" {
			holds++
		}
	}
	if holds != 2 || strings.Contains(string(raw), "litigation") || !strings.Contains(string(raw), `"actor":"admin-api:counsel@hospital"`) {
		t.Fatalf("%d hold records; reason in the trail: %v", holds, strings.Contains(string(raw), "litigation"))
	}
}

// With jobs.expire_as: bot, expired messages are redacted by the bot where it
// has the power to (members see the policy did it), and by their sender
// where it has not.
func TestExpireAsBot(t *testing.T) {
	st := startStack(t, devstack.Options{ExpireAs: "bot"})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  retention: 2s\n  plaintext: allow\n  encryption: optional\n"))
	alice := newUser(t, st, "alice")
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	redactedBy := func(power bool) id.UserID {
		levels := &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice.UserID: 100}}
		if power {
			levels.Users[botID] = 50
		}
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", PowerLevelOverride: levels})
		if err != nil {
			t.Fatal(err)
		}
		// The bot joins to tell members the lifetime.
		waitFor(t, "the bot in the room", func() bool {
			m, err := alice.JoinedMembers(ctx, room.RoomID)
			return err == nil && hasMember(m, botID)
		})
		sent, err := alice.SendText(ctx, room.RoomID, "short-lived")
		if err != nil {
			t.Fatal(err)
		}
		var by id.UserID
		waitFor(t, "the message to expire", func() bool {
			e, err := alice.GetEvent(ctx, room.RoomID, sent.EventID)
			if err != nil || e.Unsigned.RedactedBecause == nil {
				return false
			}
			by = e.Unsigned.RedactedBecause.Sender
			return true
		})
		return by
	}
	if by := redactedBy(true); by != botID {
		t.Fatalf("with power, redacted by %s, want the bot", by)
	}
	if by := redactedBy(false); by != alice.UserID {
		t.Fatalf("without power, redacted by %s, want the sender", by)
	}
}
