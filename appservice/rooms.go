package appservice

import (
	"context"
	"database/sql"
	"sort"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// RoomReport is one room as `matrix-hipaa rooms` shows it: IDs and settings
// only, never names or topics.
type RoomReport struct {
	ID                 string
	Encrypted          bool
	EncryptionRequired bool
	JoinRule           string
	GuestAccess        string
	BotJoined          bool
	BotPower, Needed   int
	Problems           []Problem
}

// Problem is an action that failed for good in a room.
type Problem struct {
	Action, Detail string
	Since          int64 // unix ms
}

// Unenforced reports whether policy wants the room encrypted and it is not.
func (r *RoomReport) Unenforced() bool { return r.EncryptionRequired && !r.Encrypted }

// Underpowered reports whether the bot is in the room without the power its
// settings need (it then relies on the creator to fix them).
func (r *RoomReport) Underpowered() bool { return r.BotJoined && r.BotPower < r.Needed }

// ListRooms reports every room the service knows, sorted by ID.
func ListRooms(ctx context.Context, db *store.DB, pol *policy.Policy) ([]RoomReport, error) {
	links, err := loadLinks(ctx, db)
	if err != nil {
		return nil, err
	}
	byID := map[string]*RoomReport{}
	get := func(id string) *RoomReport {
		r := byID[id]
		if r == nil {
			r = &RoomReport{ID: id}
			byID[id] = r
		}
		return r
	}
	err = queryEach(ctx, db, `SELECT room_id, encrypted, join_rule, guest_access, aliases, spaces FROM room_state`, func(rows *sql.Rows) error {
		var id, jr, ga, aliases, spaces string
		var enc bool
		if err := rows.Scan(&id, &enc, &jr, &ga, &aliases, &spaces); err != nil {
			return err
		}
		r := get(id)
		r.Encrypted, r.JoinRule, r.GuestAccess = enc, jr, ga
		r.EncryptionRequired = pol.For(policyRoom(id, splitList(aliases), splitList(spaces), links[id])).Encryption == policy.EncryptionRequired
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = queryEach(ctx, db, `SELECT room_id, power, needed FROM room_bot`, func(rows *sql.Rows) error {
		var id string
		var power, needed int
		if err := rows.Scan(&id, &power, &needed); err != nil {
			return err
		}
		r := get(id)
		r.BotJoined, r.BotPower, r.Needed = true, power, needed
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = queryEach(ctx, db, `SELECT room_id, action, detail, since FROM room_problem ORDER BY since`, func(rows *sql.Rows) error {
		var id string
		var p Problem
		if err := rows.Scan(&id, &p.Action, &p.Detail, &p.Since); err != nil {
			return err
		}
		r := get(id)
		r.Problems = append(r.Problems, p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]RoomReport, 0, len(byID))
	for _, r := range byID {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func queryEach(ctx context.Context, db *store.DB, q string, each func(*sql.Rows) error) error {
	rows, err := db.R.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
