package appservice

import (
	"context"
	"database/sql"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Metadata the service keeps, and for how long. Every event leaves an inbox
// row (IDs, room, sender, type: no content) and most leave done jobs and
// expiry rows. They serve four things, and are dropped once they serve none:
//
//   - dedupe: an event is stored and decided once. A homeserver retries a
//     transaction until it is acknowledged, never after, so a row older than
//     the keep window (jobs.keep_metadata, at least a day) cannot meet its
//     event again.
//   - wipes: a wipe redacts the messages a user sent, found in the inbox. A
//     message row is kept as long as its message exists: for good in a room
//     where messages do not expire, until it has been redacted on expiry
//     otherwise. A message under a legal hold has not expired, so it stays.
//   - holds: a hold keeps expiry rows in state held; those are never pruned.
//   - dedupe of decisions that are not about one event (encryption sweeps,
//     lifetime notices and retention confirmations per policy version, room
//     discovery, device warnings): those done jobs are kept. Only done jobs
//     whose key names one event, one notice window, one purge hour or one
//     wipe are pruned.
const pruneBatch = 5000

// prunableJob is the SQL condition for a done job that is only a dedupe
// marker for one event or one window.
const prunableJob = `(dedupe_key LIKE '%$%' OR dedupe_key LIKE 'purge:%' OR dedupe_key LIKE 'wipe:%' OR dedupe_key LIKE 'wipe-report:%'
	OR (kind = 'notice' AND dedupe_key NOT LIKE 'notice:retention:policy:%'))`

// Pruned counts what one pass removed: inbox rows of events that were not
// messages, expired messages (their inbox and expiry rows), done jobs.
type Pruned struct{ Inbox, Expiry, Jobs int64 }

// PruneMetadata removes what no guarantee needs any more from before cutoff,
// in batches of short transactions, and records the pass in the audit trail
// if it removed anything.
func PruneMetadata(ctx context.Context, db *store.DB, chain *audit.Chain, cutoff time.Time) (Pruned, error) {
	var p Pruned
	cut := cutoff.UnixMilli()
	for _, step := range []struct {
		run   func(context.Context, *sql.Tx, int64) (int64, bool, error)
		count *int64
	}{{pruneInbox, &p.Inbox}, {pruneExpired, &p.Expiry}, {pruneJobs, &p.Jobs}} {
		for {
			var n int64
			var more bool
			err := db.Tx(ctx, store.Deferred, func(tx *sql.Tx) (err error) {
				n, more, err = step.run(ctx, tx, cut)
				return err
			})
			if err != nil {
				return p, err
			}
			*step.count += n
			if !more {
				break
			}
			if err := ctx.Err(); err != nil {
				return p, err
			}
		}
	}
	if p.Inbox+p.Expiry+p.Jobs == 0 {
		return p, nil
	}
	return p, chain.AppendTx(ctx, db, &audit.Record{Type: audit.TypeMaintenance, Outcome: audit.OutcomeSuccess, Action: "prune",
		Count: p.Inbox + p.Expiry + p.Jobs})
}

// pruneInbox walks the dispatched inbox from its cursor up to cutoff and
// drops rows of events that are not messages; message rows are left (a wipe
// may need them; pruneExpired takes those whose message expired).
func pruneInbox(ctx context.Context, tx *sql.Tx, cut int64) (int64, bool, error) {
	var from, upto int64
	if err := tx.QueryRowContext(ctx, `SELECT p.seq, d.seq FROM prune_cursor p, dispatch_cursor d WHERE p.id = 1 AND d.id = 1`).Scan(&from, &upto); err != nil {
		return 0, false, err
	}
	// The walk stops at the first row inside the window: seq is commit
	// order, and rows after it are newer (a clock step back aside, which
	// only delays their turn).
	rows, err := tx.QueryContext(ctx, `SELECT seq, received_at FROM inbox WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3`, from, upto, pruneBatch)
	if err != nil {
		return 0, false, err
	}
	last, walked, stopped := from, 0, false
	for rows.Next() {
		var seq, at int64
		if err := rows.Scan(&seq, &at); err != nil {
			rows.Close()
			return 0, false, err
		}
		if at >= cut {
			stopped = true
			break
		}
		last, walked = seq, walked+1
	}
	rows.Close()
	if err := rows.Err(); err != nil || last == from {
		return 0, false, err
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM inbox WHERE seq > $1 AND seq <= $2 AND event_type NOT IN ('m.room.message', 'm.room.encrypted', 'm.sticker')`, from, last)
	if err != nil {
		return 0, false, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE prune_cursor SET seq = $1 WHERE id = 1`, last); err != nil {
		return 0, false, err
	}
	n, err := res.RowsAffected()
	return n, walked == pruneBatch && !stopped, err
}

// pruneExpired drops the expiry rows, and the inbox rows, of messages
// redacted on expiry before cutoff: their expire job is done (or pruned),
// so the message no longer exists for a wipe to redact.
func pruneExpired(ctx context.Context, tx *sql.Tx, cut int64) (int64, bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT e.origin_ts, e.received_at, e.event_id FROM expiry e WHERE e.state = 'queued' AND e.due_at < $1
		AND NOT EXISTS (SELECT 1 FROM job j WHERE j.dedupe_key = 'expire:' || e.event_id AND j.state <> 'done') LIMIT $2`, cut, pruneBatch)
	if err != nil {
		return 0, false, err
	}
	type key struct {
		origin, received int64
		id               string
	}
	var keys []key
	for rows.Next() {
		var k key
		if err := rows.Scan(&k.origin, &k.received, &k.id); err != nil {
			rows.Close()
			return 0, false, err
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, false, err
	}
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, `DELETE FROM inbox WHERE origin_ts = $1 AND event_id = $2`, k.origin, k.id); err != nil {
			return 0, false, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM expiry WHERE received_at = $1 AND event_id = $2`, k.received, k.id); err != nil {
			return 0, false, err
		}
	}
	return int64(len(keys)), len(keys) == pruneBatch, nil
}

// pruneJobs drops done jobs from before cutoff that only mark one event or
// one window as handled.
func pruneJobs(ctx context.Context, tx *sql.Tx, cut int64) (int64, bool, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM job WHERE id IN (SELECT id FROM job WHERE state = 'done' AND due_at < $1 AND updated_at < $1 AND `+
		prunableJob+` LIMIT $2)`, cut, pruneBatch)
	if err != nil {
		return 0, false, err
	}
	n, err := res.RowsAffected()
	return n, n == pruneBatch, err
}

// RunPruner prunes every interval, keeping keep's worth of metadata.
func RunPruner(ctx context.Context, db *store.DB, chain *audit.Chain, keep, interval time.Duration, log zerolog.Logger) {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p, err := PruneMetadata(ctx, db, chain, chain.Now().Add(-keep))
		if err != nil && ctx.Err() == nil {
			log.Warn().Str("error", SafeError(err)).Msg("pruning old metadata failed; trying again later")
		} else if p.Inbox+p.Expiry+p.Jobs > 0 {
			log.Info().Int64("inbox", p.Inbox).Int64("expiry", p.Expiry).Int64("jobs", p.Jobs).Msg("pruned metadata no guarantee needs any more")
		}
		t.Reset(interval)
	}
}
