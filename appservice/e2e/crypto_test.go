package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// e2eeUser is a person on an E2EE client: mautrix's crypto (goolm), its own
// device and keys, syncing, decrypting what it receives.
type e2eeUser struct {
	*mautrix.Client
	password string
	mu       sync.Mutex
	messages []*event.Event // decrypted (or plain) m.room.message events received
	cancel   context.CancelFunc
	done     chan struct{}
}

func newE2EEUser(t *testing.T, st *devstack.Stack, localpart string) *e2eeUser {
	t.Helper()
	cli, password := newAccount(t, st, localpart)
	return loginE2EE(t, st, cli, localpart, password)
}

// anotherDevice logs u's account in again: a second session of theirs,
// with its own device keys, not cross-signed.
func (u *e2eeUser) anotherDevice(t *testing.T, st *devstack.Stack) *e2eeUser {
	t.Helper()
	cli, err := mautrix.NewClient(st.HSURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	localpart, _, _ := u.UserID.Parse()
	return loginE2EE(t, st, cli, localpart, u.password)
}

// crossSign sets up u's cross-signing (as Element does when a user first
// secures their account: UIA with the account password) and signs u's
// device with the new self-signing key.
func (u *e2eeUser) crossSign(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	mach := u.Crypto.(*cryptohelper.CryptoHelper).Machine()
	keys, err := mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	localpart, _, _ := u.UserID.Parse()
	err = mach.PublishCrossSigningKeys(ctx, keys, func(ui *mautrix.RespUserInteractive) any {
		return map[string]any{"type": mautrix.AuthTypePassword, "session": ui.Session, "password": u.password,
			"identifier": mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart}}
	})
	if err != nil {
		t.Fatalf("%s: publish cross-signing keys: %v", u.UserID, err)
	}
	mach.CrossSigningKeys = keys
	if err := mach.SignOwnDevice(ctx, mach.OwnIdentity()); err != nil {
		t.Fatalf("%s: sign own device: %v", u.UserID, err)
	}
}

func loginE2EE(t *testing.T, st *devstack.Stack, cli *mautrix.Client, localpart, password string) *e2eeUser {
	t.Helper()
	ctx := context.Background()
	helper, err := cryptohelper.NewCryptoHelper(cli, []byte("test pickle key "+localpart), filepath.Join(t.TempDir(), localpart+"-crypto.db"))
	if err != nil {
		t.Fatal(err)
	}
	helper.LoginAs = &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   password,
	}
	if err := helper.Init(ctx); err != nil {
		t.Fatalf("%s: crypto init: %v", localpart, err)
	}
	cli.Crypto = helper
	u := &e2eeUser{Client: cli, password: password, done: make(chan struct{})}
	cli.Syncer.(*mautrix.DefaultSyncer).OnEventType(event.EventMessage, func(ctx context.Context, evt *event.Event) {
		u.mu.Lock()
		u.messages = append(u.messages, evt)
		u.mu.Unlock()
	})
	// The compliance bot's direct messages are accepted, as a person would.
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	cli.Syncer.(*mautrix.DefaultSyncer).OnEventType(event.StateMember, func(ctx context.Context, evt *event.Event) {
		if evt.Sender == botID && evt.GetStateKey() == string(cli.UserID) && evt.Content.AsMember().Membership == event.MembershipInvite {
			go cli.JoinRoomByID(context.Background(), evt.RoomID)
		}
	})
	syncCtx, cancel := context.WithCancel(ctx)
	u.cancel = cancel
	go func() {
		defer close(u.done)
		cli.SyncWithContext(syncCtx)
	}()
	t.Cleanup(func() {
		u.cancel()
		<-u.done
		helper.Close()
	})
	return u
}

// waitMessage waits for a received message that match accepts.
func (u *e2eeUser) waitMessage(t *testing.T, what string, match func(*event.Event) bool) *event.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		u.mu.Lock()
		for _, e := range u.messages {
			if match(e) {
				u.mu.Unlock()
				return e
			}
		}
		u.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never received %s", u.UserID, what)
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func textOf(e *event.Event) string {
	if c, ok := e.Content.Parsed.(*event.MessageEventContent); ok {
		return c.Body
	}
	return ""
}

// Two people on real E2EE clients in a room created without encryption: the
// service encrypts the room and its bot joins; the two exchange encrypted
// messages that decrypt; a plaintext message is redacted and its sender gets
// a notice, encrypted, that their client decrypts.
// The bot's crypto state lives in the service's database: both kinds are run.
func TestE2EEConversationAndEncryptedNotice(t *testing.T) {
	onEachDatabase(t, testE2EEConversation)
}

