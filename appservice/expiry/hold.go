package expiry

import (
	"context"
	"database/sql"
	"errors"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// PlaceHold puts a legal hold on a room or a user's messages (exactly one of
// room and user): while it stands, their messages are not expired. The
// reason is stored with the hold, never in the audit trail or its exports.
func PlaceHold(ctx context.Context, db *store.DB, chain *audit.Chain, room, user, reason, by string) (id int64, err error) {
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		id, err = PlaceHoldTx(ctx, tx, chain, room, user, reason, by)
		return err
	})
	if err != nil {
		keys := chain.Keys()
		return 0, appservice.RecordRefusal(ctx, db, chain, &audit.Record{Type: audit.TypeHold, Actor: by, Room: keys.Room(room), Detail: holdTarget(room, user, keys), Action: "place"}, err)
	}
	return id, nil
}

// PlaceHoldTx is PlaceHold inside the caller's transaction.
func PlaceHoldTx(ctx context.Context, tx *sql.Tx, chain *audit.Chain, room, user, reason, by string) (int64, error) {
	if (room == "") == (user == "") {
		return 0, appservice.Invalid("a hold is on a room or on a user")
	}
	if reason == "" {
		return 0, appservice.Invalid("a hold needs a reason")
	}
	var id int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO legal_hold (room_id, user_id, reason, placed_by, placed_at) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
		room, user, reason, by, chain.Now().UnixMilli()).Scan(&id); err != nil {
		return 0, err
	}
	keys := chain.Keys()
	return id, chain.Append(ctx, tx, &audit.Record{Type: audit.TypeHold, Outcome: audit.OutcomeSuccess, Actor: by, Room: keys.Room(room),
		Detail: holdTarget(room, user, keys), Action: "place", JobID: id})
}

// ReleaseHold ends a hold. Messages it kept that are now due go back to the
// expiry queue (another hold that still covers them keeps them held).
func ReleaseHold(ctx context.Context, db *store.DB, chain *audit.Chain, id int64, by string) error {
	return db.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return ReleaseHoldTx(ctx, tx, chain, id, by) })
}

// ReleaseHoldTx is ReleaseHold inside the caller's transaction.
func ReleaseHoldTx(ctx context.Context, tx *sql.Tx, chain *audit.Chain, id int64, by string) error {
	var room, user string
	err := tx.QueryRowContext(ctx, `SELECT room_id, user_id FROM legal_hold WHERE id = $1 AND released_at = 0`, id).Scan(&room, &user)
	if errors.Is(err, sql.ErrNoRows) {
		return appservice.Invalid("no standing hold %d", id)
	} else if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE legal_hold SET released_by = $1, released_at = $2 WHERE id = $3`, by, chain.Now().UnixMilli(), id); err != nil {
		return err
	}
	q, arg := `UPDATE expiry SET state = 'pending' WHERE state = 'held' AND room_id = $1`, room
	if user != "" {
		q, arg = `UPDATE expiry SET state = 'pending' WHERE state = 'held' AND sender = $1`, user
	}
	if _, err := tx.ExecContext(ctx, q, arg); err != nil {
		return err
	}
	keys := chain.Keys()
	return chain.Append(ctx, tx, &audit.Record{Type: audit.TypeHold, Outcome: audit.OutcomeSuccess, Actor: by, Room: keys.Room(room),
		Detail: holdTarget(room, user, keys), Action: "release", JobID: id})
}

// holdTarget says what a hold covers, for the audit record: "room", or the
// user's pseudonym.
func holdTarget(room, user string, keys *audit.Keys) string {
	if room != "" {
		return "room"
	}
	return keys.User(user)
}

// Hold is a standing legal hold.
type Hold struct {
	ID                           int64
	Room, User, Reason, PlacedBy string
	PlacedAt                     int64
}

// StandingHolds lists the holds not released, oldest first.
func StandingHolds(ctx context.Context, db *store.DB) ([]Hold, error) {
	rows, err := db.R.QueryContext(ctx, `SELECT id, room_id, user_id, reason, placed_by, placed_at FROM legal_hold WHERE released_at = 0 ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Hold
	for rows.Next() {
		var h Hold
		if err := rows.Scan(&h.ID, &h.Room, &h.User, &h.Reason, &h.PlacedBy, &h.PlacedAt); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}
