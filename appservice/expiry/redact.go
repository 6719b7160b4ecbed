package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"maunium.net/go/mautrix"
)

// JobPurge purges a room's expired history on Synapse.
const JobPurge = "purge_history"

// expiryHandlers handle expire jobs: a redaction as the sender, like
// policy's own redactions. With purge (Synapse), each room whose messages
// expire also gets, at most once an hour, a purge of its history up to the
// newest message that has expired: at most once a purge interval
// (homeserver.purge_interval).
func expiryHandlers(env appservice.Env, hs Redactor, purge, asBot bool) map[string]appservice.Handler {
	every := env.Config.Homeserver.PurgeInterval.D()
	if every <= 0 {
		every = time.Hour
	}
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
			slot := env.Now().Truncate(every)
			payload, _ := json.Marshal(appservice.ActionPayload{Room: p.Room, ActAs: bot, Reason: "expired history"})
			return appservice.Enqueue(ctx, env.DB, tx, env.Now(), appservice.JobSpec{Kind: JobPurge, DedupeKey: fmt.Sprintf("purge:%s:%d", p.Room, slot.Unix()),
				Payload: payload, DueAt: slot.Add(every)})
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
		err = hs.PurgeHistory(ctx, p.ActAs, p.Room, upTo)
		switch {
		case errors.Is(err, homeserver.ErrNothingToPurge):
			return nil
		case errors.Is(err, homeserver.ErrPurgeFailed):
			// Synapse says why; trying the same purge again would fail the
			// same way. A later expiry queues the next one.
			return appservice.Permanent(err)
		}
		return err
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
