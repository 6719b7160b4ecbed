// Package bot is the service's own Matrix user as an end-to-end encryption
// capable member. It logs in as one device of the appservice bot, keeps its
// Olm/Megolm state in the service's database (mautrix crypto, pure-Go goolm
// backend, pickled under a key derived from the service's master key),
// follows its rooms through its own /sync, joins the rooms it enrols and sends
// notices, encrypted wherever the room is.
//
// The bot does not decrypt what people write: its sync filter leaves message
// and ciphertext events out, and no decryption handler is registered. The one
// exception is the management room, where ReadMessage fetches and decrypts
// one administrator's command at a time.
package bot

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/crypto/sql_store_upgrade"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// ErrNotReady is returned while the bot has not logged in yet (the
// homeserver may still be starting); jobs that need it retry.
var ErrNotReady = errors.New("the E2EE bot is not logged in yet")

// DeviceName is the bot's device display name, as people see it in their
// clients' member device lists.
const DeviceName = "matrix-hipaa compliance bot"

// Inviter invites the bot into a room acting as a member who may (the
// appservice can act as any user in its namespace).
type Inviter interface {
	Invite(ctx context.Context, actAs, room, invitee string) error
}

// Options configure a Bot.
type Options struct {
	Homeserver string
	UserID     string
	ASToken    string
	DB         *store.DB
	URI        string // the database URI (PostgreSQL: for the side pool)
	PickleKey  []byte
	Inviter    Inviter
	// Admin reports whether a user is one of the service's administrators,
	// whose invites the bot accepts wherever they are from (nil: none).
	Admin func(user string) bool
	// ReadRoom is the one room whose messages the bot reads (admin.room);
	// the room keys clients share with it for every other room are dropped
	// as they arrive.
	ReadRoom string
	// Password is the bot account's password, for homeservers that ask for
	// it before they take the bot's cross-signing keys (Dendrite 0.13);
	// empty: the keys are kept but not published.
	Password string
	Log      zerolog.Logger
	// Receipts, when set, is given the read receipts of the bot's rooms
	// from its own sync (m.receipt only: no typing, no presence), for
	// homeservers that push no ephemeral events to the application
	// service (Dendrite).
	Receipts func(ctx context.Context, rs []ReadReceipt)
}

// ReadReceipt is one receipt the bot's sync brought: who read a room up
// to which event, and when.
type ReadReceipt struct {
	Room, User, EventID, Type, Thread string
	TS                                int64
}

// Bot is the E2EE bot. Its methods are safe for concurrent use.
type Bot struct {
	opts Options
	log  zerolog.Logger

	// reads, when set, names more rooms whose keys the bot keeps (the
	// archived ones): see AddReads.
	reads atomic.Pointer[func(ctx context.Context, room string) bool]

	mu     sync.RWMutex
	cli    *mautrix.Client
	helper *cryptohelper.CryptoHelper
	ident  Identity
	ready  chan struct{}
}

// identity is where the bot's cross-signing stands.
func (b *Bot) identity() Identity {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.ident
}

// New returns a bot that does nothing until Run logs it in.
func New(o Options) *Bot {
	return &Bot{opts: o, log: o.Log.With().Str("component", "bot").Logger(), ready: make(chan struct{})}
}

// AddReads names more rooms besides the management room whose messages the
// bot must read (the archive's, people's direct messages with it), so
// their room keys are kept: a room is kept if any function added says so.
// Call it before Run: keys of other rooms are dropped as they arrive, and
// at start.
func (b *Bot) AddReads(f func(ctx context.Context, room string) bool) {
	all := f
	if old := b.reads.Load(); old != nil {
		prev := *old
		all = func(ctx context.Context, room string) bool { return prev(ctx, room) || f(ctx, room) }
	}
	b.reads.Store(&all)
}

// keeps reports whether the bot keeps the room keys of room.
func (b *Bot) keeps(ctx context.Context, room id.RoomID) bool {
	if room == "" {
		return false
	}
	if string(room) == b.opts.ReadRoom {
		return true
	}
	if f := b.reads.Load(); f != nil {
		return (*f)(ctx, string(room))
	}
	return false
}

