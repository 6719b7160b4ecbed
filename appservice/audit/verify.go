package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Result of a verification.
type Result struct {
	Records int64 // records found intact before the first break (all of them if none)
	HeadSeq int64
	// Bad is nil when the chain is intact; else the first inconsistency.
	Bad *Break
}

// Break describes the first place the chain is inconsistent.
type Break struct {
	Seq    int64 // the record at fault (or, for a gap, the first missing seq)
	Reason string
}

func (b *Break) Error() string { return fmt.Sprintf("audit record %d: %s", b.Seq, b.Reason) }

// Verify checks the whole chain: every record's MAC, that sequence numbers
// run 1, 2, 3… without gaps, that each record links to the one before it, and
// that the last record is the recorded head (so deleting records from the end
// is caught too).
//
// Each record's MAC depends only on its own columns and the stored MAC of the
// record before it, so the sequence is split into ranges checked in parallel,
// one per CPU; the first break over all ranges is reported.
func Verify(ctx context.Context, db *store.DB, keys *Keys) (Result, error) {
	// The scan allocates a little for every row (the driver copies each
	// column out of SQLite) and keeps almost none of it: collect only when
	// the heap reaches verifyHeap instead of every time it doubles.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(verifyHeap))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var res Result
	var headSeq int64
	var headMAC []byte
	var minSeq, maxSeq sql.NullInt64
	// One statement, one snapshot: the head and the last record read apart
	// would let an append in between (the running service's) look like a
	// record beyond the head.
	err := db.R.QueryRowContext(ctx, `SELECT h.seq, h.mac, (SELECT MIN(seq) FROM audit), (SELECT MAX(seq) FROM audit) FROM audit_head h WHERE h.id = 1`).
		Scan(&headSeq, &headMAC, &minSeq, &maxSeq)
	if errors.Is(err, sql.ErrNoRows) {
		headSeq, headMAC = 0, zeroMAC
		err = db.R.QueryRowContext(ctx, `SELECT MIN(seq), MAX(seq) FROM audit`).Scan(&minSeq, &maxSeq)
	}
	if err != nil {
		return res, err
	}
	res.HeadSeq = headSeq
	if minSeq.Valid && minSeq.Int64 < 1 {
		return Result{HeadSeq: headSeq, Bad: &Break{minSeq.Int64, "sequence numbers start at 1"}}, nil
	}
	end := max(headSeq, maxSeq.Int64)
	workers := int64(max(1, min(runtime.NumCPU(), 8)))
	if end < parallelFrom || db.Dialect == store.Postgres {
		// PostgreSQL's own backend does much of the work of each scan; on a
		// small machine two scans at once only fight over the cores.
		workers = 1
	}
	span := (end + workers - 1) / max(workers, 1)
	breaks := make([]*Break, workers)
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	for w := int64(0); w < workers; w++ {
		lo, hi := w*span+1, min((w+1)*span, end)
		if lo > hi {
			continue
		}
		wg.Add(1)
		go func(w, lo, hi int64) {
			defer wg.Done()
			b, err := verifyRange(ctx, db, keys, lo, hi, workers == 1)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				return
			}
			breaks[w] = b
		}(w, lo, hi)
	}
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	for _, b := range breaks {
		if b != nil && (res.Bad == nil || b.Seq < res.Bad.Seq) {
			res.Bad = b
		}
	}
	if res.Bad == nil {
		switch {
		case headSeq < maxSeq.Int64:
			res.Bad = &Break{headSeq + 1, fmt.Sprintf("not part of the chain: the head says the chain ends at %d", headSeq)}
		case headSeq > 0:
			var last []byte
			if err := db.R.QueryRowContext(ctx, `SELECT mac FROM audit WHERE seq = $1`, headSeq).Scan(&last); err != nil && !errors.Is(err, sql.ErrNoRows) {
				return res, err
			}
			if !bytes.Equal(last, headMAC) {
				res.Bad = &Break{headSeq, "does not match the recorded chain head"}
			}
		}
	}
	if res.Bad != nil {
		res.Records = res.Bad.Seq - 1
	} else {
		res.Records = end
	}
	return res, nil
}

