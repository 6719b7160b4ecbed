package appservice

import (
	"context"
	"database/sql"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// memberChange is one m.room.member event's effect on room_member.
type memberChange struct {
	room, user, membership string
}

// MembershipOf is the membership an m.room.member state event sets, or ""
// for any other event.
func MembershipOf(e *Event) string {
	if e.Type != "m.room.member" || e.StateKey == nil || !memberships[e.Content.Membership] {
		return ""
	}
	return e.Content.Membership
}

// saveMembers records the latest membership per (room, user) inside tx.
func saveMembers(ctx context.Context, db *store.DB, tx *sql.Tx, changes []memberChange, now time.Time) error {
	if len(changes) == 0 {
		return nil
	}
	// One row per key, the last change winning: PostgreSQL refuses to
	// update a row twice in one statement.
	last := make(map[[2]string]int, len(changes))
	for i, c := range changes {
		last[[2]string{c.room, c.user}] = i
	}
	args := make([]any, 0, 4*len(last))
	for i, c := range changes {
		if last[[2]string{c.room, c.user}] == i {
			args = append(args, c.room, c.user, c.membership, now.UnixMilli())
		}
	}
	q := store.ValuesQuery(`INSERT INTO room_member (room_id, user_id, membership, updated_at) VALUES `, 4, len(args)/4,
		` ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, updated_at = excluded.updated_at`)
	_, err := db.Exec(ctx, tx, q, args...)
	return err
}

// JoinedUsers lists the users joined to any room the service knows, on
// server (the homeserver's domain; "" for all).
func JoinedUsers(ctx context.Context, db *store.DB, server string) ([]string, error) {
	rows, err := db.R.QueryContext(ctx, `SELECT DISTINCT user_id FROM room_member WHERE membership = 'join' ORDER BY user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		if server == "" || strings.HasSuffix(u, ":"+server) {
			out = append(out, u)
		}
	}
	return out, rows.Err()
}
