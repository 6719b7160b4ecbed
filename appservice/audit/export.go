package audit

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Range selects records by the service's clock (zero bounds are open) and,
// if About is set, by whom or where they concern.
type Range struct {
	Since, Until time.Time
	// About keeps only records naming one of these pseudonyms (u_… or
	// r_…) as actor, room or detail: an investigator's search for one
	// person or room. Each record exported still carries the MAC of the
	// record before it, so each is checked on its own with the chain key.
	About []string
}

// concerns reports whether a stored record names one of r.About.
func (r *Range) concerns(st *Stored) (bool, error) {
	if len(r.About) == 0 {
		return true, nil
	}
	var f *Record
	for _, p := range r.About {
		if p == "" || !bytes.Contains(st.Rec, []byte(p)) {
			continue
		}
		if f == nil {
			rec, err := st.Fields()
			if err != nil {
				return false, err
			}
			f = &rec
		}
		// A pseudonym is 128 random-looking bits: one inside a detail
		// (a wipe's target, say) is that pseudonym.
		if f.Actor == p || f.Room == p || strings.Contains(f.Detail, p) {
			return true, nil
		}
	}
	return false, nil
}

// ExportJSONL writes one JSON object per record: the stored record fields plus
// seq, time, prev_mac and mac, so an auditor can re-check the chain offline
// with the key. It returns how many records it wrote.
func ExportJSONL(ctx context.Context, db *store.DB, r Range, w io.Writer) (int64, error) {
	return Export(ctx, db, r, w, AppendJSONLine)
}

// ExportSyslog writes one RFC 5424 message per line, as the syslog exporter
// sends them.
func ExportSyslog(ctx context.Context, db *store.DB, r Range, w io.Writer, f *SyslogFormat) (int64, error) {
	return Export(ctx, db, r, w, func(out []byte, st *Stored) ([]byte, error) {
		msg, err := f.Format(st)
		if err != nil {
			return out, err
		}
		return append(append(out, msg...), '\n'), nil
	})
}

// Export writes the records in r, each rendered by render (which appends one
// line to its first argument).
func Export(ctx context.Context, db *store.DB, r Range, w io.Writer, render func([]byte, *Stored) ([]byte, error)) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var line []byte
	n, err := Each(ctx, db, r, func(st *Stored) error {
		var err error
		if line, err = render(line[:0], st); err != nil {
			return err
		}
		_, err = bw.Write(line)
		return err
	})
	if err != nil {
		return n, err
	}
	return n, bw.Flush()
}

// Each calls f with each record in r, in order, each with the MAC of the
// record before it (which f must not keep: the next call reuses it), and
// returns how many it called f with.
func Each(ctx context.Context, db *store.DB, r Range, f func(*Stored) error) (int64, error) {
	first, last, err := seqRange(ctx, db, r)
	if err != nil {
		return 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, rec, mac FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq`, first, last)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	var prev []byte
	var seq, ts int64
	var rec, mac sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&seq, &ts, &rec, &mac); err != nil {
			return n, err
		}
		if prev == nil {
			// The first record of a range links to one outside it.
			if prev, err = macOf(ctx, db, seq-1); err != nil {
				return n, err
			}
		}
		st := Stored{Seq: seq, TS: ts, Rec: rec, PrevMAC: prev, MAC: mac}
		ok, err := r.concerns(&st)
		if err != nil {
			return n, err
		}
		if ok {
			if err := f(&st); err != nil {
				return n, err
			}
			n++
		}
		prev = append(prev[:0], mac...)
	}
	return n, rows.Err()
}

func macOf(ctx context.Context, db *store.DB, seq int64) ([]byte, error) {
	if seq <= 0 {
		return append([]byte(nil), zeroMAC...), nil
	}
	var mac []byte
	err := db.R.QueryRowContext(ctx, `SELECT mac FROM audit WHERE seq = $1`, seq).Scan(&mac)
	if errors.Is(err, sql.ErrNoRows) {
		return append([]byte(nil), zeroMAC...), nil
	}
	return mac, err
}

// seqRange turns a time range into the seq range holding it. Times never
// decrease along seq, so each end is a binary search over seq.
func seqRange(ctx context.Context, db *store.DB, r Range) (int64, int64, error) {
	var maxSeq sql.NullInt64
	if err := db.R.QueryRowContext(ctx, `SELECT MAX(seq) FROM audit`).Scan(&maxSeq); err != nil {
		return 0, 0, err
	}
	first, last := int64(1), maxSeq.Int64
	var err error
	if !r.Since.IsZero() {
		if first, err = firstAtOrAfter(ctx, db, r.Since.UnixMilli(), maxSeq.Int64); err != nil {
			return 0, 0, err
		}
	}
	if !r.Until.IsZero() {
		until, err := firstAtOrAfter(ctx, db, r.Until.UnixMilli(), maxSeq.Int64)
		if err != nil {
			return 0, 0, err
		}
		last = until - 1
	}
	return first, last, nil
}

// firstAtOrAfter is the lowest seq whose time is at or after ms (maxSeq+1 if
// none). A missing record (a tampered chain) is read as the nearest one after it.
func firstAtOrAfter(ctx context.Context, db *store.DB, ms, maxSeq int64) (int64, error) {
	lo, hi := int64(1), maxSeq+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		var ts int64
		err := db.R.QueryRowContext(ctx, `SELECT ts FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 1`, mid).Scan(&ts)
		if errors.Is(err, sql.ErrNoRows) {
			hi = mid
			continue
		}
		if err != nil {
			return 0, err
		}
		if ts >= ms {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}
