package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/rs/zerolog"
)

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
