package appservice

import (
	"context"
	"database/sql"
	"time"

	"github.com/tidwall/gjson"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Receipt is one read receipt from a transaction's ephemeral events
// (MSC2409): who has read a room up to which event, and when. It carries
// no content; the pager bridge's escalation judges "unread" from it.
type Receipt struct {
	RoomID, UserID, EventID string
	// Type is m.read or m.read.private; Thread is the thread_id ("" for
	// an unthreaded receipt).
	Type, Thread string
	TS           int64
}

// MaxReceiptsPerTransaction bounds what one transaction's ephemeral events
// may add: receipts come from every server in a room, so a hostile one
// could otherwise send a body's worth of tiny entries. The rest are dropped
// (counted): a later receipt of the same user supersedes them anyway.
const MaxReceiptsPerTransaction = 5000

// ephemeralKeys are where transactions carry ephemeral events: the spec's
// name and the one Synapse used before MSC2409 was merged. Synapse sends
// both when the registration asks for both; the spec's is read first.
var ephemeralKeys = [2]string{"ephemeral", "de.sorunome.msc2409.ephemeral"}

// parseReceipts reads the read receipts of a transaction's ephemeral
// events (list); typing and presence are not wanted and are skipped.
// Anything malformed is skipped entry by entry: ephemeral data is
// advisory, and a bad entry must not cost the transaction's events. It
// reports how many were dropped for the bound.
func parseReceipts(list gjson.Result) (out []Receipt, dropped int) {
	if !list.IsArray() {
		return nil, 0
	}
	list.ForEach(func(_, ev gjson.Result) bool {
		if !ev.IsObject() || ev.Get("type").Str != "m.receipt" {
			return true
		}
		room := ev.Get("room_id")
		if room.Type != gjson.String || auditableID(room.Str, '!') == "" {
			return true
		}
		ev.Get("content").ForEach(func(eventID, types gjson.Result) bool {
			if auditableID(eventID.Str, '$') == "" {
				return true
			}
			types.ForEach(func(typ, users gjson.Result) bool {
				if typ.Str != "m.read" && typ.Str != "m.read.private" {
					return true
				}
				users.ForEach(func(user, r gjson.Result) bool {
					if auditableID(user.Str, '@') == "" || !r.IsObject() {
						return true
					}
					thread := r.Get("thread_id")
					if thread.Exists() && (thread.Type != gjson.String || (thread.Str != "main" && auditableID(thread.Str, '$') == "")) {
						return true
					}
					if len(out) >= MaxReceiptsPerTransaction {
						dropped++
						return true
					}
					out = append(out, Receipt{RoomID: room.Str, UserID: user.Str, EventID: eventID.Str, Type: typ.Str, Thread: thread.Str, TS: r.Get("ts").Int()})
					return true
				})
				return true
			})
			return true
		})
		return true
	})
	return out, dropped
}

// storeReceipts keeps each user's newest receipt per room, type and thread.
// A receipt older than the one stored (a re-sent transaction, or one
// delivered out of order) changes nothing.
func storeReceipts(ctx context.Context, db *store.DB, receipts []Receipt, now time.Time) error {
	if len(receipts) == 0 {
		return nil
	}
	return db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		const chunk = 100
		args := make([]any, 0, 7*chunk)
		for start := 0; start < len(receipts); start += chunk {
			part := receipts[start:min(start+chunk, len(receipts))]
			args = args[:0]
			for _, r := range dedupeReceipts(part) {
				args = append(args, r.RoomID, r.UserID, r.Type, r.Thread, r.EventID, r.TS, now.UnixMilli())
			}
			q := store.ValuesQuery("INSERT INTO read_receipt (room_id, user_id, receipt_type, thread_id, event_id, ts, received_at) VALUES ", 7, len(args)/7,
				` ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, received_at = excluded.received_at
				WHERE excluded.ts >= read_receipt.ts`)
			if _, err := db.Exec(ctx, tx, q, args...); err != nil {
				return err
			}
		}
		return nil
	})
}

// dedupeReceipts keeps, within one statement, the newest receipt of each
// key: an upsert may not touch the same row twice (PostgreSQL refuses).
func dedupeReceipts(rs []Receipt) []Receipt {
	type key struct{ room, user, typ, thread string }
	at := make(map[key]int, len(rs))
	out := rs[:0:0]
	for _, r := range rs {
		k := key{r.RoomID, r.UserID, r.Type, r.Thread}
		if i, ok := at[k]; ok {
			if r.TS >= out[i].TS {
				out[i] = r
			}
			continue
		}
		at[k] = len(out)
		out = append(out, r)
	}
	return out
}

// ReadReceipt is a user's newest receipt in a room (any thread, either
// type), if any.
func ReadReceipt(ctx context.Context, db *store.DB, room, user string) (eventID string, ts int64, ok bool, err error) {
	err = db.R.QueryRowContext(ctx, `SELECT event_id, ts FROM read_receipt WHERE room_id = $1 AND user_id = $2 ORDER BY ts DESC LIMIT 1`, room, user).Scan(&eventID, &ts)
	if err == sql.ErrNoRows {
		return "", 0, false, nil
	}
	return eventID, ts, err == nil, err
}
