// Package archive keeps the record of rooms whose policy says archive: on:
// every message (decrypted by the bot, which keeps those rooms' keys and
// no others), edit, redaction, attachment and membership change, sealed
// under the archive key (seal.go), kept for archive_retention and past it
// under a legal hold, and given out only as an eDiscovery package with an
// audited reason (export.go). A message it cannot read is listed, never
// silently missing.
package archive

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobNotice tells a room's members it is archived. Stored: never renamed.
const JobNotice = "archive_notice"

// DefaultKeyWait is how long the archiver waits for a message's key
// before it lists the message as missing (no-keys).
const DefaultKeyWait = time.Hour

// Reader is what the archive needs of the E2EE bot.
type Reader interface {
	Ready() <-chan struct{}
	ReadEvent(ctx context.Context, room, eventID string, wait time.Duration) (*event.Event, error)
	DecryptRaw(ctx context.Context, raw []byte, wait time.Duration) (*event.Event, error)
	Download(ctx context.Context, mxc id.ContentURI) ([]byte, error)
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

// Feature is the archive on the engine.
type Feature struct {
	env    appservice.Env
	ringMu sync.Mutex
	ring   *Keyring
	Bot    Reader
	// KeyWait: see DefaultKeyWait.
	KeyWait time.Duration
	// wake tells the ingest loop that messages were queued.
	wake chan struct{}
	// keeps caches KeepsCiphertext, by policy hash and room.
	keeps sync.Map
}

// New is the archive with env's archive key: read if its file exists, and
// created (0600) when a policy that archives is first in force, here or
// later (a deployment that archives nothing needs no archive key). The
// bot is told to keep the room keys of archived rooms.
func New(env appservice.Env) (*Feature, error) {
	f := &Feature{env: env, KeyWait: DefaultKeyWait, wake: make(chan struct{}, 1)}
	if _, err := os.Stat(env.Config.Keys.ArchiveFile); err == nil || (env.Policy() != nil && env.Policy().MayArchive()) {
		if _, err := f.Ring(); err != nil {
			return nil, err
		}
	}
	if env.Bot != nil {
		f.Bot = env.Bot
		env.Bot.AddReads(f.Archived)
	}
	return f, nil
}

// Ring is the archive's keys, the key file read (or created) on first use.
func (f *Feature) Ring() (*Keyring, error) {
	f.ringMu.Lock()
	defer f.ringMu.Unlock()
	if f.ring != nil {
		return f.ring, nil
	}
	r, err := LoadKeyring(f.env.Config.Keys.ArchiveFile)
	if err != nil {
		return nil, err
	}
	f.ring = r
	return r, nil
}

func (f *Feature) Name() string { return "archive" }

// Jobs tell rooms they are archived. Encrypted messages are read by the
// ingest loop, from archive_pending (ingest.go).
func (f *Feature) Jobs() map[string]appservice.Handler {
	return map[string]appservice.Handler{JobNotice: f.notice, JobMediaDelete: f.deleteMedia}
}

// Archived reports whether policy archives room now: the bot keeps the
// keys of these rooms (and of the management room), and drops the rest.
func (f *Feature) Archived(ctx context.Context, room string) bool {
	pol := f.env.Policy()
	if pol == nil || !pol.MayArchive() {
		return false
	}
	kr, err := appservice.LoadKnownRoom(ctx, f.env.DB, room)
	if err != nil {
		f.env.Log.Error().Str("error", appservice.SafeError(err)).Msg("could not look up whether a room is archived; its key is not kept")
		return false
	}
	return pol.For(kr.Policy).Archive == policy.On
}

// SeesCiphertext: encrypted messages are what the archive is for.
func (f *Feature) SeesCiphertext(pol *policy.Policy, _ *appservice.RoomInfo) bool {
	return pol.MayArchive()
}

// Item is one archive_item row.
type Item struct {
	EventID, RoomP, SenderP, Kind string
	SentAt, ArchivedAt, KeepUntil int64
	KeyID                         string
	Sealed                        []byte
}

// KeepsCiphertext: in archived rooms the inbox keeps encrypted events
// until decided on, so the archive keeps their ciphertext for the archiver
// whatever happens to the event on the homeserver. The answer is cached
// per room and policy (Enrol forgets it when links change).
func (f *Feature) KeepsCiphertext(room string) bool {
	pol := f.env.Policy()
	if pol == nil || !pol.MayArchive() {
		return false
	}
	key := pol.Hash + "\x00" + room
	if v, ok := f.keeps.Load(key); ok {
		return v.(bool)
	}
	v := f.Archived(context.Background(), room)
	f.keeps.Store(key, v)
	return v
}

// roomRow marks a room as archived (archive_room).
type roomRow struct {
	Room  string
	Since int64
}

// DecideEvent keeps what an archived room's events say in the clear at
// once (plaintext messages, redactions, memberships), sealed, in the
// dispatcher's transaction; an encrypted message is queued for the
// archiver (ingest.go). A redaction queues the deletion of its target's
// files (media.go). A new archived room's members are told.
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	if settings.Archive != policy.On || settings.DryRun {
		return
	}
	keep := int64(0)
	if r := settings.ArchiveRetention.D(); r > 0 {
		keep = ev.OriginTS + r.Milliseconds()
	}
	rec := Record{EventID: ev.ID, RoomID: ev.RoomID, Sender: ev.Sender, Type: ev.Type, SentAt: ev.OriginTS}
	switch {
	case ev.Type == "m.room.create" && ev.StateKey != nil && *ev.StateKey == "":
		f.noticeRoom(ev.RoomID, ev.Sender, ev.ReceivedAt, dec)
		return
	case ev.Type == "m.room.member" && ev.StateKey != nil:
		rec.Kind, rec.User, rec.Membership = KindMember, *ev.StateKey, ev.Content.Membership
	case ev.StateKey != nil:
		return
	case ev.Type == "m.room.redaction":
		raw := gjson.ParseBytes(ev.Raw)
		rec.Kind, rec.Redacts, rec.Reason = KindRedaction, raw.Get("redacts").String(), raw.Get("content.reason").String()
		if rec.Redacts == "" {
			rec.Redacts = raw.Get("content.redacts").String() // room version 11
		}
		rec.ByService = f.ownUser(ev.Sender)
	case f.ownUser(ev.Sender):
		return // the service's own notices: the audit trail has them
	case ev.Type == "m.room.encrypted":
		raw := ev.Raw
		if raw == nil {
			raw = []byte{} // not kept: the archiver fetches it
		}
		dec.Row(f, pending{EventID: ev.ID, Room: ev.RoomID, Sender: ev.Sender, SentAt: ev.OriginTS, KeepUntil: keep, Event: raw, QueuedAt: ev.ReceivedAt})
		return
	case ev.Type == "m.room.message" || ev.Type == "m.sticker":
		rec.Kind, rec.Content = KindMessage, json.RawMessage(gjson.GetBytes(ev.Raw, "content").Raw)
		for _, m := range mediaOf(rec.Content) {
			dec.Row(f, mediaRow{EventID: ev.ID, MXC: m, Sender: ev.Sender})
		}
	default:
		return
	}
	if rec.Kind == KindRedaction && rec.Redacts != "" {
		// The message is gone from the room: its files go too (the
		// archive keeps its copy), unless a hold binds it (checked then).
		payload, _ := json.Marshal(appservice.ActionPayload{Room: ev.RoomID, EventID: rec.Redacts, Reason: "redacted"})
		dec.Add(appservice.JobSpec{Kind: JobMediaDelete, DedupeKey: "media_delete:" + rec.Redacts, Payload: payload})
	}
	it, err := f.seal(rec, keep)
	if err != nil {
		// Only a missing, unreadable or uncreatable key gets here: loud.
		f.env.Log.Error().Str("error", err.Error()).Str("event_id", ev.ID).Msg("ARCHIVE: could not seal an archive record; it is not kept")
		f.env.Metrics.ArchiveMissing.WithLabelValues("unreadable").Inc()
		return
	}
	dec.Row(f, it)
}

