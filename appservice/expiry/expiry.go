package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Expiry is a message's scheduled end: at DueAt (unix ms) it is redacted
// as its sender.
type Expiry struct {
	EventID, RoomID, Sender string
	ReceivedAt, DueAt       int64
	// OriginTS is the homeserver's timestamp, for the purge bound.
	OriginTS int64
}

// JobExpire is the job kind that redacts an expired message.
const JobExpire = "expire"

// reasonExpired is the redaction reason people see.
const reasonExpired = "This room's message lifetime has ended."

// expiryFor decides whether an event expires, and when: message events
// (encrypted or not; not state, not redactions) in a room with a lifetime
// (policy's, tightened by the room's own m.room.retention).
// The time counts from when the service received it, not from the event's
// own timestamp, which its sender's client sets.
func expiryFor(ev *appservice.Event, s policy.Effective, room policy.RoomState) (Expiry, bool) {
	life := s.Lifetime(room.MaxLifetime)
	if life <= 0 || ev.StateKey != nil || ev.Type == "m.room.redaction" || ev.ReceivedAt == 0 {
		return Expiry{}, false
	}
	return Expiry{EventID: ev.ID, RoomID: ev.RoomID, Sender: ev.Sender, ReceivedAt: ev.ReceivedAt,
		DueAt: ev.ReceivedAt + life.Milliseconds(), OriginTS: ev.OriginTS}, true
}

// scheduleExpiries stores expiries inside the dispatcher's transaction. An
// event already scheduled (a replayed batch) keeps its row.
func scheduleExpiries(ctx context.Context, db *store.DB, tx *sql.Tx, list []Expiry) error {
	for start := 0; start < len(list); start += 100 {
		chunk := list[start:min(start+100, len(list))]
		args := make([]any, 0, 7*len(chunk))
		for _, e := range chunk {
			args = append(args, e.EventID, e.RoomID, e.Sender, e.ReceivedAt, e.DueAt, "pending", e.OriginTS)
		}
		q := store.ValuesQuery(`INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES `, 7, len(chunk),
			` ON CONFLICT (received_at, event_id) DO NOTHING`)
		if _, err := db.Exec(ctx, tx, q, args...); err != nil {
			return fmt.Errorf("schedule expiries: %w", err)
		}
	}
	return nil
}

// Pump moves expiries that have come due into the job table, oldest
// first, a page at a time (memory stays flat however many are pending), and
// parks those under a legal hold. After downtime it catches up from the
// oldest; the job runner then redacts with its concurrency and backoff.
type Pump struct {
	DB   *store.DB
	Now  appservice.Clock
	Wake func() // the job runner's
	Page int
	Log  zerolog.Logger
}

