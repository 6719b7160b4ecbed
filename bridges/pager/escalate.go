package pager

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// MaxWatchers bounds how many people one message waits on: acknowledge
// is for care-team rooms, not a hospital-wide channel.
const MaxWatchers = 50

// watchCandidate is a message in a room with read tracking, decided on;
// SaveRows finds who must read it, from the room's members as stored in
// the same transaction.
type watchCandidate struct {
	EventID, Room, Sender string
	Priority              policy.PagePriority
	Acknowledge           bool
	Role                  string // the room's first paged role: its backup is the backup
	ReceivedAt            int64
	PageAfter             time.Duration
}

// watch decides whether a message starts an escalation: in a room with
// read_tracking on, any message from a person (the bot's notices and the
// service's namespace do not).
func (f *Feature) watch(ev *appservice.Event, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	if settings.ReadTracking != policy.On || settings.DryRun {
		return
	}
	role := ""
	for _, t := range settings.Page {
		if r, ok := strings.CutPrefix(t, "role:"); ok {
			role = r
			break
		}
	}
	dec.Row(f, watchCandidate{EventID: ev.ID, Room: ev.RoomID, Sender: ev.Sender, Priority: settings.PagePriority,
		Acknowledge: settings.Acknowledge == policy.On, Role: role, ReceivedAt: ev.ReceivedAt,
		PageAfter: pol.Escalation.Times(settings.PagePriority).PageAfter.D()})
	// Where the homeserver pushes no receipts to the service (Dendrite),
	// they come from the bot's own sync: the bot must be in the room. A
	// local sender invites it, once per room.
	if f.env.Config.Homeserver.Software != "synapse" && appservice.SameServer(ev.Sender, f.env.BotUser) {
		dec.AddRecorded(appservice.ActionJob(policy.Action{Kind: policy.ActBotJoin, Rule: "read_tracking", EventID: ev.ID, ActAs: ev.Sender},
			ev.RoomID, "bot_join:read_tracking:"+ev.RoomID, ev.Type, false, pol.Hash, f.env.Chain.Keys()))
	}
}

// SaveRows starts the escalations: for a direct message (two people in
// the room) the other person; with acknowledge on, every member but the
// sender. The bot and the service's namespace are never waited on.
func (f *Feature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	members := map[string][]string{} // per room, once per batch
	for _, r := range rows {
		c, ok := r.(watchCandidate)
		if !ok {
			return fmt.Errorf("pager: a row of type %T", r)
		}
		people, seen := members[c.Room]
		if !seen {
			var err error
			if people, err = f.people(ctx, db, tx, c.Room); err != nil {
				return err
			}
			members[c.Room] = people
		}
		var readers []string
		for _, u := range people {
			if u != c.Sender {
				readers = append(readers, u)
			}
		}
		direct := len(people) == 2 && len(readers) == 1
		if !direct && !c.Acknowledge {
			continue
		}
		if len(readers) > MaxWatchers {
			readers = readers[:MaxWatchers]
		}
		for _, u := range readers {
			if _, err := db.Exec(ctx, tx, `INSERT INTO page_watch (event_id, user_id, room_id, sender, priority, role, created_at, step, next_at, state)
				VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 'waiting') ON CONFLICT DO NOTHING`,
				c.EventID, u, c.Room, c.Sender, string(c.Priority), c.Role, c.ReceivedAt, c.ReceivedAt+c.PageAfter.Milliseconds()); err != nil {
				return err
			}
		}
	}
	return nil
}

// people are the room's joined members, but the bot and the service's
// namespace, as stored in tx.
func (f *Feature) people(ctx context.Context, db *store.DB, tx *sql.Tx, room string) ([]string, error) {
	q, err := db.Query(ctx, tx, `SELECT user_id FROM room_member WHERE room_id = ? AND membership = 'join' ORDER BY user_id`, room)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	var people []string
	for q.Next() {
		var u string
		if err := q.Scan(&u); err != nil {
			return nil, err
		}
		if u != f.env.BotUser && !strings.HasPrefix(u, "@"+f.env.Config.SenderLocalpart()) {
			people = append(people, u)
		}
	}
	return people, q.Err()
}

