package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Stored is a record as the chain holds it, with its link to the one before:
// what exporters deliver.
type Stored struct {
	Seq     int64
	TS      int64 // unix ms
	Rec     []byte
	PrevMAC []byte
	MAC     []byte
}

// Time is the record's time.
func (s *Stored) Time() time.Time { return time.UnixMilli(s.TS).UTC() }

// Fields decodes the record's fields.
func (s *Stored) Fields() (Record, error) {
	var j recordJSON
	if !decodeCompact(s.Rec, &j) {
		j = recordJSON{}
		if err := json.Unmarshal(s.Rec, &j); err != nil {
			return Record{}, fmt.Errorf("audit record %d: %w", s.Seq, err)
		}
	}
	return Record{Seq: s.Seq, Time: s.Time(), MAC: s.MAC, Type: j.Type, Outcome: j.Outcome, Actor: j.Actor, Room: j.Room,
		EventID: j.EventID, EventType: j.EventType, Detail: j.Detail, Action: j.Action, JobID: j.JobID,
		PolicyVersion: j.PolicyVersion, Count: j.Count, SignedSeq: j.SignedSeq, SignedMAC: j.SignedMAC,
		Signature: j.Signature, KeyID: j.KeyID}, nil
}

// ReadAfter returns up to limit records with seq > after, in order, each
// with the MAC of the record before it.
func ReadAfter(ctx context.Context, db *store.DB, after int64, limit int) ([]Stored, error) {
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, rec, mac FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Stored
	for rows.Next() {
		var s Stored
		if err := rows.Scan(&s.Seq, &s.TS, &s.Rec, &s.MAC); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil || len(out) == 0 {
		return nil, err
	}
	prev, err := macOf(ctx, db, out[0].Seq-1)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].PrevMAC = prev
		prev = out[i].MAC
	}
	return out, nil
}

// Sink is one exporter's destination. Deliver must not return until the
// records are as safe as the destination can make them (fsynced, written to
// the connection); the cursor moves past them only then, so delivery is at
// least once.
type Sink interface {
	Deliver(ctx context.Context, recs []Stored) error
	Close() error
}

// Rewinder is a Sink that may have lost records it reported delivered (a
// stream connection that broke with data still in flight): after a failure,
// Rewind says from which seq to deliver again.
type Rewinder interface {
	Rewind() (fromSeq int64, ok bool)
}

// ExportStats receives each exporter's progress (for metrics).
type ExportStats interface {
	Delivered(exporter string, n int)
	Failed(exporter string)
	Lag(exporter string, records int64)
}

// Exporter tails the chain into one sink, with its own persisted cursor.
type Exporter struct {
	Name  string
	Sink  Sink
	DB    *store.DB
	Stats ExportStats
	// OnError is told of delivery failures (the error text names no record content).
	OnError func(name string, err error)
	Batch   int
	Poll    time.Duration
	MaxWait time.Duration // longest backoff after failures
}

// Cursor is the last seq the exporter delivered.
func Cursor(ctx context.Context, db *store.DB, name string) (int64, error) {
	var seq int64
	err := db.R.QueryRowContext(ctx, `SELECT seq FROM audit_export_cursor WHERE name = $1`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, err
}

func setCursor(ctx context.Context, db *store.DB, name string, seq int64, now time.Time) error {
	return db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		_, err := db.Exec(ctx, tx, `INSERT INTO audit_export_cursor (name, seq, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at`, name, seq, now.UnixMilli())
		return err
	})
}

// Run delivers until ctx ends. A failed delivery is retried with backoff
// (from the sink's rewind point, if it has one) until it succeeds: records
// are never skipped. Losing the cursor's last update (a crash) delivers a
// batch again, never loses one.
func (e *Exporter) Run(ctx context.Context) {
	batch, poll, maxWait := max(e.Batch, 1), e.Poll, e.MaxWait
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	if maxWait <= 0 {
		maxWait = time.Minute
	}
	defer e.Sink.Close()
	cursor, err := Cursor(ctx, e.DB, e.Name)
	for err != nil {
		e.fail(err)
		if !sleep(ctx, poll) {
			return
		}
		cursor, err = Cursor(ctx, e.DB, e.Name)
	}
	wait := min(time.Second, maxWait)
	for ctx.Err() == nil {
		recs, err := ReadAfter(ctx, e.DB, cursor, batch)
		if err == nil && len(recs) > 0 {
			err = e.Sink.Deliver(ctx, recs)
			if err == nil {
				cursor = recs[len(recs)-1].Seq
				if cerr := setCursor(ctx, e.DB, e.Name, cursor, time.Now()); cerr != nil && ctx.Err() == nil {
					e.fail(fmt.Errorf("save cursor: %w", cerr))
				}
				e.Stats.Delivered(e.Name, len(recs))
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.fail(err)
			if rw, ok := e.Sink.(Rewinder); ok {
				if from, ok := rw.Rewind(); ok && from-1 < cursor {
					cursor = max(from-1, 0)
				}
			}
			if !sleep(ctx, wait) {
				return
			}
			wait = min(wait*2, maxWait)
			continue
		}
		wait = min(time.Second, maxWait)
		e.reportLag(ctx, cursor)
		if len(recs) < batch && !sleep(ctx, poll) {
			return
		}
	}
}

func (e *Exporter) fail(err error) {
	e.Stats.Failed(e.Name)
	if e.OnError != nil {
		e.OnError(e.Name, err)
	}
}

func (e *Exporter) reportLag(ctx context.Context, cursor int64) {
	var head int64
	if err := e.DB.R.QueryRowContext(ctx, `SELECT seq FROM audit_head WHERE id = 1`).Scan(&head); err == nil {
		e.Stats.Lag(e.Name, max(head-cursor, 0))
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// RunExporters runs each exporter in its own goroutine and waits for all.
func RunExporters(ctx context.Context, exporters []*Exporter) {
	var wg sync.WaitGroup
	for _, e := range exporters {
		wg.Add(1)
		go func(e *Exporter) { defer wg.Done(); e.Run(ctx) }(e)
	}
	wg.Wait()
}

// AppendJSONLine appends the record as one JSON line: its stored fields plus
// seq, time, prev_mac and mac, so the chain can be re-checked from it.
func AppendJSONLine(line []byte, s *Stored) ([]byte, error) {
	rec := s.Rec
	if len(rec) < 2 || rec[0] != '{' || rec[len(rec)-1] != '}' {
		return line, fmt.Errorf("audit record %d is not a JSON object: run audit verify", s.Seq)
	}
	line = append(line, `{"seq":`...)
	line = strconv.AppendInt(line, s.Seq, 10)
	line = append(line, `,"time":"`...)
	line = s.Time().AppendFormat(line, "2006-01-02T15:04:05.000Z07:00")
	line = append(line, `",`...)
	line = append(line, rec[1:len(rec)-1]...)
	line = append(line, `,"prev_mac":"`...)
	line = appendHex(line, s.PrevMAC)
	line = append(line, `","mac":"`...)
	line = appendHex(line, s.MAC)
	return append(line, "\"}\n"...), nil
}

func appendHex(dst, src []byte) []byte {
	for _, b := range src {
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0xf])
	}
	return dst
}
