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
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Job kinds. Stored: never renamed.
const (
	// JobArchive reads one encrypted message of an archived room and keeps it.
	JobArchive = "archive"
	// JobNotice tells a room's members it is archived.
	JobNotice = "archive_notice"
)

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
}

// New is the archive with env's archive key: read if its file exists, and
// created (0600) when a policy that archives is first in force, here or
// later (a deployment that archives nothing needs no archive key). The
// bot is told to keep the room keys of archived rooms.
func New(env appservice.Env) (*Feature, error) {
	f := &Feature{env: env, KeyWait: DefaultKeyWait}
	if _, err := os.Stat(env.Config.Keys.ArchiveFile); err == nil || (env.Policy() != nil && env.Policy().MayArchive()) {
		if _, err := f.Ring(); err != nil {
			return nil, err
		}
	}
	if env.Bot != nil {
		f.Bot = env.Bot
		env.Bot.SetReads(f.Archived)
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

// Jobs read and keep encrypted messages, and tell rooms they are archived.
func (f *Feature) Jobs() map[string]appservice.Handler {
	return map[string]appservice.Handler{JobArchive: f.archive, JobNotice: f.notice}
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

// pendingRow keeps an encrypted message's ciphertext for its archive job.
type pendingRow struct {
	EventID string
	Event   []byte
}

// KeepsCiphertext: while any room may be archived, the inbox keeps
// encrypted events until decided on, so the archive keeps their ciphertext
// for the archiver whatever happens to the event on the homeserver.
func (f *Feature) KeepsCiphertext() bool {
	pol := f.env.Policy()
	return pol != nil && pol.MayArchive()
}

// roomRow marks a room as archived (archive_room).
type roomRow struct {
	Room  string
	Since int64
}

// DecideEvent keeps what an archived room's events say in the clear at
// once (plaintext messages, redactions, memberships), sealed, in the
// dispatcher's transaction; an encrypted message gets a job that reads it
// through the bot. A new archived room's members are told.
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
	case ev.Sender == f.env.BotUser || ev.Sender == "@"+f.env.Config.SenderLocalpart()+":"+f.env.Config.Homeserver.Domain:
		if ev.Type != "m.room.redaction" {
			return // the service's own notices: the audit trail has them
		}
		fallthrough
	case ev.Type == "m.room.redaction":
		raw := gjson.ParseBytes(ev.Raw)
		rec.Kind, rec.Redacts, rec.Reason = KindRedaction, raw.Get("redacts").String(), raw.Get("content.reason").String()
		if rec.Redacts == "" {
			rec.Redacts = raw.Get("content.redacts").String() // room version 11
		}
		rec.ByService = ev.Sender == f.env.BotUser || strings.HasPrefix(ev.Sender, "@"+f.env.Config.SenderLocalpart()+":")
	case ev.Type == "m.room.encrypted":
		payload, _ := json.Marshal(jobPayload{Room: ev.RoomID, EventID: ev.ID, Sender: ev.Sender, SentAt: ev.OriginTS, KeepUntil: keep})
		dec.Add(appservice.JobSpec{Kind: JobArchive, DedupeKey: "archive:" + ev.ID, Payload: payload})
		if len(ev.Raw) > 0 {
			dec.Row(f, pendingRow{EventID: ev.ID, Event: ev.Raw})
		}
		return
	case ev.Type == "m.room.message" || ev.Type == "m.sticker":
		rec.Kind, rec.Content = KindMessage, json.RawMessage(gjson.GetBytes(ev.Raw, "content").Raw)
	default:
		return
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

// SaveRows writes the items and archived rooms decided in one batch.
func (f *Feature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	for _, r := range rows {
		switch v := r.(type) {
		case Item:
			if err := saveItem(ctx, tx, v); err != nil {
				return err
			}
			f.env.Metrics.ArchiveItems.WithLabelValues(v.Kind).Inc()
		case pendingRow:
			if _, err := tx.ExecContext(ctx, `INSERT INTO archive_pending (event_id, event) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING`, v.EventID, v.Event); err != nil {
				return err
			}
		case roomRow:
			if _, err := tx.ExecContext(ctx, `INSERT INTO archive_room (room_id, since) VALUES ($1, $2) ON CONFLICT (room_id) DO NOTHING`, v.Room, v.Since); err != nil {
				return err
			}
		}
	}
	return nil
}

func saveItem(ctx context.Context, tx *sql.Tx, it Item) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO archive_item (event_id, room_p, sender_p, kind, sent_at, archived_at, keep_until, key_id, sealed)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING`,
		it.EventID, it.RoomP, it.SenderP, it.Kind, it.SentAt, it.ArchivedAt, it.KeepUntil, it.KeyID, it.Sealed)
	return err
}

// Enrol tells the members of known rooms that a policy now archives (and
// the archive's start) that their room is archived, once per room.
func (f *Feature) Enrol(ctx context.Context, pol *policy.Policy) error {
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
			res, err := tx.ExecContext(ctx, `INSERT INTO archive_room (room_id, since) VALUES ($1, $2) ON CONFLICT (room_id) DO NOTHING`, r.ID, now)
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

// recordMissing lists a message the archive could not read, and audits it.
func (f *Feature) recordMissing(ctx context.Context, p jobPayload, reason string) error {
	keys := f.env.Chain.Keys()
	err := f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM archive_pending WHERE event_id = $1`, p.EventID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO archive_missing (event_id, room_p, sender_p, sent_at, reason, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (event_id) DO NOTHING`, p.EventID, keys.Room(p.Room), keys.User(p.Sender), p.SentAt, reason, f.env.Now().UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeArchive, Outcome: audit.OutcomeFailure, Action: "missing",
			Room: keys.Room(p.Room), Actor: keys.User(p.Sender), EventID: p.EventID, EventType: "m.room.encrypted", Detail: reason})
	})
	if err == nil {
		f.env.Metrics.ArchiveMissing.WithLabelValues(reasonClass(reason)).Inc()
	}
	return err
}

// reasonClass is a missing reason as a bounded metric label.
func reasonClass(reason string) string {
	if strings.HasPrefix(reason, "withheld") {
		return "withheld"
	}
	return reason
}
