package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"

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
	var res Result
	var headSeq int64
	var headMAC []byte
	err := db.R.QueryRowContext(ctx, `SELECT seq, mac FROM audit_head WHERE id = 1`).Scan(&headSeq, &headMAC)
	if errors.Is(err, sql.ErrNoRows) {
		headSeq, headMAC = 0, zeroMAC
	} else if err != nil {
		return res, err
	}
	res.HeadSeq = headSeq
	var minSeq, maxSeq sql.NullInt64
	if err := db.R.QueryRowContext(ctx, `SELECT MIN(seq), MAX(seq) FROM audit`).Scan(&minSeq, &maxSeq); err != nil {
		return res, err
	}
	if minSeq.Valid && minSeq.Int64 < 1 {
		return Result{HeadSeq: headSeq, Bad: &Break{minSeq.Int64, "sequence numbers start at 1"}}, nil
	}
	end := max(headSeq, maxSeq.Int64)
	workers := int64(max(1, min(runtime.NumCPU(), 8)))
	if end < parallelFrom {
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
			b, err := verifyRange(ctx, db, keys, lo, hi)
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

// parallelFrom is the chain length from which ranges are checked in parallel
// (a variable so tests can exercise the split on small chains).
var parallelFrom int64 = 100_000

// verifyRange checks records lo..hi and returns the first break among them.
func verifyRange(ctx context.Context, db *store.DB, keys *Keys, lo, hi int64) (*Break, error) {
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
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, rec, mac FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq`, lo, hi)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	h := hmac.New(sha256.New, keys.chain)
	var want [sha256.Size]byte
	var seq, ts int64
	var rec, mac sql.RawBytes
	expect := lo
	for rows.Next() {
		if err := rows.Scan(&seq, &ts, &rec, &mac); err != nil {
			return nil, err
		}
		switch {
		case seq > expect:
			return &Break{expect, fmt.Sprintf("missing (next record found is %d)", seq)}, nil
		case seq < expect:
			return &Break{seq, fmt.Sprintf("out of order (follows %d)", expect-1)}, nil
		case !hmac.Equal(computeMAC(h, seq, ts, prev, rec, want[:0]), mac):
			return &Break{seq, "MAC does not match: the record, its time, its sequence number or the record before it was altered"}, nil
		}
		prev = append(prevBuf[:0], mac...)
		expect++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if expect <= hi {
		return &Break{expect, fmt.Sprintf("missing (no records from %d to %d)", expect, hi)}, nil
	}
	return nil, nil
}
