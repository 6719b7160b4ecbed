package appservice

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"github.com/tidwall/gjson"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Decision is what policy made of one event: jobs to run, records to add
// to the audit trail and features' own rows. All are committed with the
// dispatcher's progress, in one transaction.
type Decision struct {
	Jobs    []JobSpec
	Records []*audit.Record
	rows    []featureRow
}

// featureRow is a row a feature's RowSaver writes.
type featureRow struct {
	saver RowSaver
	v     any
}

// Add puts a job in the decision.
func (d *Decision) Add(job JobSpec) { d.Jobs = append(d.Jobs, job) }

// AddRecorded puts a job and the audit record of deciding it in the decision.
func (d *Decision) AddRecorded(job JobSpec, rec *audit.Record) {
	d.Jobs = append(d.Jobs, job)
	d.Records = append(d.Records, rec)
}

// Row puts one of a feature's own rows in the decision: s saves it, with
// the others of the batch, in the dispatcher's transaction.
func (d *Decision) Row(s RowSaver, v any) { d.rows = append(d.rows, featureRow{s, v}) }

// saveRows has each RowSaver write its rows, savers in the order first seen.
func saveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []featureRow) error {
	for len(rows) > 0 {
		s := rows[0].saver
		var mine []any
		rest := rows[:0:0]
		for _, r := range rows {
			if r.saver == s {
				mine = append(mine, r.v)
			} else {
				rest = append(rest, r)
			}
		}
		if err := s.SaveRows(ctx, db, tx, mine); err != nil {
			return err
		}
		rows = rest
	}
	return nil
}

// Decider turns a stored event into a decision, given the state of its room
// as of that event. It must be pure: no I/O, so a crash between deciding and
// committing simply decides again.
type Decider interface {
	Decide(ev *Event, room *RoomInfo) Decision
}

// NoPolicy decides nothing; events are only audited on receipt.
type NoPolicy struct{}

func (NoPolicy) Decide(*Event, *RoomInfo) Decision { return Decision{} }

// Dispatcher walks the inbox in order, asks the Decider about each event and
// commits the resulting jobs, audit records and its own cursor together.
type Dispatcher struct {
	db      *store.DB
	chain   *audit.Chain
	decider Decider
	metrics *Metrics
	log     zerolog.Logger
	wakeJob func()
	batch   int
	rooms   roomCache
}

func NewDispatcher(db *store.DB, chain *audit.Chain, d Decider, m *Metrics, log zerolog.Logger, wakeJobs func()) *Dispatcher {
	return &Dispatcher{db: db, chain: chain, decider: d, metrics: m, log: log, wakeJob: wakeJobs, batch: 500}
}

// coalesce is the least time between dispatch commits. Under a stream of
// small transactions it lets one commit carry many events instead of
// competing with ingest for the writer on every one; it adds at most this
// much to the time before policy acts.
const coalesce = 5 * time.Millisecond

// Run dispatches until ctx ends, waking on notify and at least once a second.
func (d *Dispatcher) Run(ctx context.Context, notify <-chan struct{}) {
	var last time.Time
	for {
		if wait := coalesce - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		n, err := d.DispatchBatch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Error().Err(err).Msg("dispatch failed; retrying")
		}
		if n > 0 && err == nil {
			continue
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-notify:
		case <-t.C:
		}
		t.Stop()
	}
}