// verifyHeap bounds the Go heap while a verification runs.
const verifyHeap = 256 << 20

// parallelFrom is the chain length from which ranges are checked in parallel
// (a variable so tests can exercise the split on small chains).
var parallelFrom int64 = 100_000

// verifyRange checks records lo..hi and returns the first break among them.
func verifyRange(ctx context.Context, db *store.DB, keys *Keys, lo, hi int64, whole bool) (*Break, error) {
	var prevBuf [sha256.Size]byte
	prev := append(prevBuf[:0], zeroMAC...)
	if lo > 1 {
		var m []byte
		err := db.R.QueryRowContext(ctx, `SELECT mac FROM audit WHERE seq = $1`, lo-1).Scan(&m)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		// A missing predecessor is reported by the range that owns it.
		prev = append(prevBuf[:0], m...)
	}
	// One goroutine scans rows into batches while this one checks MACs: the
	// driver's row decoding and HMAC then run side by side.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *batch, 4)
	free := make(chan *batch, 6)
	for i := 0; i < cap(free); i++ {
		free <- &batch{rows: make([]row, 0, verifyBatch)}
	}
	var readErr error
	go func() {
		defer close(batches)
		readErr = readRange(ctx, db, lo, hi, whole, batches, free)
	}()
	h := hmac.New(sha256.New, keys.chain)
	var want [sha256.Size]byte
	expect := lo
	var bad *Break
	for b := range batches {
		for i := 0; bad == nil && i < len(b.rows); i++ {
			r := &b.rows[i]
			switch {
			case r.seq > expect:
				bad = &Break{expect, fmt.Sprintf("missing (next record found is %d)", r.seq)}
			case r.seq < expect:
				bad = &Break{r.seq, fmt.Sprintf("out of order (follows %d)", expect-1)}
			case r.bad != "":
				bad = &Break{r.seq, r.bad}
			case !hmac.Equal(computeMAC(h, r.seq, r.ts, prev, r.rec, want[:0]), r.mac):
				bad = &Break{r.seq, "MAC does not match: the record, its time, its sequence number or the record before it was altered"}
			default:
				prev = append(prevBuf[:0], r.mac...)
				expect++
			}
		}
		b.rows, b.arena = b.rows[:0], b.arena[:0]
		if bad != nil {
			cancel()
		}
		free <- b
	}
	if bad != nil {
		return bad, nil
	}
	if readErr != nil {
		return nil, readErr
	}
	if expect <= hi {
		return &Break{expect, fmt.Sprintf("missing (no records from %d to %d)", expect, hi)}, nil
	}
	return nil, nil
}

type row struct {
	seq, ts int64
	rec     []byte
	mac     []byte
	bad     string // a column that cannot be right, whatever the MAC
}

type batch struct {
	rows  []row
	arena []byte
}

const verifyBatch = 4096

func readRange(ctx context.Context, db *store.DB, lo, hi int64, whole bool, out chan<- *batch, free <-chan *batch) error {
	q, args := `SELECT seq, ts, rec, mac FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq`, []driver.NamedValue{{Ordinal: 1, Value: lo}, {Ordinal: 2, Value: hi}}
	if whole {
		// The plain scan; PostgreSQL plans it better than a range over everything.
		q, args = `SELECT seq, ts, rec, mac FROM audit ORDER BY seq`, nil
	}
	conn, err := db.R.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if db.Dialect == store.SQLite {
		// A memory map for this scan only; the pooled connection goes back without one.
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA mmap_size = %d", store.ScanMmapBytes)); err != nil {
			return err
		}
		defer conn.ExecContext(context.Background(), "PRAGMA mmap_size = 0")
	}
	// Rows are read through the driver itself: database/sql's per-row Scan
	// (locking, reflection, conversion) cost as much as SQLite's own step.
	return conn.Raw(func(dc any) error {
		if pc, ok := dc.(*stdlib.Conn); ok {
			return scanRows(ctx, pgRows(ctx, pc.Conn().PgConn(), q, args), out, free)
		}
		qc, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("audit verify: driver %T cannot query", dc)
		}
		rows, err := qc.QueryContext(ctx, q, args)
		if err != nil {
			return err
		}
		defer rows.Close()
		return scanRows(ctx, rows, out, free)
	})
}