type watchRow struct {
	EventID, User, Room, Sender, Priority, Role string
	Created                                     int64
	Step                                        int
}

// Escalate handles every escalation due at the service's clock: a message
// read since (a read receipt at or after it, or a message of the person's
// own after it) ends it; otherwise the person is paged again, or, past
// backup_after, the backup is. It returns how many it handled.
func (f *Feature) Escalate(ctx context.Context) (int, error) {
	now := f.env.Now()
	pol := f.env.Policy()
	q, err := f.env.DB.R.QueryContext(ctx, `SELECT event_id, user_id, room_id, sender, priority, role, created_at, step FROM page_watch
		WHERE state = 'waiting' AND next_at <= $1 ORDER BY next_at LIMIT 200`, now.UnixMilli())
	if err != nil {
		return 0, err
	}
	var due []watchRow
	for q.Next() {
		var w watchRow
		if err := q.Scan(&w.EventID, &w.User, &w.Room, &w.Sender, &w.Priority, &w.Role, &w.Created, &w.Step); err != nil {
			q.Close()
			return 0, err
		}
		due = append(due, w)
	}
	if err := q.Close(); err != nil {
		return 0, err
	}
	_, sched := f.files()
	keys := f.env.Chain.Keys()
	for _, w := range due {
		err := f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
			rec := &audit.Record{Type: audit.TypePage, Outcome: audit.OutcomeSuccess, Actor: keys.User(w.User), Room: keys.Room(w.Room), EventID: w.EventID}
			set := func(state string, step int, next int64) error {
				_, err := f.env.DB.Exec(ctx, tx, `UPDATE page_watch SET state = ?, step = ?, next_at = ? WHERE event_id = ? AND user_id = ? AND state = 'waiting'`,
					state, step, next, w.EventID, w.User)
				return err
			}
			read, err := f.hasRead(ctx, tx, w)
			if err != nil {
				return err
			}
			if read {
				rec.Action = "read-in-room"
				if err := set("read", w.Step, 0); err != nil {
					return err
				}
				return f.env.Chain.Append(ctx, tx, rec)
			}
			times := pol.Escalation.Times(policy.PagePriority(w.Priority))
			elapsed := now.Sub(time.UnixMilli(w.Created))
			target, step, next, state := w.User, w.Step+1, int64(0), "waiting"
			if elapsed >= times.BackupAfter.D() {
				backup := ""
				if w.Role != "" {
					backup = sched.Backup(w.Role)
				}
				if backup == "" {
					backup = pol.Escalation.Backup
				}
				if backup == "" {
					rec.Action, rec.Outcome = "unanswered", audit.OutcomeFailure
					if err := set("unanswered", w.Step, 0); err != nil {
						return err
					}
					return f.env.Chain.Append(ctx, tx, rec)
				}
				target, state = backup, "escalated"
			} else {
				// The next page, on the schedule counted from the message:
				// page_after, then every repeat; the backup's time caps it.
				next = w.Created + times.PageAfter.D().Milliseconds() + int64(step)*times.Repeat.D().Milliseconds()
				next = min(next, w.Created+times.BackupAfter.D().Milliseconds())
			}
			payload, _ := json.Marshal(pagePayload{Room: w.Room, EventID: w.EventID, Sender: w.Sender, Target: target,
				Priority: policy.PagePriority(w.Priority), Reason: "escalation", Watch: w.User})
			key := fmt.Sprintf("escalate:%s:%s:%d", w.EventID, w.User, step)
			if state == "escalated" {
				key = fmt.Sprintf("escalate:%s:%s:backup", w.EventID, w.User)
			}
			if err := appservice.Enqueue(ctx, f.env.DB, tx, now, appservice.JobSpec{Kind: JobPage, DedupeKey: key, Payload: payload}); err != nil {
				return err
			}
			rec.Action, rec.Detail = "escalated", fmt.Sprintf("step %d", step)
			if state == "escalated" {
				rec.Detail = "backup"
			}
			if err := set(state, step, next); err != nil {
				return err
			}
			return f.env.Chain.Append(ctx, tx, rec)
		})
		if err != nil {
			return 0, err
		}
	}
	if len(due) > 0 {
		f.env.Wake()
	}
	return len(due), nil
}

