package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Someone who can write to the service's database queues a redaction of a
// colleague's message, in the service's name, while it runs. The service
// refuses the job (it carries no MAC from the service's key): the message
// stays for everyone, and the refusal is in the audit trail.
func TestRedTeamDatabaseWriterCannotQueueActions(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\n"))
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendText(ctx, room.RoomID, "handover notes")
	if err != nil {
		t.Fatal(err)
	}
	db := serviceDB(t, st, "_busy_timeout=10000")
	payload := fmt.Sprintf(`{"room":%q,"event_id":%q,"act_as":%q,"reason":"x"}`, room.RoomID, msg.EventID, alice.UserID)
	if _, err := db.Exec(`INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at, priority, mac) VALUES ('redact', 'insider', ?, 'pending', 0, 0, 0, 2, ?)`,
		[]byte(payload), "0000000000000000000000000000000000000000000000000000000000000000"); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the refusal", func(l auditLine) bool {
		return l.Type == "job.failed" && l.Outcome == "denied" && l.Detail == "mac-mismatch" && l.Action == "redact"
	})
	if redacted(ctx, alice, room.RoomID, msg.EventID) {
		t.Fatal("the inserted redaction ran")
	}
	verify(t, st)
}

// The bot is a dead end for room keys. Clients share an encrypted room's
// keys with its device; it keeps none of them (only the management room's),
// and forwards none: a second device logged in for the bot with the as_token
// cannot cross-sign itself (the bot's own cross-signing keys are published),
// asks for the conversation's key and gets nothing.
func TestRedTeamSecondBotDeviceGetsNoKeys(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	bob := newE2EEUser(t, st, "bob")
	cfg, err := config.Load(st.ServiceConfig)
	if err != nil {
		t.Fatal(err)
	}
	botID := id.UserID(cfg.BotMXID())
	room := enrolledRoom(t, st, alice, bob.UserID)
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob in alice's view", func() bool { return alice.StateStore.IsInRoom(ctx, room, bob.UserID) })
	sent, err := alice.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "pt in bed 4: K 2.9"})
	if err != nil {
		t.Fatal(err)
	}
	bob.waitMessage(t, "alice's message", func(e *event.Event) bool { return e.ID == sent.EventID })
	raw, err := alice.GetEvent(ctx, room, sent.EventID)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Content.ParseRaw(event.EventEncrypted); err != nil {
		t.Fatal(err)
	}
	enc := raw.Content.AsEncrypted()
	if enc.SessionID == "" {
		t.Fatalf("the message was not encrypted: %+v", raw.Content.Raw)
	}

	// The bot was sent the key (alice shares with every device in the
	// room) and dropped it.
	db := serviceDB(t, st, "mode=ro&_busy_timeout=10000")
	count := func(q string) int {
		var n int
		if err := db.QueryRow(q, string(room), string(enc.SessionID)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "the bot to receive (and drop) the room key", func() bool {
		return count(`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE room_id = ? AND session_id = ?`) > 0
	})
	if n := count(`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE room_id = ? AND session_id = ? AND session IS NOT NULL`); n != 0 {
		t.Fatal("the bot's store keeps the conversation's room key")
	}
	if n := count(`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE room_id = ? AND session IS NOT NULL AND ? <> ''`); n != 0 {
		t.Fatalf("the bot's store keeps %d keys of the room", n)
	}

	// Whoever holds the as_token logs in a second device for the bot and asks
	// its devices for the key.
	cli, err := mautrix.NewClient(st.HSURL, botID, cfg.AppService.ASToken.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	helper, err := cryptohelper.NewCryptoHelper(cli, []byte("attacker pickle key"), filepath.Join(t.TempDir(), "attacker.db"))
	if err != nil {
		t.Fatal(err)
	}
	localpart, _, _ := botID.Parse()
	helper.LoginAs = &mautrix.ReqLogin{Type: mautrix.AuthTypeAppservice, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart}}
	if err := helper.Init(ctx); err != nil {
		t.Fatalf("second bot device: %v", err)
	}
	defer helper.Close()
	cli.Crypto = helper
	syncCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go cli.SyncWithContext(syncCtx)
	// It cannot cross-sign its device on first use: the bot's own keys are
	// published, and replacing them needs the account's password.
	var ours string
	if err := db.QueryRow(`SELECT published_master FROM bot_cross_signing WHERE user_id = ?`, string(botID)).Scan(&ours); err != nil || ours == "" {
		t.Fatalf("the bot has no published cross-signing keys (%v)", err)
	}
	mach := helper.Machine()
	fake, err := mach.GenerateCrossSigningKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := mach.PublishCrossSigningKeys(ctx, fake, func(ui *mautrix.RespUserInteractive) any {
		return map[string]any{"type": mautrix.AuthTypeAppservice, "session": ui.Session}
	}); err == nil {
		t.Fatal("a device logged in with the as_token replaced the bot's cross-signing keys")
	}
	keys, err := cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{botID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	mk, ssk := keys.MasterKeys[botID], keys.SelfSigningKeys[botID]
	if got := mk.FirstKey().String(); got != ours {
		t.Fatalf("the homeserver's master key for the bot is %s, the service's %s", got, ours)
	}
	// The service's own bot device is signed by the bot's self-signing key.
	signed := 0
	for _, dev := range keys.DeviceKeys[botID] {
		if _, ok := dev.Signatures[botID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.FirstKey().String())]; ok {
			signed++
		}
	}
	if signed != 1 {
		t.Fatalf("%d of the bot's devices are cross-signed, want the service's one", signed)
	}
	if err := helper.Machine().SendRoomKeyRequest(ctx, room, enc.SenderKey, enc.SessionID, "attack-1", map[id.UserID][]id.DeviceID{botID: {"*"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if igs, _ := helper.Machine().CryptoStore.GetGroupSession(ctx, room, enc.SessionID); igs != nil {
		t.Fatal("the bot forwarded the conversation's key to a device logged in with the as_token")
	}
}
