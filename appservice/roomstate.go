package appservice

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// RoomInfo is the tracked state of one room.
type RoomInfo struct {
	ID      string
	State   policy.RoomState
	Aliases []string // canonical alias first, then alternatives
	Spaces  []string // parent spaces (m.space.parent)
	dirty   bool
	// fresh: the service has no record of this room; the event being
	// decided is the first it sees there.
	fresh bool
	// prevMaxLifetime is MaxLifetime before the event being decided, when
	// that event changed it (retentionChanged).
	prevMaxLifetime  int64
	retentionChanged bool
	// retentionEvent is the event that set MaxLifetime; its redaction undoes it.
	retentionEvent string
}

// RetentionChanged reports whether the event being decided changed the
// room's own max_lifetime, and what it was before.
func (r *RoomInfo) RetentionChanged() (prev int64, changed bool) {
	return r.prevMaxLifetime, r.retentionChanged
}

// Fresh reports whether the event being decided is the first the service
// has seen in this room.
func (r *RoomInfo) Fresh() bool { return r.fresh }

// PolicyRoom is the room as policy matches it: its claims, and of them
// what links (from room_link) confirms.
func (r *RoomInfo) PolicyRoom(links RoomLinks) policy.Room {
	return policyRoom(r.ID, r.Aliases, r.Spaces, links)
}

// Apply updates the room from one event, if it is a state event that matters.
func (r *RoomInfo) Apply(e *Event) {
	r.retentionChanged = false
	if e.Type == "m.room.redaction" && e.StateKey == nil {
		// Redacting the room's retention event undoes it (its content is
		// gone from the room's state).
		raw := gjson.ParseBytes(e.Raw)
		redacts := raw.Get("content.redacts").String()
		if redacts == "" {
			redacts = raw.Get("redacts").String()
		}
		if redacts != "" && redacts == r.retentionEvent {
			r.prevMaxLifetime, r.retentionChanged = r.State.MaxLifetime, r.State.MaxLifetime != 0
			r.State.MaxLifetime, r.retentionEvent, r.dirty = 0, "", true
		}
		return
	}
	if e.StateKey == nil {
		return
	}
	if singletonState[e.Type] && *e.StateKey != "" {
		// Not the room's setting: state with another key is any member's
		// to send, and counting it would let them switch policy off.
		return
	}
	c := gjson.ParseBytes(e.Raw).Get("content")
	switch e.Type {
	case "m.room.create":
		// The sender, not content.creator: the field is the client's to
		// fill in, and the sender is who the room's power went to.
		r.State.Creator = e.Sender
	case "m.room.encryption":
		r.State.Encrypted = c.Get("algorithm").String() != ""
	case "m.room.join_rules":
		r.State.JoinRule = c.Get("join_rule").String()
	case "m.room.guest_access":
		r.State.GuestAccess = c.Get("guest_access").String()
	case "m.room.retention":
		prev := r.State.MaxLifetime
		r.State.MaxLifetime = 0
		if v := c.Get("max_lifetime"); v.Type == gjson.Number && v.Num > 0 {
			// Clamped, never wrapped: 2^64-1 is the longest lifetime, not
			// none, and not a tiny one.
			r.State.MaxLifetime = policy.RoomLifetimeMs(v.Num)
		}
		r.prevMaxLifetime, r.retentionChanged = prev, prev != r.State.MaxLifetime
		r.retentionEvent = e.ID
	case "m.room.canonical_alias":
		r.Aliases = r.Aliases[:0]
		if a := c.Get("alias").String(); a != "" {
			r.Aliases = append(r.Aliases, a)
		}
		for _, a := range c.Get("alt_aliases").Array() {
			if s := a.String(); s != "" && !slices.Contains(r.Aliases, s) {
				r.Aliases = append(r.Aliases, s)
			}
		}
	case "m.space.parent":
		parent := *e.StateKey
		r.Spaces = slices.DeleteFunc(r.Spaces, func(s string) bool { return s == parent })
		// An empty content removes the parent link.
		if c.IsObject() && len(c.Map()) > 0 {
			r.Spaces = append(r.Spaces, parent)
		}
	default:
		return
	}
	r.dirty = true
}