// pgResult reads PostgreSQL's rows in binary straight off the wire: pgx's
// own conversion of each value (a type lookup and a copy per column) cost
// more than the scan itself. Values stay valid until the next row, which is
// all scanRows needs.
type pgResult struct{ rr *pgconn.ResultReader }

func pgRows(ctx context.Context, c *pgconn.PgConn, q string, args []driver.NamedValue) *pgResult {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(fmt.Sprint(a.Value))
	}
	return &pgResult{c.ExecParams(ctx, q, params, nil, nil, []int16{1, 1, 1, 1})}
}

func (p *pgResult) Columns() []string { return []string{"seq", "ts", "rec", "mac"} }
func (p *pgResult) Close() error      { _, err := p.rr.Close(); return err }

func (p *pgResult) Next(dest []driver.Value) error {
	if !p.rr.NextRow() {
		if _, err := p.rr.Close(); err != nil {
			return err
		}
		return io.EOF
	}
	v := p.rr.Values()
	for i := range dest {
		dest[i] = nil
	}
	if len(v[0]) != 8 {
		return fmt.Errorf("audit verify: sequence number of %d bytes", len(v[0]))
	}
	dest[0] = int64(binary.BigEndian.Uint64(v[0]))
	if len(v[1]) == 8 {
		dest[1] = int64(binary.BigEndian.Uint64(v[1]))
	}
	dest[2], dest[3] = v[2], v[3]
	return nil
}

// asBytes is a column value as bytes (nil for NULL or a non-text value).
func asBytes(v driver.Value) []byte {
	switch x := v.(type) {
	case []byte:
		return x
	case string:
		return []byte(x)
	}
	return nil
}

// scanRows moves rows into batches, copying their bytes into each batch's
// arena (a driver may reuse its buffers between rows).
func scanRows(ctx context.Context, rows driver.Rows, out chan<- *batch, free <-chan *batch) error {
	b := <-free
	send := func() bool {
		// Slices into the arena are taken only now, after it stopped growing.
		off := 0
		for i := range b.rows {
			r := &b.rows[i]
			lr, lm := len(r.rec), len(r.mac)
			r.rec = b.arena[off : off+lr : off+lr]
			off += lr
			r.mac = b.arena[off : off+lm : off+lm]
			off += lm
		}
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	dest := make([]driver.Value, 4)
	for {
		err := rows.Next(dest)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		var r row
		var ok bool
		if r.seq, ok = dest[0].(int64); !ok {
			return fmt.Errorf("audit verify: sequence number of type %T", dest[0])
		}
		if r.ts, ok = dest[1].(int64); !ok {
			r.bad = "its time is not a number: the record was altered"
		}
		// Whatever a column holds is checked as bytes: an edit that turned a
		// BLOB into TEXT (SQLite's replace() does) is a broken MAC, not an error.
		rec, mac := asBytes(dest[2]), asBytes(dest[3])
		b.arena = append(b.arena, rec...)
		b.arena = append(b.arena, mac...)
		// Lengths only for now; send() points them into the final arena.
		r.rec = rec[:len(rec):len(rec)]
		r.mac = mac[:len(mac):len(mac)]
		b.rows = append(b.rows, r)
		if len(b.rows) == verifyBatch {
			if !send() {
				return ctx.Err()
			}
			select {
			case b = <-free:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if len(b.rows) > 0 && !send() {
		return ctx.Err()
	}
	return nil
}