// Ready is closed once the bot is logged in with its crypto loaded.
func (b *Bot) Ready() <-chan struct{} { return b.ready }

// Run logs in (retrying with backoff while the homeserver is unreachable),
// then syncs until ctx ends.
func (b *Bot) Run(ctx context.Context) {
	delay := time.Second
	for {
		err := b.start(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		b.log.Warn().Err(err).Dur("retry_in", delay).Msg("E2EE bot could not start; notices wait until it can")
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Minute)
	}
	close(b.ready)
	b.log.Info().Str("device_id", string(b.cli.DeviceID)).Msg("E2EE bot logged in")
	defer b.close()
	for ctx.Err() == nil {
		if err := b.cli.SyncWithContext(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn().Err(err).Msg("bot sync stopped; restarting")
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}
}

func (b *Bot) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.helper != nil {
		b.helper.Close()
	}
}

func (b *Bot) start(ctx context.Context) error {
	raw, dialect, err := b.opts.DB.OpenSide(b.opts.URI)
	if err != nil {
		return err
	}
	if err := ownVersionTables(ctx, raw, dialect); err != nil {
		raw.Close()
		return fmt.Errorf("bot crypto: %w", err)
	}
	db, err := dbutil.NewWithDB(raw, dialect)
	if err != nil {
		raw.Close()
		return err
	}
	db.Log = dbutil.ZeroLogger(b.log.With().Str("db_section", "bot").Logger())
	cli, err := mautrix.NewClient(b.opts.Homeserver, id.UserID(b.opts.UserID), b.opts.ASToken)
	if err != nil {
		db.Close()
		return err
	}
	cli.Log = b.log
	cli.Syncer = newSyncer(cli, b.log, b.opts.Receipts != nil)
	helper, err := cryptohelper.NewCryptoHelper(cli, b.opts.PickleKey, db)
	if err != nil {
		db.Close()
		return err
	}
	localpart, _, _ := id.UserID(b.opts.UserID).Parse()
	// The bot is a user of the service's namespace, not its registration's
	// sender (which homeservers create themselves, and which Synapse does not
	// let sync): it is registered the application service way, once.
	_, _, err = cli.Register(ctx, &mautrix.ReqRegister[any]{Username: localpart, Type: mautrix.AuthTypeAppservice, InhibitLogin: true})
	if err != nil && !errors.Is(err, mautrix.MUserInUse) {
		helper.Close()
		db.Close()
		return fmt.Errorf("register the bot's account: %w", err)
	}
	helper.LoginAs = &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypeAppservice,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		InitialDeviceDisplayName: DeviceName,
	}
	if err := helper.Init(ctx); err != nil {
		db.Close()
		return fmt.Errorf("bot crypto: %w", err)
	}
	if err := b.keepNoKeys(ctx, helper.Machine()); err != nil {
		helper.Close()
		return fmt.Errorf("bot crypto: %w", err)
	}
	if err := keepNoProfiles(ctx, cli); err != nil {
		helper.Close()
		return fmt.Errorf("bot state: %w", err)
	}
	ident, err := b.crossSigning(ctx, helper.Machine())
	if err != nil {
		helper.Close()
		return fmt.Errorf("bot cross-signing: %w", err)
	}
	cli.Crypto = helper
	if b.opts.Receipts != nil {
		cli.Syncer.(*syncer).OnEventType(event.EphemeralEventReceipt, func(ctx context.Context, evt *event.Event) {
			if rs := receiptsOf(evt); len(rs) > 0 {
				b.opts.Receipts(ctx, rs)
			}
		})
	}
	// A room the bot is invited to by a person (an admin giving it a seat,
	// say) is joined, so it can serve that room too.
	cli.Syncer.(*syncer).OnEventType(event.StateMember, func(ctx context.Context, evt *event.Event) {
		if evt.GetStateKey() == b.opts.UserID && evt.Content.AsMember().Membership == event.MembershipInvite {
			if !b.AcceptsInvite(string(evt.Sender)) {
				b.log.Info().Str("room_id", string(evt.RoomID)).Msg("ignored an invite from another server")
				return
			}
			if _, err := cli.JoinRoomByID(ctx, evt.RoomID); err != nil {
				b.log.Warn().Str("error", err.Error()).Str("room_id", string(evt.RoomID)).Msg("could not accept an invite")
			}
		}
	})
	b.mu.Lock()
	b.cli, b.helper, b.ident = cli, helper, ident
	b.mu.Unlock()
	return nil
}

