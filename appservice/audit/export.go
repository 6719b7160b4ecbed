package audit

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Range selects records by the service's clock; zero bounds are open.
type Range struct {
	Since, Until time.Time
}

// ExportJSONL writes one JSON object per record: the stored record fields plus
// seq, time, prev_mac and mac, so an auditor can re-check the chain offline
// with the key. It returns how many records it wrote.
func ExportJSONL(ctx context.Context, db *store.DB, r Range, w io.Writer) (int64, error) {
	q := `SELECT seq, ts, rec, mac FROM audit WHERE ts >= $1 AND ts < $2 ORDER BY seq`
	since, until := int64(0), int64(1<<62)
	if !r.Since.IsZero() {
		since = r.Since.UnixMilli()
	}
	if !r.Until.IsZero() {
		until = r.Until.UnixMilli()
	}
	rows, err := db.R.QueryContext(ctx, q, since, until)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	bw := bufio.NewWriterSize(w, 64<<10)
	var n int64
	var prev []byte
	var line []byte
	var seq, ts int64
	var rec, mac sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&seq, &ts, &rec, &mac); err != nil {
			return n, err
		}
		if prev == nil || n == 0 {
			// The first record of a range links to one outside it.
			if prev, err = macOf(ctx, db, seq-1); err != nil {
				return n, err
			}
		}
		if len(rec) < 2 || rec[0] != '{' || rec[len(rec)-1] != '}' {
			return n, fmt.Errorf("audit record %d is not a JSON object: run audit verify", seq)
		}
		line = append(line[:0], `{"seq":`...)
		line = strconv.AppendInt(line, seq, 10)
		line = append(line, `,"time":"`...)
		line = time.UnixMilli(ts).UTC().AppendFormat(line, "2006-01-02T15:04:05.000Z07:00")
		line = append(line, `",`...)
		line = append(line, rec[1:len(rec)-1]...)
		line = append(line, `,"prev_mac":"`...)
		line = hex.AppendEncode(line, prev)
		line = append(line, `","mac":"`...)
		line = hex.AppendEncode(line, mac)
		line = append(line, "\"}\n"...)
		if _, err := bw.Write(line); err != nil {
			return n, err
		}
		prev = append(prev[:0], mac...)
		n++
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	return n, bw.Flush()
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
