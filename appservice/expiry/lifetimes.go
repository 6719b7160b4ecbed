package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// NoticeLifetimeChanges tells the members of every known room whose message
// lifetime a new policy changed: one notice job per room (dry-run aware,
// audited as a policy.decision), at most once per room and policy version.
func NoticeLifetimeChanges(ctx context.Context, db *store.DB, chain *audit.Chain, old, pol *policy.Policy) (int, error) {
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return 0, err
	}
	type change struct {
		room string
		a    policy.Action
		dry  bool
	}
	var todo []change
	for _, r := range known.All() {
		if r.Creator == "" {
			continue
		}
		before, after := old.For(r.Policy), pol.For(r.Policy)
		if l := after.Lifetime(r.MaxLifetime); l != before.Lifetime(r.MaxLifetime) {
			todo = append(todo, change{r.ID, policy.Action{Kind: policy.ActNotice, Rule: "retention", ActAs: r.Creator, Reason: lifetimeText(l)}, after.DryRun})
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	keys := chain.Keys()
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var jobs []appservice.JobSpec
		var recs []*audit.Record
		for _, c := range todo {
			job, rec := appservice.ActionJob(c.a, c.room, fmt.Sprintf("notice:retention:policy:%s:%s", pol.Hash, c.room), "", c.dry, pol.Hash, keys)
			jobs = append(jobs, job)
			recs = append(recs, rec)
		}
		if err := appservice.Enqueue(ctx, db, tx, chain.Now(), jobs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	return len(todo), err
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
