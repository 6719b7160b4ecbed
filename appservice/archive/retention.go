package archive

import (
	"context"
	"database/sql"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// PurgeEvery is how often items past their archive_retention are deleted.
const PurgeEvery = time.Hour

// Loops read encrypted messages as they are queued (ingest.go) and delete
// what archive_retention lets go, hourly.
func (f *Feature) Loops() []func(context.Context) {
	return []func(context.Context){f.ingestLoop, func(ctx context.Context) {
		t := time.NewTicker(PurgeEvery)
		defer t.Stop()
		for {
			if n, err := Purge(ctx, f.env.DB, f.env.Chain, f.env.Now()); err != nil && ctx.Err() == nil {
				f.env.Log.Error().Str("error", appservice.SafeError(err)).Msg("archive retention: could not delete items past their retention")
			} else if n > 0 {
				f.env.Log.Info().Int64("items", n).Msg("archive retention: items past their retention deleted")
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}}
}

// heldPseudonyms are the rooms and users under a standing legal hold, as
// the archive indexes them.
func heldPseudonyms(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, keys *audit.Keys) (rooms, users []string, err error) {
	rows, err := q.QueryContext(ctx, `SELECT room_id, user_id FROM legal_hold WHERE released_at = 0`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var room, user string
		if err := rows.Scan(&room, &user); err != nil {
			return nil, nil, err
		}
		if room != "" {
			rooms = append(rooms, keys.Room(room))
		}
		if user != "" {
			users = append(users, keys.User(user))
		}
	}
	return rooms, users, rows.Err()
}

// Purge deletes archived items (and their files) whose archive_retention
// has run out, except those a standing legal hold covers: on their room,
// or on their sender. It is audited with the count.
func Purge(ctx context.Context, db *store.DB, chain *audit.Chain, now time.Time) (int64, error) {
	var n int64
	err := db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		rooms, users, err := heldPseudonyms(ctx, tx, chain.Keys())
		if err != nil {
			return err
		}
		where := `keep_until > 0 AND keep_until <= $1`
		args := []any{now.UnixMilli()}
		for _, x := range []struct {
			col  string
			vals []string
		}{{"room_p", rooms}, {"sender_p", users}} {
			if len(x.vals) == 0 {
				continue
			}
			marks := make([]string, len(x.vals))
			for i, v := range x.vals {
				args = append(args, v)
				marks[i] = "$" + strconv.Itoa(len(args))
			}
			where += " AND " + x.col + " NOT IN (" + strings.Join(marks, ", ") + ")"
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM archive_file WHERE event_id IN (SELECT event_id FROM archive_item WHERE `+where+`)`, args...); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM archive_item WHERE `+where, args...)
		if err != nil {
			return err
		}
		if n, _ = res.RowsAffected(); n == 0 {
			return nil
		}
		return chain.Append(ctx, tx, &audit.Record{Type: audit.TypeArchive, Outcome: audit.OutcomeSuccess, Action: "purge", Count: n})
	})
	return n, err
}

// RoomReport is what the archive holds of one room, and what it lacks.
type RoomReport struct {
	// Room is the room's ID, or its pseudonym for a room the service no
	// longer knows.
	Room    string
	Since   int64
	Kept    int            // messages
	Missing map[string]int // by reason
}

// MissingTotal is how many of the room's messages the archive lacks.
func (r RoomReport) MissingTotal() int {
	n := 0
	for _, c := range r.Missing {
		n += c
	}
	return n
}

// Why lists the reasons, as reason:count.
func (r RoomReport) Why() string {
	var parts []string
	for k, v := range r.Missing {
		parts = append(parts, k+":"+strconv.Itoa(v))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// Report is the archive per room: what it kept and which messages it
// could not read, and why.
func Report(ctx context.Context, db *store.DB, keys *audit.Keys) ([]RoomReport, error) {
	byP := map[string]*RoomReport{}
	var order []string
	get := func(p string) *RoomReport {
		if r, ok := byP[p]; ok {
			return r
		}
		r := &RoomReport{Room: p, Missing: map[string]int{}}
		byP[p] = r
		order = append(order, p)
		return r
	}
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return nil, err
	}
	ids := map[string]string{} // pseudonym -> room ID, for the rooms the service knows
	for _, r := range known.All() {
		ids[keys.Room(r.ID)] = r.ID
	}
	err = eachRow(ctx, db, `SELECT room_p, since FROM archive_room ORDER BY room_p`, nil, func(s scanner) error {
		var p string
		var since int64
		if err := s.Scan(&p, &since); err != nil {
			return err
		}
		get(p).Since = since
		return nil
	})
	if err == nil {
		err = eachRow(ctx, db, `SELECT room_p, COUNT(*) FROM archive_item WHERE kind = 'message' GROUP BY room_p ORDER BY room_p`, nil, func(s scanner) error {
			var p string
			var n int
			if err := s.Scan(&p, &n); err != nil {
				return err
			}
			get(p).Kept = n
			return nil
		})
	}
	if err == nil {
		err = eachRow(ctx, db, `SELECT room_p, reason, COUNT(*) FROM archive_missing GROUP BY room_p, reason ORDER BY room_p, reason`, nil, func(s scanner) error {
			var p, reason string
			var n int
			if err := s.Scan(&p, &reason, &n); err != nil {
				return err
			}
			get(p).Missing[reason] = n
			return nil
		})
	}
	if err != nil {
		return nil, err
	}
	out := make([]RoomReport, 0, len(order))
	for _, p := range order {
		r := *byP[p]
		if id, ok := ids[p]; ok {
			r.Room = id
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Room < out[j].Room })
	return out, nil
}

type scanner interface{ Scan(...any) error }

// eachRow runs a read query and hands f each row, the archive's one loop
// over rows.
func eachRow(ctx context.Context, db *store.DB, q string, args []any, f func(scanner) error) error {
	rows, err := db.R.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := f(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