// ownUser reports whether user is one of the service's own: the bot, or
// the registration's sender.
func (f *Feature) ownUser(user string) bool {
	return user == f.env.BotUser || user == "@"+f.env.Config.SenderLocalpart()+":"+f.env.Config.Homeserver.Domain
}

// noticeRoom marks room archived and tells its members, once.
func (f *Feature) noticeRoom(room, inviter string, at int64, dec *appservice.Decision) {
	payload, _ := json.Marshal(noticePayload{Room: room, Inviter: inviter})
	dec.Add(appservice.JobSpec{Kind: JobNotice, DedupeKey: "archive_notice:" + room, Payload: payload})
	dec.Row(f, roomRow{Room: room, Since: at})
}

// seal turns a record into its row.
func (f *Feature) seal(rec Record, keepUntil int64) (Item, error) {
	plain, err := json.Marshal(rec)
	if err != nil {
		return Item{}, err
	}
	ring, err := f.Ring()
	if err != nil {
		return Item{}, err
	}
	sealed, err := ring.Seal(rec.Kind+"/"+rec.EventID, plain)
	if err != nil {
		return Item{}, err
	}
	keys := f.env.Chain.Keys()
	return Item{EventID: rec.EventID, RoomP: keys.Room(rec.RoomID), SenderP: keys.User(rec.Sender), Kind: rec.Kind,
		SentAt: rec.SentAt, ArchivedAt: f.env.Now().UnixMilli(), KeepUntil: keepUntil, KeyID: KeyOf(sealed), Sealed: sealed}, nil
}