// keepNoKeys makes the bot a dead end for room keys. Clients share the keys
// of every encrypted room it is in with its device; whoever could make it
// hand them on (a second device logged in with the as_token, cross-signed by
// whoever holds that token) could read everything. So it forwards no key to
// anyone, its own devices included, and keeps the key material only for the
// room whose messages it must read: the rest is dropped on arrival (and,
// once at start, whatever it kept of rooms it no longer reads).
func (b *Bot) keepNoKeys(ctx context.Context, mach *crypto.OlmMachine) error {
	mach.AllowKeyShare = func(context.Context, *id.Device, event.RequestedKeyInfo) *crypto.KeyShareRejection {
		return &crypto.KeyShareRejectNoResponse
	}
	store, ok := mach.CryptoStore.(*crypto.SQLCryptoStore)
	if !ok {
		return errors.New("the bot's crypto store is not the SQL store")
	}
	mach.SessionReceived = func(ctx context.Context, room id.RoomID, session id.SessionID, _ uint32) {
		if b.keeps(ctx, room) {
			return
		}
		if err := store.RedactGroupSession(ctx, room, session, "not a room the bot reads"); err != nil {
			b.log.Error().Str("error", err.Error()).Msg("could not drop a room key the bot does not need")
		}
	}
	// Once, whatever an older version (or a room no longer archived) kept.
	rows, err := store.DB.Query(ctx, `SELECT DISTINCT room_id FROM crypto_megolm_inbound_session WHERE account_id = $1 AND session IS NOT NULL`, store.AccountID)
	if err != nil {
		return err
	}
	var rooms []id.RoomID
	for rows.Next() {
		var r id.RoomID
		if err := rows.Scan(&r); err != nil {
			rows.Close()
			return err
		}
		rooms = append(rooms, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, r := range rooms {
		if b.keeps(ctx, r) {
			continue
		}
		if _, err := store.DB.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET withheld_code = $1, withheld_reason = $2, session = NULL, forwarding_chains = NULL
			WHERE account_id = $3 AND room_id = $4 AND session IS NOT NULL`,
			event.RoomKeyWithheldBeeperRedacted, "Session redacted: not a room the bot reads", store.AccountID, r); err != nil {
			return err
		}
	}
	return nil
}

// profileFreeStore is the bot's room-state cache without what people call
// themselves: display names and avatars are never written (the bot needs
// memberships, encryption and power levels, nothing else of its members).
type profileFreeStore struct{ *sqlstatestore.SQLStateStore }

func withoutProfile(m *event.MemberEventContent) *event.MemberEventContent {
	c := *m
	c.Displayname, c.AvatarURL = "", ""
	return &c
}

func (s profileFreeStore) SetMember(ctx context.Context, room id.RoomID, user id.UserID, m *event.MemberEventContent) error {
	return s.SQLStateStore.SetMember(ctx, room, user, withoutProfile(m))
}

func (s profileFreeStore) ReplaceCachedMembers(ctx context.Context, room id.RoomID, evts []*event.Event, only ...event.Membership) error {
	stripped := make([]*event.Event, 0, len(evts))
	for _, e := range evts {
		if e.Content.Parsed == nil {
			if err := e.Content.ParseRaw(event.StateMember); err != nil {
				continue
			}
		}
		c := *e
		c.Content = event.Content{Parsed: withoutProfile(e.Content.AsMember())}
		stripped = append(stripped, &c)
	}
	return s.SQLStateStore.ReplaceCachedMembers(ctx, room, stripped, only...)
}

// keepNoProfiles puts the profile-free store in front of the bot's client
// and clears the profiles an older version kept.
func keepNoProfiles(ctx context.Context, cli *mautrix.Client) error {
	ss, ok := cli.StateStore.(*sqlstatestore.SQLStateStore)
	if !ok {
		return errors.New("the bot's state store is not the SQL store")
	}
	cli.StateStore = profileFreeStore{ss}
	_, err := ss.Exec(ctx, `UPDATE mx_user_profile SET displayname = '', avatar_url = '', name_skeleton = NULL WHERE displayname <> '' OR avatar_url <> ''`)
	return err
}

// AcceptsInvite reports whether the bot joins a room when inviter invites
// it: users of its own server and administrators only. A room the bot joins
// is a room whose keys it is sent and whose members it serves; another
// server's users could otherwise flood it with rooms.
func (b *Bot) AcceptsInvite(inviter string) bool {
	if b.opts.Admin != nil && b.opts.Admin(inviter) {
		return true
	}
	_, own, _ := id.UserID(b.opts.UserID).ParseAndValidateRelaxed()
	_, theirs, err := id.UserID(inviter).ParseAndValidateRelaxed()
	return err == nil && own != "" && theirs == own
}

// ownVersionTables creates, in the connection's own schema, the tables where
// mautrix's crypto and state stores record their schema versions. Their
// upgrade code asks PostgreSQL's information_schema whether the table exists
// without naming a schema, so where another schema of the same database
// already has one (a second matrix-hipaa, or a mautrix bridge, sharing the
// database) it skipped creating its own and then failed to read it: the bot
// never started. Seen in the e2e suite, whose tests each use a schema of
// their own in one database.
func ownVersionTables(ctx context.Context, db *sql.DB, dialect string) error {
	if dialect != "postgres" {
		return nil
	}
	for _, table := range []string{sqlstatestore.VersionTableName, sql_store_upgrade.VersionTableName} {
		if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+table+" (version INTEGER, compat INTEGER)"); err != nil {
			return fmt.Errorf("create %s: %w", table, err)
		}
	}
	return nil
}

// AccessToken is the bot's own session's token, once it is ready.
func (b *Bot) AccessToken() (string, error) {
	cli, err := b.client()
	if err != nil {
		return "", err
	}
	return cli.AccessToken, nil
}

func (b *Bot) client() (*mautrix.Client, error) {
	select {
	case <-b.ready:
		return b.cli, nil
	default:
		return nil, ErrNotReady
	}
}

// Membership is the bot's standing in a room after EnsureJoined.
type Membership struct {
	Encrypted bool
	Power     int // the bot's power level
	Needed    int // the level the room's settings events need
}

// settingsEvents are the state events the service may have to set.
var settingsEvents = []event.Type{event.StateEncryption, event.StateJoinRules, event.StateGuestAccess}

// EnsureJoined makes the bot a member of room: it joins, and if it may not,
// it is invited by inviter (a member who may invite, usually the creator)
// and joins then. The room's state is then loaded into the bot's store so
// that what it sends is encrypted for the right devices.
func (b *Bot) EnsureJoined(ctx context.Context, room, inviter string) (Membership, error) {
	cli, err := b.client()
	if err != nil {
		return Membership{}, err
	}
	rid := id.RoomID(room)
	if !cli.StateStore.IsInRoom(ctx, rid, cli.UserID) {
		if _, err := cli.JoinRoomByID(ctx, rid); err != nil {
			if inviter == "" || !errors.Is(err, mautrix.MForbidden) {
				return Membership{}, err
			}
			if err := b.opts.Inviter.Invite(ctx, inviter, room, b.opts.UserID); err != nil {
				return Membership{}, fmt.Errorf("invite the bot: %w", err)
			}
			if _, err := cli.JoinRoomByID(ctx, rid); err != nil {
				return Membership{}, err
			}
		}
		if _, err := cli.State(ctx, rid); err != nil {
			return Membership{}, fmt.Errorf("load room state: %w", err)
		}
	}
	return b.standing(ctx, cli, rid)
}

func (b *Bot) standing(ctx context.Context, cli *mautrix.Client, room id.RoomID) (Membership, error) {
	var m Membership
	var err error
	if m.Encrypted, err = cli.StateStore.IsEncrypted(ctx, room); err != nil {
		return m, err
	}
	pl, err := cli.StateStore.GetPowerLevels(ctx, room)
	if err != nil || pl == nil {
		return m, err
	}
	m.Power = pl.GetUserLevel(cli.UserID)
	for _, t := range settingsEvents {
		m.Needed = max(m.Needed, pl.GetEventLevel(t))
	}
	return m, nil
}

// SendNotice posts a notice in room, encrypted if the room is, addressed to
// target (mentioned) or, with target empty, to everyone in it. txnID makes a
// retry of the same notice a no-op.
func (b *Bot) SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error {
	if _, err := b.EnsureJoined(ctx, room, inviter); err != nil {
		return err
	}
	cli, _ := b.client()
	rid, uid := id.RoomID(room), id.UserID(target)
	// The target just wrote in the room. If the bot's view does not have
	// them as a member yet, its sync is behind: reload the members and start
	// a new Megolm session, so theirs is among the devices it is shared with.
	if target != "" && !cli.StateStore.IsInRoom(ctx, rid, uid) {
		if _, err := cli.State(ctx, rid); err != nil {
			return fmt.Errorf("load room state: %w", err)
		}
		if err := b.helper.Machine().CryptoStore.RemoveOutboundGroupSession(ctx, rid); err != nil {
			return err
		}
	}
	content := &event.MessageEventContent{MsgType: event.MsgNotice, Body: text, Mentions: &event.Mentions{}}
	if target != "" {
		content.Body = target + ": " + text
		content.Format = event.FormatHTML
		content.FormattedBody = noticeHTML(target, text)
		content.Mentions.UserIDs = []id.UserID{uid}
	}
	_, err := cli.SendMessageEvent(ctx, rid, event.EventMessage, content, mautrix.ReqSendEvent{TransactionID: txnID})
	return err
}

// noticeHTML is a notice's formatted body: a mention of target, then the
// text. The user ID is the sender's own choice (a remote server may name its
// users with < and "), so it is URL-encoded in the link and HTML-escaped
// everywhere: it must never put markup into the bot's message.
func noticeHTML(target, text string) string {
	href := "https://matrix.to/#/" + url.PathEscape(target)
	return fmt.Sprintf(`<a href="%s">%s</a>: %s`, htmlEscape(href), htmlEscape(target), strings.ReplaceAll(htmlEscape(text), "\n", "<br>"))
}

var htmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")

func htmlEscape(s string) string { return htmlEscaper.Replace(s) }

// SendState sets a state event as the bot itself (when it has the power and
// the room's creator no longer does).
func (b *Bot) SendState(ctx context.Context, room, eventType, stateKey string, content any) error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	_, err = cli.SendStateEvent(ctx, id.RoomID(room), event.Type{Type: eventType, Class: event.StateEventType}, stateKey, content)
	return err
}

// ErrNoKeys is returned by ReadMessage while the sender's client has not yet
// shared the message's Megolm session with the bot: retry later.
var ErrNoKeys = errors.New("the message's room key has not reached the bot yet")

// Message is what ReadMessage returns: who wrote it, where, the plain text,
// and how far the bot trusts the device that sent it.
type Message struct {
	Sender string
	Room   string
	// Type is the event's type (decrypted, if it was encrypted).
	Type    string
	MsgType string
	Body    string
	// Encrypted: the event was encrypted (and decrypted here).
	Encrypted bool
	// Trust is the sending device's trust as mautrix resolves it against
	// the bot's own cross-signing keys: CrossSignedVerified means the device
	// is cross-signed by its owner's master key and the bot has pinned that
	// key. Forwarded keys never count.
	Trust id.TrustState
	// Pinned: the bot pinned the sender's master key on reading this
	// message (the first time it saw one from this administrator).
	Pinned bool
	// KeyChanged: the sender is an administrator whose master key is not
	// the one the bot pinned.
	KeyChanged bool
}

// ReadMessage fetches one message event and returns its text, decrypting it
// if it is encrypted. The service calls it only for the management room.
// An administrator's master key is pinned the first time one of their
// cross-signed devices is read.
func (b *Bot) ReadMessage(ctx context.Context, room, eventID string) (Message, error) {
	evt, err := b.fetch(ctx, room, eventID)
	if err != nil {
		return Message{}, err
	}
	m := Message{Sender: string(evt.Sender), Room: string(evt.RoomID)}
	if evt.Type == event.EventEncrypted {
		dec, err := b.decrypt(ctx, evt, keyWait)
		if err != nil {
			return Message{}, err
		}
		if b.opts.Admin != nil && b.opts.Admin(m.Sender) && dec.Mautrix.TrustState < id.TrustStateCrossSignedVerified {
			// Judge an administrator's session by their keys as the
			// homeserver has them now, not as cached: a cross-signing reset
			// the bot has not yet heard of must show as a changed key.
			if _, err := b.helper.Machine().FetchKeys(ctx, []id.UserID{evt.Sender}, true); err != nil {
				return Message{}, fmt.Errorf("fetch the administrator's keys: %w", err)
			}
			if dec, err = b.decrypt(ctx, evt, keyWait); err != nil {
				return Message{}, err
			}
		}
		if b.opts.Admin != nil && b.opts.Admin(m.Sender) &&
			(dec.Mautrix.TrustState == id.TrustStateCrossSignedTOFU || dec.Mautrix.TrustState == id.TrustStateCrossSignedUntrusted) {
			m.Pinned, err = b.pinAdmin(ctx, b.helper.Machine(), evt.Sender)
			switch {
			case errors.Is(err, ErrKeyChanged):
				m.KeyChanged = true
			case err != nil:
				return Message{}, fmt.Errorf("pin the administrator's key: %w", err)
			default:
				if dec, err = b.decrypt(ctx, evt, keyWait); err != nil { // trust resolved again
					return Message{}, err
				}
			}
		}
		m.Encrypted, m.Trust = true, dec.Mautrix.TrustState
		if dec.Mautrix.ForwardedKeys && m.Trust > id.TrustStateForwarded {
			m.Trust = id.TrustStateForwarded
		}
		evt = dec
	}
	m.Type = evt.Type.Type
	if msg, ok := evt.Content.Parsed.(*event.MessageEventContent); ok {
		m.MsgType, m.Body = string(msg.MsgType), msg.Body
	}
	return m, nil
}

// keyWait is how long a management-room command waits for its key.
const keyWait = 5 * time.Second

// fetch gets one event as the bot, its content parsed.
func (b *Bot) fetch(ctx context.Context, room, eventID string) (*event.Event, error) {
	cli, err := b.client()
	if err != nil {
		return nil, err
	}
	evt, err := cli.GetEvent(ctx, id.RoomID(room), id.EventID(eventID))
	if err != nil {
		return nil, err
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return nil, fmt.Errorf("parse event: %w", err)
	}
	return evt, nil
}

// WithheldError: the sender's client refused the bot the message's key
// (m.room_key.withheld), or the bot dropped it on arrival because the
// room was not one it reads then (com.beeper.redacted). Code says which.
type WithheldError struct{ Code string }

func (e *WithheldError) Error() string {
	return "the message's room key was withheld from the bot (" + e.Code + ")"
}

// ReadEvent fetches one event of a room the bot reads (an archived one)
// and returns it decrypted, waiting at most wait for its key: ErrNoKeys if
// it has not come, a *WithheldError if it never will. A redacted event
// comes back as the homeserver has it, content gone.
func (b *Bot) ReadEvent(ctx context.Context, room, eventID string, wait time.Duration) (*event.Event, error) {
	evt, err := b.fetch(ctx, room, eventID)
	if err != nil || evt.Type != event.EventEncrypted || evt.Unsigned.RedactedBecause != nil {
		return evt, err
	}
	return b.decrypt(ctx, evt, wait)
}

// DecryptRaw decrypts an encrypted event as the homeserver pushed it (its
// JSON), as ReadEvent does one it fetches: for messages redacted since.
func (b *Bot) DecryptRaw(ctx context.Context, raw []byte, wait time.Duration) (*event.Event, error) {
	if _, err := b.client(); err != nil {
		return nil, err
	}
	var evt event.Event
	if err := json.Unmarshal(raw, &evt); err != nil {
		return nil, fmt.Errorf("parse event: %w", err)
	}
	if evt.Type.Type != event.EventEncrypted.Type || evt.StateKey != nil {
		return nil, fmt.Errorf("not an encrypted message event (%s)", evt.Type.Type)
	}
	evt.Type = event.EventEncrypted
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return nil, fmt.Errorf("parse event: %w", err)
	}
	return b.decrypt(ctx, &evt, wait)
}

// Download fetches a file from the media repository as the bot.
func (b *Bot) Download(ctx context.Context, mxc id.ContentURI) ([]byte, error) {
	cli, err := b.client()
	if err != nil {
		return nil, err
	}
	return cli.DownloadBytes(ctx, mxc)
}

func (b *Bot) decrypt(ctx context.Context, evt *event.Event, wait time.Duration) (*event.Event, error) {
	enc := evt.Content.AsEncrypted()
	dec, err := b.helper.Decrypt(ctx, evt)
	if errors.Is(err, crypto.ErrNoSessionFound) && wait > 0 &&
		b.helper.WaitForSession(ctx, evt.RoomID, enc.SenderKey, enc.SessionID, wait) {
		dec, err = b.helper.Decrypt(ctx, evt)
	}
	if errors.Is(err, crypto.ErrNoSessionFound) {
		return nil, ErrNoKeys
	}
	if errors.Is(err, crypto.ErrGroupSessionWithheld) {
		code := "unknown"
		if w, werr := b.helper.Machine().CryptoStore.GetWithheldGroupSession(ctx, evt.RoomID, enc.SessionID); werr == nil && w != nil {
			code = string(w.Code)
		}
		return nil, &WithheldError{Code: code}
	}
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	return dec, nil
}

// Kick removes user from room (or withdraws their invite) as the bot, which
// needs the room's kick power.
func (b *Bot) Kick(ctx context.Context, room, user, reason string) error {
	cli, err := b.client()
	if err != nil {
		return err
	}
	_, err = cli.KickUser(ctx, id.RoomID(room), &mautrix.ReqKickUser{UserID: id.UserID(user), Reason: reason})
	return err
}

// CompliantRoomState is the initial state of every room the service
// creates: encrypted, no guests. Policy never acts on the service's own
// events, so its rooms must be created as policy wants them (the private
// chat presets let guests join); otherwise they would need attention.
func CompliantRoomState() []*event.Event {
	return []*event.Event{
		{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}},
		{Type: event.StateGuestAccess, Content: event.Content{Parsed: &event.GuestAccessEventContent{GuestAccess: event.GuestAccessForbidden}}},
	}
}

// CreateDM creates an encrypted direct-message room with user (invited) and
// returns its ID.
func (b *Bot) CreateDM(ctx context.Context, user string) (string, error) {
	cli, err := b.client()
	if err != nil {
		return "", err
	}
	resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "trusted_private_chat", IsDirect: true, Invite: []id.UserID{id.UserID(user)},
		InitialState: CompliantRoomState(),
	})
	if err != nil {
		return "", err
	}
	if _, err := cli.State(ctx, resp.RoomID); err != nil {
		return "", fmt.Errorf("load room state: %w", err)
	}
	return string(resp.RoomID), nil
}

// receiptsOf reads an m.receipt event's read receipts (m.read and
// m.read.private), at most MaxReceiptsPerEvent of them.
func receiptsOf(evt *event.Event) []ReadReceipt {
	if evt.Content.Parsed == nil {
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			return nil
		}
	}
	content, ok := evt.Content.Parsed.(*event.ReceiptEventContent)
	if !ok {
		return nil
	}
	var out []ReadReceipt
	for eventID, byType := range *content {
		for typ, byUser := range byType {
			if typ != event.ReceiptTypeRead && typ != event.ReceiptTypeReadPrivate {
				continue
			}
			for user, r := range byUser {
				if len(out) >= MaxReceiptsPerEvent {
					return out
				}
				out = append(out, ReadReceipt{Room: string(evt.RoomID), User: string(user), EventID: string(eventID), Type: string(typ),
					Thread: string(r.ThreadID), TS: r.Timestamp.UnixMilli()})
			}
		}
	}
	return out
}

// MaxReceiptsPerEvent bounds one m.receipt event (a room's members' receipts).
const MaxReceiptsPerEvent = 5000