// hasRead: a read receipt of the person's on this message or a later one,
// or a later message of their own in the room.
func (f *Feature) hasRead(ctx context.Context, tx *sql.Tx, w watchRow) (bool, error) {
	var n int
	err := f.env.DB.QueryRow(ctx, tx, `SELECT COUNT(*) FROM inbox m WHERE m.event_id = ? AND (
		EXISTS (SELECT 1 FROM read_receipt r JOIN inbox i ON i.event_id = r.event_id WHERE r.room_id = ? AND r.user_id = ? AND i.seq >= m.seq)
		OR EXISTS (SELECT 1 FROM inbox o WHERE o.room_id = ? AND o.sender = ? AND o.seq > m.seq))`,
		w.EventID, w.Room, w.User, w.Room, w.User).Scan(&n)
	return n > 0, err
}

// escalateLoop runs Escalate when the next escalation is due: it sleeps
// until the earliest next_at, never more than a second (the shortest
// page_after a policy may set), so a watch added meanwhile is not missed.
func (f *Feature) escalateLoop(ctx context.Context) {
	for {
		if _, err := f.Escalate(ctx); err != nil && ctx.Err() == nil {
			f.env.Log.Warn().Str("error", appservice.SafeError(err)).Msg("escalation check failed; trying again")
		}
		wait := time.Second
		var next sql.NullInt64
		if err := f.env.DB.R.QueryRowContext(ctx, `SELECT MIN(next_at) FROM page_watch WHERE state = 'waiting'`).Scan(&next); err == nil && next.Valid {
			wait = min(wait, max(time.UnixMilli(next.Int64).Sub(f.env.Now()), 5*time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// accepted ends the escalation a page belongs to: the person's own Accept
// ends theirs; the backup's ends every escalation of that message.
func (f *Feature) accepted(ctx context.Context, tx *sql.Tx, p *page) error {
	if p.Watch == "" {
		return nil
	}
	q := `UPDATE page_watch SET state = 'accepted' WHERE event_id = ? AND user_id = ? AND state IN ('waiting', 'escalated')`
	args := []any{p.EventID, p.Watch}
	if p.User != p.Watch {
		q = `UPDATE page_watch SET state = 'accepted' WHERE event_id = ? AND state IN ('waiting', 'escalated')`
		args = args[:1]
	}
	_, err := f.env.DB.Exec(ctx, tx, q, args...)
	return err
}

// KeepsReceipts says whether a room's read receipts are kept: only where
// the policy in force turns read_tracking on (staff councils may object
// to read tracking; elsewhere receipts are never stored). Answers are
// cached for a few seconds per room and policy.
func (f *Feature) KeepsReceipts(room string) bool {
	pol := f.env.Policy()
	if !pol.MayTrackReads() {
		return false
	}
	now := time.Now()
	f.trackMu.Lock()
	if f.tracked == nil || f.trackedPolicy != pol.Hash {
		f.tracked, f.trackedPolicy = map[string]trackEntry{}, pol.Hash
	}
	e, ok := f.tracked[room]
	f.trackMu.Unlock()
	if ok && now.Before(e.until) {
		return e.on
	}
	kr, err := appservice.LoadKnownRoom(context.Background(), f.env.DB, room)
	on := err == nil && pol.For(kr.Policy).ReadTracking == policy.On
	f.trackMu.Lock()
	if len(f.tracked) > 100000 {
		f.tracked = map[string]trackEntry{}
	}
	f.tracked[room] = trackEntry{on: on, until: now.Add(5 * time.Second)}
	f.trackMu.Unlock()
	return on
}

type trackEntry struct {
	on    bool
	until time.Time
}
