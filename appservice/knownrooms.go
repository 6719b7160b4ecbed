package appservice

import (
	"context"
	"database/sql"
	"errors"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// KnownRoom is a room the service knows (from the events the dispatcher
// saw), as room_state has it.
type KnownRoom struct {
	ID, Creator           string
	Encrypted             bool
	JoinRule, GuestAccess string
	// MaxLifetime is the room's own m.room.retention max_lifetime (ms; 0 none).
	MaxLifetime int64
	// Policy is the room as policy matches it: the aliases and spaces its
	// state claims, and those of them the homeserver confirmed.
	Policy policy.Room
}

// KnownRooms are the rooms the service knows, and the rooms' confirmed links.
type KnownRooms struct {
	list  []KnownRoom // by ID
	byID  map[string]int
	links map[string]RoomLinks
}

// LoadKnownRooms reads every known room with its confirmed links: the one
// way features look up what policy applies to a stored room.
func LoadKnownRooms(ctx context.Context, db *store.DB) (*KnownRooms, error) {
	links, err := loadRoomLinks(ctx, db)
	if err != nil {
		return nil, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT room_id, creator, encrypted, join_rule, guest_access, max_lifetime_ms, aliases, spaces FROM room_state ORDER BY room_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := &KnownRooms{byID: map[string]int{}, links: links}
	for rows.Next() {
		var r KnownRoom
		var aliases, spaces string
		if err := rows.Scan(&r.ID, &r.Creator, &r.Encrypted, &r.JoinRule, &r.GuestAccess, &r.MaxLifetime, &aliases, &spaces); err != nil {
			return nil, err
		}
		r.Policy = storedRoom(r.ID, aliases, spaces, links)
		out.byID[r.ID] = len(out.list)
		out.list = append(out.list, r)
	}
	return out, rows.Err()
}

// Get is one known room.
func (k *KnownRooms) Get(id string) (KnownRoom, bool) {
	i, ok := k.byID[id]
	if !ok {
		return KnownRoom{}, false
	}
	return k.list[i], true
}

// PolicyRoom is how policy matches room id: as stored, or by its ID and any
// confirmed links when the service has no state for it.
func (k *KnownRooms) PolicyRoom(id string) policy.Room {
	if r, ok := k.Get(id); ok {
		return r.Policy
	}
	return storedRoom(id, "", "", k.links)
}

// All lists the rooms by ID, so what is done for each happens, and is
// audited, in the same order on either database.
func (k *KnownRooms) All() []KnownRoom { return k.list }

// LoadKnownRoom reads one room as LoadKnownRooms would (a room the service
// has no state for is its ID and any confirmed links).
func LoadKnownRoom(ctx context.Context, db *store.DB, id string) (KnownRoom, error) {
	links, err := roomLinksOf(ctx, db, id)
	if err != nil {
		return KnownRoom{}, err
	}
	r := KnownRoom{ID: id}
	var aliases, spaces string
	err = db.R.QueryRowContext(ctx, `SELECT creator, encrypted, join_rule, guest_access, max_lifetime_ms, aliases, spaces FROM room_state WHERE room_id = $1`, id).
		Scan(&r.Creator, &r.Encrypted, &r.JoinRule, &r.GuestAccess, &r.MaxLifetime, &aliases, &spaces)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return KnownRoom{}, err
	}
	r.Policy = storedRoom(id, aliases, spaces, map[string]RoomLinks{id: links})
	return r, nil
}
