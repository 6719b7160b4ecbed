package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobRoomRetention applies a room's own, shorter m.room.retention to the
// messages already waiting in it. New messages take the new lifetime at
// once; the waiting ones only once the room's current state confirms the
// change (an event the homeserver soft-failed, or that state resolution or
// a redaction has since undone, changes nothing), and, where it would end
// more of them at once than retention_change_limit, only after
// policy.RetentionChangeDelay: a room admin must not be able to wipe a
// room's history with one state event.
const JobRoomRetention = "room_retention"

// retentionChangeJob queues JobRoomRetention when ev, a room's own
// m.room.retention, makes its messages' lifetime shorter than the policy's
// own. (Not only when shorter than the room's last value: that may have
// been one the homeserver never confirmed. The job moves only what is
// still due later, so a repeat changes nothing.)
func retentionChangeJob(ev *appservice.Event, room *appservice.RoomInfo, s policy.Effective) (appservice.JobSpec, bool) {
	if (ev.Type != "m.room.retention" && ev.Type != "m.room.redaction") || !retentionChanged(room) {
		return appservice.JobSpec{}, false
	}
	own, after := s.Lifetime(0), s.Lifetime(room.State.MaxLifetime)
	undo := ev.Type == "m.room.redaction" // the retention event redacted: MaxLifetime is 0 again
	if !undo && (after <= 0 || (own > 0 && after >= own)) {
		return appservice.JobSpec{}, false
	}
	payload, _ := json.Marshal(appservice.ActionPayload{Room: ev.RoomID, EventID: ev.ID, ActAs: ev.Sender, Value: strconv.FormatInt(room.State.MaxLifetime, 10), Since: ev.ReceivedAt})
	return appservice.JobSpec{Kind: JobRoomRetention, DedupeKey: "room_retention:" + ev.ID, Payload: payload, DryRun: s.DryRun}, true
}

// RetentionStateReader reads a room's current state event.
type RetentionStateReader interface {
	StateContent(ctx context.Context, user, room, eventType, stateKey string) (map[string]any, error)
}

// roomRetentionHandler handles room_retention jobs. Each outcome is a
// policy.decision record (action retention_change): not-confirmed (denied),
// held (with how many messages it would end at once), applied or confirmed
// (with how many it brought forward).
func roomRetentionHandler(env appservice.Env, hs RetentionStateReader) appservice.Handler {
	pol, m, bot := env.Policy, env.Metrics, env.BotUser
	return func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[appservice.ActionPayload](j)
		if err != nil {
			return err
		}
		want, err := strconv.ParseInt(p.Value, 10, 64)
		if err != nil {
			return appservice.Permanent(fmt.Errorf("bad job payload: %w", err))
		}
		room, err := appservice.LoadKnownRoom(ctx, env.DB, p.Room)
		if err != nil {
			return err
		}
		content, err := appservice.FirstAllowed(appservice.LocalActors(bot, room.Creator, p.ActAs), func(u string) (map[string]any, error) {
			return hs.StateContent(ctx, u, p.Room, "m.room.retention", "")
		})
		var confirmed int64
		switch {
		case err == nil:
			if v, ok := content["max_lifetime"].(float64); ok && v > 0 {
				confirmed = policy.RoomLifetimeMs(v)
			}
		case errors.Is(err, mautrix.MNotFound):
		case errors.Is(err, mautrix.MForbidden):
			confirmed = -1 // nobody the service can act as may read it: unconfirmed
		default:
			return err
		}
		cur := pol()
		keys := env.Chain.Keys()
		rec := &audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, Room: keys.Room(p.Room), EventID: p.EventID,
			EventType: "m.room.retention", Action: "retention_change", PolicyVersion: cur.Hash}
		eff := cur.For(room.Policy)
		if confirmed != want {
			// Soft-failed, resolved away or redacted: undo what the change
			// did to the messages received since, which took its lifetime.
			// They get what the room's current state gives.
			rec.Outcome, rec.Detail = audit.OutcomeDenied, "not-confirmed"
			life := eff.Lifetime(max(confirmed, 0)).Milliseconds()
			return env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
				q, args := `UPDATE expiry SET due_at = received_at + $1 WHERE room_id = $2 AND state = 'pending' AND received_at >= $3`, []any{life, p.Room, p.Since}
				if life <= 0 {
					q, args = `UPDATE expiry SET state = 'cancelled' WHERE room_id = $1 AND state = 'pending' AND received_at >= $2`, []any{p.Room, p.Since}
				}
				res, err := env.DB.Exec(ctx, tx, q, args...)
				if err != nil {
					return err
				}
				rec.Count, _ = res.RowsAffected()
				return env.Chain.Append(ctx, tx, rec)
			})
		}
		life := eff.Lifetime(want).Milliseconds()
		if want == 0 {
			// The room's retention is gone (its event redacted): every
			// waiting message gets the policy's lifetime back.
			rec.Detail = "undone"
			return env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
				q, args := `UPDATE expiry SET due_at = received_at + $1 WHERE room_id = $2 AND state = 'pending' AND due_at < received_at + $1`, []any{life, p.Room}
				if life <= 0 {
					q, args = `UPDATE expiry SET state = 'cancelled' WHERE room_id = $1 AND state = 'pending'`, []any{p.Room}
				}
				res, err := env.DB.Exec(ctx, tx, q, args...)
				if err != nil {
					return err
				}
				rec.Count, _ = res.RowsAffected()
				return env.Chain.Append(ctx, tx, rec)
			})
		}
		if life <= 0 {
			return nil
		}
		at := env.Now()
		var atOnce int64
		if err := env.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM expiry WHERE room_id = $1 AND state = 'pending' AND received_at + $2 <= $3 AND due_at > $3`,
			p.Room, life, at.UnixMilli()).Scan(&atOnce); err != nil {
			return err
		}
		over := atOnce > int64(cur.ChangeLimit())
		if wait := policy.RetentionChangeDelay - at.Sub(j.Created); over && wait > 0 {
			rec.Outcome, rec.Detail, rec.Count = audit.OutcomeDenied, "held", atOnce
			if err := env.Chain.AppendTx(ctx, env.DB, rec); err != nil {
				return err
			}
			m.RetentionHeld.Inc()
			return appservice.RetryLater(wait, fmt.Errorf("held: would end %d messages at once", atOnce))
		}
		rec.Detail = "applied"
		if over {
			rec.Detail = "confirmed" // held, waited, and the room still says so
		}
		return env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			res, err := env.DB.Exec(ctx, tx, `UPDATE expiry SET due_at = received_at + $1 WHERE room_id = $2 AND state = 'pending' AND due_at > received_at + $1`, life, p.Room)
			if err != nil {
				return err
			}
			rec.Count, _ = res.RowsAffected()
			return env.Chain.Append(ctx, tx, rec)
		})
	}
}

func retentionChanged(room *appservice.RoomInfo) bool { _, ok := room.RetentionChanged(); return ok }

func prevLifetime(room *appservice.RoomInfo) int64 { prev, _ := room.RetentionChanged(); return prev }