// Run pumps until ctx ends: at the next due time, or at least once a second.
func (p *Pump) Run(ctx context.Context) {
	for {
		n, err := p.Once(ctx)
		if err != nil && ctx.Err() == nil {
			p.Log.Error().Err(err).Msg("expiry pump failed; retrying")
		}
		if n == p.page() {
			continue // more due now
		}
		wait := time.Second
		var next sql.NullInt64
		if err := p.DB.R.QueryRowContext(ctx, `SELECT MIN(due_at) FROM expiry WHERE state = 'pending'`).Scan(&next); err == nil && next.Valid {
			wait = min(wait, max(time.Until(time.UnixMilli(next.Int64)), 5*time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (p *Pump) page() int {
	if p.Page <= 0 {
		return 500
	}
	return p.Page
}

// Once queues one page of due expiries and returns how many it took.
func (p *Pump) Once(ctx context.Context) (int, error) {
	now := p.Now()
	type due struct {
		id, room, sender string
		received         int64
	}
	var page []due
	rows, err := p.DB.R.QueryContext(ctx, `SELECT event_id, room_id, sender, received_at FROM expiry WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at, event_id LIMIT $2`,
		now.UnixMilli(), p.page())
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.room, &d.sender, &d.received); err != nil {
			rows.Close()
			return 0, err
		}
		page = append(page, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(page) == 0 {
		return 0, err
	}
	err = p.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		holds, err := activeHolds(ctx, p.DB, tx)
		if err != nil {
			return err
		}
		var jobs []appservice.JobSpec
		var queued, held []any
		for _, d := range page {
			if holds.rooms[d.room] || holds.users[d.sender] {
				held = append(held, d.received, d.id)
				continue
			}
			queued = append(queued, d.received, d.id)
			payload, _ := json.Marshal(appservice.ActionPayload{Room: d.room, EventID: d.id, ActAs: d.sender, Reason: reasonExpired})
			jobs = append(jobs, appservice.JobSpec{Kind: JobExpire, DedupeKey: "expire:" + d.id, Payload: payload})
		}
		for _, set := range []struct {
			state string
			ids   []any
		}{{"queued", queued}, {"held", held}} {
			if len(set.ids) == 0 {
				continue
			}
			// By the unique key only: with "state = 'pending'" too, SQLite
			// walks the (state, due_at) index instead. Only this pump moves
			// rows out of pending, so they are still pending.
			q := `UPDATE expiry SET state = '` + set.state + `' WHERE (received_at, event_id) IN (VALUES ` + expiryKeys(len(set.ids)/2) + `)`
			if _, err := tx.ExecContext(ctx, q, set.ids...); err != nil {
				return err
			}
		}
		return appservice.Enqueue(ctx, p.DB, tx, now, jobs...)
	})
	if err != nil {
		return 0, err
	}
	if p.Wake != nil {
		p.Wake()
	}
	return len(page), nil
}

// expiryKeys lists n (received_at, event_id) parameter pairs, the first cast
// so PostgreSQL compares it as a number.
func expiryKeys(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "(CAST($%d AS BIGINT), $%d)", 2*i+1, 2*i+2)
	}
	return b.String()
}

type holdSet struct{ rooms, users map[string]bool }

func activeHolds(ctx context.Context, db *store.DB, tx *sql.Tx) (holdSet, error) {
	h := holdSet{map[string]bool{}, map[string]bool{}}
	rows, err := tx.QueryContext(ctx, `SELECT room_id, user_id FROM legal_hold WHERE released_at = 0`)
	if err != nil {
		return h, err
	}
	defer rows.Close()
	for rows.Next() {
		var room, user string
		if err := rows.Scan(&room, &user); err != nil {
			return h, err
		}
		if room != "" {
			h.rooms[room] = true
		}
		if user != "" {
			h.users[user] = true
		}
	}
	return h, rows.Err()
}

// JobPurge purges a room's expired history on Synapse.
const JobPurge = "purge_history"

// expiryHandlers handle expire jobs: a redaction as the sender, like
// policy's own redactions. With purge (Synapse), each room whose messages
// expire also gets, at most once an hour, a purge of its history up to the
// newest message that has expired.
func expiryHandlers(env appservice.Env, hs Redactor, purge, asBot bool) map[string]appservice.Handler {
	bot := env.BotUser
	jobs := map[string]appservice.Handler{}
	jobs[JobExpire] = func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[appservice.ActionPayload](j)
		if err != nil {
			return err
		}
		txn := fmt.Sprintf("hipaa-job-%d", j.ID)
		err = errors.New("not tried")
		// A remote sender's message: the service cannot act as them, only
		// the bot can redact it (with the power to).
		remote := !appservice.SameServer(p.ActAs, bot)
		if asBot || remote {
			err = hs.Redact(ctx, bot, p.Room, p.EventID, p.Reason, txn)
		}
		if err != nil && !remote && (!asBot || errors.Is(err, mautrix.MForbidden)) {
			// The sender may always redact their own message.
			err = hs.Redact(ctx, p.ActAs, p.Room, p.EventID, p.Reason, txn+"-sender")
		}
		if remote && errors.Is(err, mautrix.MForbidden) {
			return appservice.Permanent(fmt.Errorf("the bot may not redact a remote member's message here: %w", err))
		}
		if err != nil || !purge {
			return err
		}
		return env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			hour := env.Now().Truncate(time.Hour)
			payload, _ := json.Marshal(appservice.ActionPayload{Room: p.Room, ActAs: bot, Reason: "expired history"})
			return appservice.Enqueue(ctx, env.DB, tx, env.Now(), appservice.JobSpec{Kind: JobPurge, DedupeKey: fmt.Sprintf("purge:%s:%d", p.Room, hour.Unix()),
				Payload: payload, DueAt: hour.Add(time.Hour)})
		})
	}
	jobs[JobPurge] = func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[appservice.ActionPayload](j)
		if err != nil {
			return err
		}
		upTo, ok, err := purgeBound(ctx, env.DB, p.Room)
		if err != nil || !ok {
			return err
		}
		return hs.PurgeHistory(ctx, p.ActAs, p.Room, upTo)
	}
	return jobs
}

// Redactor is what expiry needs of the homeserver.
type Redactor interface {
	Redact(ctx context.Context, user, room, eventID, reason, txnID string) error
	PurgeHistory(ctx context.Context, user, room string, upTo int64) error
}

