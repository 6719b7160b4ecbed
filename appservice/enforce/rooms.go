package enforce

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
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
	// PublicForbidden, GuestsForbidden: policy forbids a public join rule,
	// guest access.
	PublicForbidden, GuestsForbidden bool
	BotJoined                        bool
	BotPower, Needed                 int
	// DryRun: policy only records what it would do in this room.
	DryRun   bool
	Problems []Problem
}

// Problem is an action that failed for good in a room.
type Problem struct {
	Action, Detail string
	Since          int64 // unix ms
}

// Unenforced reports whether policy wants the room encrypted and it is not.
func (r *RoomReport) Unenforced() bool { return r.EncryptionRequired && !r.Encrypted }

// Underpowered reports whether the bot is in the room without the power its
// settings need (it then relies on the creator to fix them). On its own it
// needs nobody: that is how most rooms people create are.
func (r *RoomReport) Underpowered() bool { return r.BotJoined && r.BotPower < r.Needed }

// Attention says why a room needs someone, or nothing: a setting policy
// requires that is not in force, or an action that failed for good. One
// definition for `rooms`, `status`, the hipaa_rooms{standing="needs_attention"}
// gauge and the MatrixHipaaRoomsNotEnforced alert.
func (r *RoomReport) Attention() []string {
	var why []string
	if r.Unenforced() {
		why = append(why, "not encrypted")
	}
	if r.PublicForbidden && r.JoinRule == "public" {
		why = append(why, "public join rule")
	}
	if r.GuestsForbidden && r.GuestAccess == "can_join" {
		why = append(why, "guests may join")
	}
	for _, p := range r.Problems {
		why = append(why, fmt.Sprintf("%s failed since %s: %s", p.Action, time.UnixMilli(p.Since).UTC().Format(time.RFC3339), p.Detail))
	}
	return why
}

// NeedsAttention reports whether Attention has anything to say.
func (r *RoomReport) NeedsAttention() bool { return len(r.Attention()) > 0 }

// ListRooms reports every room the service knows, sorted by ID.
func ListRooms(ctx context.Context, db *store.DB, pol *policy.Policy) ([]RoomReport, error) {
	known, err := appservice.LoadKnownRooms(ctx, db)
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
	for _, k := range known.All() {
		r := get(k.ID)
		r.Encrypted, r.JoinRule, r.GuestAccess = k.Encrypted, k.JoinRule, k.GuestAccess
		eff := pol.For(k.Policy)
		r.EncryptionRequired = eff.Encryption == policy.EncryptionRequired
		r.PublicForbidden, r.GuestsForbidden = eff.PublicRooms == policy.Forbid, eff.GuestAccess == policy.Forbid
		r.DryRun = eff.DryRun
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

// RoomCounts is how many rooms the service knows and how many of them need
// attention, for the status report.
func RoomCounts(ctx context.Context, db *store.DB, pol *policy.Policy) (rooms, attention int, err error) {
	list, err := ListRooms(ctx, db, pol)
	for i := range list {
		if list[i].NeedsAttention() {
			attention++
		}
	}
	return len(list), attention, err
}

// Loops keeps the rooms gauges current.
func (f *Feature) Loops() []func(context.Context) {
	return []func(context.Context){func(ctx context.Context) { f.refreshGauges(ctx, 5*time.Second) }}
}

// refreshGauges sets matrix_hipaa_rooms by what the rooms listing says.
func (f *Feature) refreshGauges(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if rooms, err := ListRooms(ctx, f.env.DB, f.env.Policy()); err == nil {
			counts := map[string]float64{"known": 0, "needs_attention": 0, "problem": 0, "unencrypted_required": 0, "bot_underpowered": 0}
			for i := range rooms {
				r := &rooms[i]
				counts["known"]++
				if r.NeedsAttention() {
					counts["needs_attention"]++
				}
				if len(r.Problems) > 0 {
					counts["problem"]++
				}
				if r.Unenforced() {
					counts["unencrypted_required"]++
				}
				if r.Underpowered() {
					counts["bot_underpowered"]++
				}
			}
			for k, v := range counts {
				f.env.Metrics.Rooms.WithLabelValues(k).Set(v)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