func testE2EEConversation(t *testing.T, st *devstack.Stack) {
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)

	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the room to be encrypted in alice's client", func() bool {
		enc, _ := alice.StateStore.IsEncrypted(ctx, room.RoomID)
		return enc
	})
	waitFor(t, "the bot to join the room it enrolled", func() bool {
		m, err := alice.JoinedMembers(ctx, room.RoomID)
		return err == nil && hasMember(m, botID)
	})
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob's client to know the room is encrypted", func() bool {
		enc, _ := bob.StateStore.IsEncrypted(ctx, room.RoomID)
		return enc && alice.StateStore.IsInRoom(ctx, room.RoomID, bob.UserID)
	})

	// Encrypted conversation, both ways.
	hello, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "hello bob, bed 4 is stable"})
	if err != nil {
		t.Fatal(err)
	}
	got := bob.waitMessage(t, "alice's encrypted message", func(e *event.Event) bool { return e.ID == hello.EventID })
	if !got.Mautrix.WasEncrypted || textOf(got) != "hello bob, bed 4 is stable" {
		t.Fatalf("bob got %q (encrypted %v)", textOf(got), got.Mautrix.WasEncrypted)
	}
	reply, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "thanks alice"})
	if err != nil {
		t.Fatal(err)
	}
	got = alice.waitMessage(t, "bob's encrypted reply", func(e *event.Event) bool { return e.ID == reply.EventID })
	if !got.Mautrix.WasEncrypted || textOf(got) != "thanks alice" {
		t.Fatalf("alice got %q (encrypted %v)", textOf(got), got.Mautrix.WasEncrypted)
	}

	// Plaintext slips in (a client with encryption off): redacted, and bob is told.
	plain, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage,
		&event.MessageEventContent{MsgType: event.MsgText, Body: "plaintext slipped out"}, mautrix.ReqSendEvent{DontEncrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plaintext to be redacted", func() bool {
		ev, err := alice.GetEvent(ctx, room.RoomID, plain.EventID)
		return err == nil && ev.Unsigned.RedactedBecause != nil
	})
	notice := bob.waitMessage(t, "the bot's notice", func(e *event.Event) bool { return e.Sender == botID })
	c := notice.Content.AsMessage()
	if !notice.Mautrix.WasEncrypted {
		t.Fatal("the bot's notice in an encrypted room was not encrypted")
	}
	if c.MsgType != event.MsgNotice || !strings.Contains(c.Body, string(bob.UserID)) || !strings.Contains(c.Body, "end-to-end encryption") {
		t.Fatalf("notice %q (%s) does not tell bob why", c.Body, c.MsgType)
	}
	if c.Mentions == nil || !slices.Contains(c.Mentions.UserIDs, bob.UserID) {
		t.Fatalf("notice does not mention bob: %+v", c.Mentions)
	}
	// alice, also a member, can decrypt it too: it was shared with the room.
	alice.waitMessage(t, "the bot's notice", func(e *event.Event) bool { return e.ID == notice.ID })

	// The rooms listing shows the bot's standing and no problem for this room.
	out, errOut, err := st.Service("rooms")
	if err != nil {
		t.Fatalf("rooms: %v %s", err, errOut)
	}
	t.Logf("matrix-hipaa rooms:\n%s", out)
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, string(room.RoomID)) {
			line = l
		}
	}
	// Encrypted, required by policy, the bot joined (power/needed), and no
	// failed action.
	if f := strings.Fields(line); len(f) < 7 || f[1] != "yes" || f[2] != "required" || !strings.Contains(f[5], "/") || strings.Contains(line, "failed") {
		t.Fatalf("rooms listing line for the room: %q", line)
	}
	verify(t, st)
}

func hasMember(m *mautrix.RespJoinedMembers, u id.UserID) bool {
	_, ok := m.Joined[u]
	return ok
}

// A room whose settings nobody the service can act as may change (here the
// encryption event needs more power than even the creator has) is not
// ignored: the failure is audited, listed by `matrix-hipaa rooms -problems`
// (exit 1) and counted by the hipaa_rooms metric; the bot still joins and
// says what power it would need.
func TestUnfixableRoomIsReported(t *testing.T) {
	st := startStack(t, devstack.Options{JobMaxAttempts: 3})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		PowerLevelOverride: &event.PowerLevelsEventContent{
			Users:  map[id.UserID]int{alice.UserID: 100},
			Events: map[string]int{event.StateEncryption.Type: 101},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the failed enrolment", func(l auditLine) bool {
		return l.Type == "job.failed" && l.Action == "enable_encryption"
	})
	waitAudit(t, st, "the bot's join", func(l auditLine) bool {
		return l.Type == "job.applied" && l.Action == "bot_join"
	})
	out, _, err := st.Service("rooms", "-problems")
	if err == nil {
		t.Fatalf("rooms -problems exited 0 with an unfixable room:\n%s", out)
	}
	t.Logf("matrix-hipaa rooms -problems:\n%s", out)
	if !strings.Contains(string(out), string(room.RoomID)) || !strings.Contains(string(out), "enable_encryption failed") ||
		!strings.Contains(string(out), "M_FORBIDDEN") || !strings.Contains(string(out), "0/101") {
		t.Fatalf("listing does not report the room, the failure and the bot's standing")
	}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)
	waitFor(t, "the problem metric", func() bool {
		m := string(httpGet(t, metricsURL))
		return strings.Contains(m, `hipaa_rooms{standing="problem"} 1`) && strings.Contains(m, `hipaa_rooms{standing="unencrypted_required"} 1`)
	})
	verify(t, st)
}

// sharedEncryptedRoom is a room alice creates encrypted from the start and
// bob joins; it returns once both clients know it is encrypted and alice's
// knows bob is in it.
func sharedEncryptedRoom(t *testing.T, alice, bob *e2eeUser) id.RoomID {
	t.Helper()
	ctx := context.Background()
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
	return room.RoomID
}