// purgeBound is how far a room's history may be purged, in the homeserver's
// own timestamps (Synapse purges by them; a sender's server sets them, so
// our receive times could differ by any amount): up to (not including) the
// oldest of its messages that has not expired yet, and not at all while a
// legal hold stands on the room or on any user (a user's held messages may
// be anywhere), or while nothing in it has expired.
func purgeBound(ctx context.Context, db *store.DB, room string) (int64, bool, error) {
	var holds int
	if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM legal_hold WHERE released_at = 0 AND (room_id = $1 OR user_id <> '')`, room).Scan(&holds); err != nil {
		return 0, false, err
	}
	if holds > 0 {
		return 0, false, nil
	}
	var expired, waiting sql.NullInt64
	if err := db.R.QueryRowContext(ctx, `SELECT MAX(origin_ts) FROM expiry WHERE room_id = $1 AND state = 'queued'`, room).Scan(&expired); err != nil {
		return 0, false, err
	}
	if err := db.R.QueryRowContext(ctx, `SELECT MIN(origin_ts) FROM expiry WHERE room_id = $1 AND state IN ('pending', 'held')`, room).Scan(&waiting); err != nil {
		return 0, false, err
	}
	if !expired.Valid {
		return 0, false, nil
	}
	upTo := expired.Int64 + 1
	if waiting.Valid && waiting.Int64 < upTo {
		upTo = waiting.Int64
	}
	return upTo, upTo > 1, nil
}

// RescheduleExpiries applies a new policy to messages already waiting: a
// room whose lifetime got shorter has its pending expiries brought forward
// (received + new lifetime); a longer lifetime, or none, applies to new
// messages only, unless the room's policy says retroactive: then waiting
// messages get the new lifetime too (none: they are kept). It returns how
// many it changed.
//
// Only the policy's own lifetime is applied here. Where a room's own
// (honoured) retention makes it shorter, a room_retention job is queued
// instead: it confirms the room's state and holds a change that would end
// too many messages at once, so a policy reload is no way around that.
func RescheduleExpiries(ctx context.Context, db *store.DB, pol *policy.Policy, now time.Time) (int64, error) {
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT DISTINCT room_id FROM expiry WHERE state = 'pending' ORDER BY room_id`)
	if err != nil {
		return 0, err
	}
	type change struct {
		room        string
		lifetime    int64
		retroactive bool
	}
	var changes []change
	var confirm []appservice.JobSpec
	for rows.Next() {
		var room string
		if err := rows.Scan(&room); err != nil {
			rows.Close()
			return 0, err
		}
		r, _ := known.Get(room)
		roomMax, creator := r.MaxLifetime, r.Creator
		eff := pol.For(known.PolicyRoom(room))
		life := eff.Lifetime(0)
		if life > 0 || eff.Retroactive {
			changes = append(changes, change{room, life.Milliseconds(), eff.Retroactive})
		}
		if own := eff.Lifetime(roomMax); own > 0 && (life == 0 || own < life) {
			payload, _ := json.Marshal(appservice.ActionPayload{Room: room, ActAs: creator, Value: strconv.FormatInt(roomMax, 10)})
			confirm = append(confirm, appservice.JobSpec{Kind: JobRoomRetention, DedupeKey: "room_retention:policy:" + pol.Hash + ":" + room, Payload: payload, DryRun: eff.DryRun})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	var moved int64
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if err := appservice.Enqueue(ctx, db, tx, now, confirm...); err != nil {
			return err
		}
		for _, c := range changes {
			q := `UPDATE expiry SET due_at = received_at + $1 WHERE room_id = $2 AND state = 'pending' AND due_at > received_at + $1`
			args := []any{c.lifetime, c.room}
			switch {
			case c.retroactive && c.lifetime == 0:
				q, args = `UPDATE expiry SET state = 'cancelled' WHERE room_id = $1 AND state = 'pending'`, []any{c.room}
			case c.retroactive:
				q = `UPDATE expiry SET due_at = received_at + $1 WHERE room_id = $2 AND state = 'pending' AND due_at <> received_at + $1`
			}
			res, err := db.Exec(ctx, tx, q, args...)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			moved += n
		}
		return nil
	})
	return moved, err
}

// lifetimeText tells people a room's message lifetime, in one line.
func lifetimeText(d time.Duration) string {
	if d <= 0 {
		return "Messages in this room are no longer deleted automatically."
	}
	unit := func(n int64, one string) string {
		if n == 1 {
			return "1 " + one
		}
		return strconv.FormatInt(n, 10) + " " + one + "s"
	}
	var s string
	switch {
	case d%(24*time.Hour) == 0:
		s = unit(int64(d/(24*time.Hour)), "day")
	case d%time.Hour == 0:
		s = unit(int64(d/time.Hour), "hour")
	case d%time.Minute == 0:
		s = unit(int64(d/time.Minute), "minute")
	default:
		s = unit(int64(d.Round(time.Second)/time.Second), "second")
	}
	return "Messages in this room are deleted " + s + " after they are sent."
}

// lifetimeNotice decides whether members should be told the room's message
// lifetime: when the room is created with one, and when the room's own
// m.room.retention changes it. (Policy changes are told by NoticeLifetimeChanges.)
func lifetimeNotice(ev *appservice.Event, room *appservice.RoomInfo, s policy.Effective) (policy.Action, bool) {
	lifetime := func(roomMax int64) time.Duration { return s.Lifetime(roomMax) }
	now := lifetime(room.State.MaxLifetime)
	switch {
	case ev.Type == "m.room.create" && ev.StateKey != nil && *ev.StateKey == "" && now > 0:
	case retentionChanged(room) && lifetime(prevLifetime(room)) != now:
	default:
		return policy.Action{}, false
	}
	return policy.Action{Kind: policy.ActNotice, Rule: "retention", EventID: ev.ID, ActAs: room.State.Creator, Reason: lifetimeText(now)}, true
}