// DispatchBatch processes up to one batch of undispatched events and returns
// how many it processed.
func (d *Dispatcher) DispatchBatch(ctx context.Context) (int, error) {
	var cursor int64
	if err := d.db.R.QueryRowContext(ctx, `SELECT seq FROM dispatch_cursor WHERE id = 1`).Scan(&cursor); err != nil {
		return 0, fmt.Errorf("read dispatch cursor: %w", err)
	}
	rows, err := d.db.R.QueryContext(ctx, `SELECT seq, event_id, room_id, event_type, sender, received_at, origin_ts, content FROM inbox
		WHERE seq > $1 ORDER BY seq LIMIT $2`, cursor, d.batch)
	if err != nil {
		return 0, err
	}
	var events []*Event
	var last int64
	for rows.Next() {
		e := &Event{}
		var raw []byte
		if err := rows.Scan(&last, &e.ID, &e.RoomID, &e.Type, &e.Sender, &e.ReceivedAt, &e.OriginTS, &raw); err != nil {
			rows.Close()
			return 0, err
		}
		e.Raw = raw
		if len(raw) > 0 {
			// The stored JSON has the fields not kept in columns (state key, membership).
			if full, rej := parseEvent(gjson.ParseBytes(raw), 0); rej == nil {
				e.StateKey, e.Content = full.StateKey, full.Content
			}
		}
		events = append(events, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(events) == 0 {
		d.metrics.InboxLag.Set(0)
		return 0, nil
	}
	roomIDs := make([]string, len(events))
	for i, e := range events {
		roomIDs[i] = e.RoomID
	}
	rooms, err := d.rooms.load(ctx, d.db, roomIDs)
	if err != nil {
		return 0, fmt.Errorf("load room state: %w", err)
	}
	var jobs []JobSpec
	var recs []*audit.Record
	var featureRows []featureRow
	var members []memberChange
	for _, e := range events {
		if m := MembershipOf(e); m != "" {
			members = append(members, memberChange{e.RoomID, *e.StateKey, m})
		}
		room := rooms[e.RoomID]
		room.Apply(e)
		dec := d.decider.Decide(e, room)
		if room.fresh {
			room.fresh, room.dirty = false, true // known from now on
		}
		jobs = append(jobs, dec.Jobs...)
		recs = append(recs, dec.Records...)
		featureRows = append(featureRows, dec.rows...)
	}
	err = d.db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		if err := saveRooms(ctx, d.db, tx, rooms, d.chain.Now()); err != nil {
			d.rooms.forget()
			return fmt.Errorf("save room state: %w", err)
		}
		if err := saveMembers(ctx, d.db, tx, members, d.chain.Now()); err != nil {
			return fmt.Errorf("save memberships: %w", err)
		}
		if err := Enqueue(ctx, d.db, tx, d.chain.Now(), jobs...); err != nil {
			return err
		}
		if err := saveRows(ctx, d.db, tx, featureRows); err != nil {
			return err
		}
		if err := d.chain.Append(ctx, tx, recs...); err != nil {
			d.metrics.AuditFailures.Inc()
			return err
		}
		// Compare-and-set keeps two dispatchers (a mistake) from double-processing.
		res, err := tx.ExecContext(ctx, `UPDATE dispatch_cursor SET seq = $1 WHERE id = 1 AND seq = $2`, last, cursor)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("dispatch cursor moved under us: is another matrix-hipaa running on this database?")
		}
		// Bodies are only needed until policy has seen them.
		_, err = tx.ExecContext(ctx, `UPDATE inbox SET content = NULL WHERE seq > $1 AND seq <= $2 AND content IS NOT NULL`, cursor, last)
		return err
	})
	if err != nil {
		// What was applied to the cached rooms did not commit.
		d.rooms.forget()
		return 0, err
	}
	d.metrics.AuditRecords.Add(float64(len(recs)))
	d.metrics.Dispatched.Add(float64(len(events)))
	d.metrics.LastDispatched.SetToCurrentTime()
	if len(jobs) > 0 && d.wakeJob != nil {
		d.wakeJob()
	}
	return len(events), nil
}

func (d *Dispatcher) updateLag(ctx context.Context) {
	var lag int64
	if err := d.db.R.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) - (SELECT seq FROM dispatch_cursor WHERE id = 1) FROM inbox`).Scan(&lag); err == nil {
		d.metrics.InboxLag.Set(float64(max(lag, 0)))
	}
}
