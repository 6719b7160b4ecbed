package e2e

import (
	"context"
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
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID},
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both clients to see the encrypted room", func() bool {
		a, _ := alice.StateStore.IsEncrypted(ctx, room.RoomID)
		b, _ := bob.StateStore.IsEncrypted(ctx, room.RoomID)
		return a && b && alice.StateStore.IsInRoom(ctx, room.RoomID, bob.UserID)
	})
	redactedAt := func(ev id.EventID) time.Time {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if e, err := bob.GetEvent(ctx, room.RoomID, ev); err == nil && e.Unsigned.RedactedBecause != nil {
				return time.Now()
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s never expired", ev)
		return time.Time{}
	}
	send := func(text string) (id.EventID, time.Time) {
		resp, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID, time.Now()
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
	if e, err := bob.GetEvent(ctx, room.RoomID, second); err != nil || e.Unsigned.RedactedBecause != nil {
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