// SaveRows writes the items, queued messages and archived rooms decided in
// one batch, many rows a statement.
func (f *Feature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	var items, queued, rooms, media []any
	for _, r := range rows {
		switch v := r.(type) {
		case Item:
			items = append(items, v.EventID, v.RoomP, v.SenderP, v.Kind, v.SentAt, v.ArchivedAt, v.KeepUntil, v.KeyID, v.Sealed)
			f.env.Metrics.ArchiveItems.WithLabelValues(v.Kind).Inc()
		case pending:
			queued = append(queued, v.EventID, v.Room, v.Sender, v.SentAt, v.KeepUntil, v.Event, v.QueuedAt, v.QueuedAt)
		case roomRow:
			rooms = append(rooms, f.env.Chain.Keys().Room(v.Room), v.Since)
		case mediaRow:
			media = append(media, v.EventID, v.MXC, f.env.Chain.Keys().User(v.Sender))
		}
	}
	for _, x := range []struct {
		head, tail string
		cols       int
		args       []any
	}{
		{itemInsert, " ON CONFLICT (event_id) DO NOTHING", 9, items},
		{`INSERT INTO archive_pending (event_id, room_id, sender, sent_at, keep_until, event, queued_at, next_at) VALUES `, " ON CONFLICT (event_id) DO NOTHING", 8, queued},
		{`INSERT INTO archive_room (room_p, since) VALUES `, " ON CONFLICT (room_p) DO NOTHING", 2, rooms},
		{`INSERT INTO archive_media (event_id, mxc, sender_p) VALUES `, " ON CONFLICT (event_id, mxc) DO NOTHING", 3, media},
	} {
		per := 100 * x.cols
		for start := 0; start < len(x.args); start += per {
			chunk := x.args[start:min(start+per, len(x.args))]
			if _, err := tx.ExecContext(ctx, store.ValuesQuery(x.head, x.cols, len(chunk)/x.cols, x.tail), chunk...); err != nil {
				return err
			}
		}
	}
	if len(queued) > 0 {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

const itemInsert = `INSERT INTO archive_item (event_id, room_p, sender_p, kind, sent_at, archived_at, keep_until, key_id, sealed) VALUES `

func saveItem(ctx context.Context, tx *sql.Tx, it Item) error {
	_, err := tx.ExecContext(ctx, store.ValuesQuery(itemInsert, 9, 1, " ON CONFLICT (event_id) DO NOTHING"),
		it.EventID, it.RoomP, it.SenderP, it.Kind, it.SentAt, it.ArchivedAt, it.KeepUntil, it.KeyID, it.Sealed)
	return err
}

// Enrol tells the members of known rooms that a policy now archives (and
// the archive's start) that their room is archived, once per room.
func (f *Feature) Enrol(ctx context.Context, pol *policy.Policy) error {
	f.keeps.Clear() // a link confirmed may change which rooms are archived
	if !pol.MayArchive() {
		return nil
	}
	if _, err := f.Ring(); err != nil {
		return err
	}
	known, err := appservice.LoadKnownRooms(ctx, f.env.DB)
	if err != nil {
		return err
	}
	var rooms []appservice.KnownRoom
	for _, r := range known.All() {
		if e := pol.For(r.Policy); e.Archive == policy.On && !e.DryRun {
			rooms = append(rooms, r)
		}
	}
	if len(rooms) == 0 {
		return nil
	}
	queued := 0
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		now := f.env.Now().UnixMilli()
		for _, r := range rooms {
			res, err := tx.ExecContext(ctx, `INSERT INTO archive_room (room_p, since) VALUES ($1, $2) ON CONFLICT (room_p) DO NOTHING`, f.env.Chain.Keys().Room(r.ID), now)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue
			}
			payload, _ := json.Marshal(noticePayload{Room: r.ID, Inviter: r.Creator})
			if err := appservice.Enqueue(ctx, f.env.DB, tx, f.env.Now(), appservice.JobSpec{Kind: JobNotice, DedupeKey: "archive_notice:" + r.ID, Payload: payload}); err != nil {
				return err
			}
			queued++
		}
		return nil
	})
	if err == nil && queued > 0 {
		f.env.Wake()
	}
	return err
}

type noticePayload struct {
	Room    string `json:"room"`
	Inviter string `json:"inviter"`
}

// notice tells a room it is archived, in the policy's words.
func (f *Feature) notice(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[noticePayload](j)
	if err != nil {
		return err
	}
	if err := f.botReady(); err != nil {
		return err
	}
	return f.Bot.SendNotice(ctx, p.Room, p.Inviter, "", f.env.Policy().Notice(), fmt.Sprintf("hipaa-job-%d", j.ID))
}

// botReady is nil once the bot can read; until then jobs wait for it.
func (f *Feature) botReady() error {
	if f.Bot == nil {
		return appservice.Permanent(fmt.Errorf("the archive needs the E2EE bot, and this service has none"))
	}
	select {
	case <-f.Bot.Ready():
		return nil
	default:
		return appservice.RetryLater(5*time.Second, fmt.Errorf("the E2EE bot is not logged in yet"))
	}
}

// reasonClass is a missing reason as a bounded metric label.
func reasonClass(reason string) string {
	if strings.HasPrefix(reason, "withheld") {
		return "withheld"
	}
	return reason
}
