package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Result of a verification.
type Result struct {
	Records int64 // records checked
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

type row struct {
	seq, ts int64
	rec     []byte
	mac     []byte
}

type batch struct {
	rows  []row
	arena []byte
}

const verifyBatch = 4096

// Verify reads the whole chain in order and checks every record's MAC, that
// sequence numbers run 1, 2, 3… without gaps, that each record links to the
// one before it, and that the last record is the recorded head (so deleting
// records from the end is caught too). Reading and MAC checking overlap.
func Verify(ctx context.Context, db *store.DB, keys *Keys) (Result, error) {
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
		readErr = readChain(ctx, db, batches, free)
	}()

	var res Result
	h := hmac.New(sha256.New, keys.chain)
	var prevBuf [sha256.Size]byte
	prev := append(prevBuf[:0], zeroMAC...)
	prevSeq := int64(0)
	var want [sha256.Size]byte
	for b := range batches {
		if res.Bad == nil {
			for i := range b.rows {
				r := &b.rows[i]
				switch {
				case r.seq != prevSeq+1:
					if r.seq > prevSeq+1 {
						res.Bad = &Break{prevSeq + 1, fmt.Sprintf("missing (next record found is %d)", r.seq)}
					} else {
						res.Bad = &Break{r.seq, fmt.Sprintf("out of order (follows %d)", prevSeq)}
					}
				case !hmac.Equal(computeMAC(h, r.seq, r.ts, prev, r.rec, want[:0]), r.mac):
					res.Bad = &Break{r.seq, "MAC does not match: the record, its time, its sequence number or the record before it was altered"}
				}
				if res.Bad != nil {
					break
				}
				res.Records++
				prevSeq = r.seq
				prev = append(prevBuf[:0], r.mac...)
			}
		}
		b.rows, b.arena = b.rows[:0], b.arena[:0]
		free <- b
	}
	if readErr != nil {
		return res, readErr
	}
	if res.Bad != nil {
		return res, nil
	}
	var headSeq int64
	var headMAC []byte
	err := db.R.QueryRowContext(ctx, `SELECT seq, mac FROM audit_head WHERE id = 1`).Scan(&headSeq, &headMAC)
	if errors.Is(err, sql.ErrNoRows) {
		headSeq, headMAC = 0, zeroMAC
	} else if err != nil {
		return res, err
	}
	res.HeadSeq = headSeq
	switch {
	case headSeq > prevSeq:
		res.Bad = &Break{prevSeq + 1, fmt.Sprintf("missing: the chain ends at %d but its head says %d records were written", prevSeq, headSeq)}
	case headSeq < prevSeq:
		res.Bad = &Break{headSeq + 1, fmt.Sprintf("not part of the chain: the head says the chain ends at %d", headSeq)}
	case !bytes.Equal(headMAC, prev):
		res.Bad = &Break{headSeq, "does not match the recorded chain head"}
	}
	return res, nil
}

func readChain(ctx context.Context, db *store.DB, out chan<- *batch, free <-chan *batch) error {
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, rec, mac FROM audit ORDER BY seq`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var rec, mac sql.RawBytes
	b := <-free
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.ts, &rec, &mac); err != nil {
			return err
		}
		// Copy into one arena per batch instead of two allocations per row.
		start := len(b.arena)
		b.arena = append(b.arena, rec...)
		b.arena = append(b.arena, mac...)
		r.rec = b.arena[start : start+len(rec) : start+len(rec)]
		r.mac = b.arena[start+len(rec) : len(b.arena) : len(b.arena)]
		b.rows = append(b.rows, r)
		if len(b.rows) == verifyBatch {
			fixArena(b)
			select {
			case out <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
			b = <-free
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(b.rows) > 0 {
		fixArena(b)
		out <- b
	}
	return nil
}

// fixArena re-points row slices after the arena may have moved while growing.
func fixArena(b *batch) {
	off := 0
	for i := range b.rows {
		r := &b.rows[i]
		lr, lm := len(r.rec), len(r.mac)
		r.rec = b.arena[off : off+lr : off+lr]
		off += lr
		r.mac = b.arena[off : off+lm : off+lm]
		off += lm
	}
}