// singletonState are the state types the room has one of, under the empty
// state key.
var singletonState = map[string]bool{
	"m.room.create": true, "m.room.encryption": true, "m.room.join_rules": true, "m.room.guest_access": true,
	"m.room.canonical_alias": true, "m.room.retention": true,
}

// roomCache keeps rooms' tracked state in memory between batches. The
// dispatcher is the only writer of room_state, so the cache cannot go stale;
// it is dropped when a batch fails to commit, and when it grows large.
type roomCache struct {
	m map[string]*RoomInfo
}

const roomCacheMax = 20000

func (c *roomCache) forget() { c.m = nil }

func (c *roomCache) load(ctx context.Context, db *store.DB, ids []string) (map[string]*RoomInfo, error) {
	if c.m == nil || len(c.m) > roomCacheMax {
		c.m = map[string]*RoomInfo{}
	}
	var missing []string
	for _, id := range ids {
		if _, ok := c.m[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		loaded, err := LoadRooms(ctx, db, missing)
		if err != nil {
			return nil, err
		}
		for id, r := range loaded {
			c.m[id] = r
		}
	}
	out := make(map[string]*RoomInfo, len(ids))
	for _, id := range ids {
		r := c.m[id]
		r.dirty = false
		out[id] = r
	}
	return out, nil
}

// LoadRooms loads the tracked state of the given rooms (unknown rooms start empty).
func LoadRooms(ctx context.Context, db *store.DB, ids []string) (map[string]*RoomInfo, error) {
	out := make(map[string]*RoomInfo, len(ids))
	for _, id := range ids {
		if _, ok := out[id]; ok {
			continue
		}
		r := &RoomInfo{ID: id}
		var aliases, spaces string
		err := db.R.QueryRowContext(ctx, `SELECT creator, encrypted, join_rule, guest_access, aliases, spaces, max_lifetime_ms, retention_event FROM room_state WHERE room_id = $1`, id).
			Scan(&r.State.Creator, &r.State.Encrypted, &r.State.JoinRule, &r.State.GuestAccess, &aliases, &spaces, &r.State.MaxLifetime, &r.retentionEvent)
		if err == sql.ErrNoRows {
			r.fresh = true
		} else if err != nil {
			return nil, err
		}
		r.Aliases, r.Spaces = splitList(aliases), splitList(spaces)
		out[id] = r
	}
	return out, nil
}

// roomClaims is a room's creator and the aliases and parent spaces its
// state claims, as the dispatcher last stored them (none for a room it does
// not know).
func roomClaims(ctx context.Context, db *store.DB, room string) (creator string, aliases, spaces []string, err error) {
	var a, s string
	err = db.R.QueryRowContext(ctx, `SELECT creator, aliases, spaces FROM room_state WHERE room_id = $1`, room).Scan(&creator, &a, &s)
	if err == sql.ErrNoRows {
		err = nil
	}
	return creator, splitList(a), splitList(s), err
}

// saveRooms writes back the rooms that changed, inside tx.
func saveRooms(ctx context.Context, db *store.DB, tx *sql.Tx, rooms map[string]*RoomInfo, now time.Time) error {
	for _, r := range rooms {
		if !r.dirty {
			continue
		}
		if _, err := db.Exec(ctx, tx, `INSERT INTO room_state (room_id, creator, encrypted, join_rule, guest_access, aliases, spaces, updated_at, max_lifetime_ms, retention_event)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			ON CONFLICT (room_id) DO UPDATE SET creator = excluded.creator, encrypted = excluded.encrypted, join_rule = excluded.join_rule,
				guest_access = excluded.guest_access, aliases = excluded.aliases, spaces = excluded.spaces, updated_at = excluded.updated_at,
				max_lifetime_ms = excluded.max_lifetime_ms, retention_event = excluded.retention_event`,
			r.ID, r.State.Creator, r.State.Encrypted, r.State.JoinRule, r.State.GuestAccess,
			strings.Join(r.Aliases, "\n"), strings.Join(r.Spaces, "\n"), now.UnixMilli(), r.State.MaxLifetime, r.retentionEvent); err != nil {
			return err
		}
	}
	return nil
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
