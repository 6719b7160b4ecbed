package expiry

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Expiry is a message's scheduled end: at DueAt (unix ms) it is redacted
// as its sender.
type Expiry struct {
	EventID, RoomID, Sender string
	ReceivedAt, DueAt       int64
	// OriginTS is the homeserver's timestamp, for the purge bound.
	OriginTS int64
}

// JobExpire is the job kind that redacts an expired message.
const JobExpire = "expire"

// reasonExpired is the redaction reason people see.
const reasonExpired = "This room's message lifetime has ended."

// expiryFor decides whether an event expires, and when: message events
// (encrypted or not; not state, not redactions) in a room with a lifetime
// (policy's, tightened by the room's own m.room.retention).
// The time counts from when the service received it, not from the event's
// own timestamp, which its sender's client sets.
func expiryFor(ev *appservice.Event, s policy.Effective, room policy.RoomState) (Expiry, bool) {
	life := s.Lifetime(room.MaxLifetime)
	if life <= 0 || ev.StateKey != nil || ev.Type == "m.room.redaction" || ev.ReceivedAt == 0 {
		return Expiry{}, false
	}
	return Expiry{EventID: ev.ID, RoomID: ev.RoomID, Sender: ev.Sender, ReceivedAt: ev.ReceivedAt,
		DueAt: ev.ReceivedAt + life.Milliseconds(), OriginTS: ev.OriginTS}, true
}

// scheduleExpiries stores expiries inside the dispatcher's transaction. An
// event already scheduled (a replayed batch) keeps its row.
func scheduleExpiries(ctx context.Context, db *store.DB, tx *sql.Tx, list []Expiry) error {
	for start := 0; start < len(list); start += 100 {
		chunk := list[start:min(start+100, len(list))]
		args := make([]any, 0, 7*len(chunk))
		for _, e := range chunk {
			args = append(args, e.EventID, e.RoomID, e.Sender, e.ReceivedAt, e.DueAt, "pending", e.OriginTS)
		}
		q := store.ValuesQuery(`INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES `, 7, len(chunk),
			` ON CONFLICT (received_at, event_id) DO NOTHING`)
		if _, err := db.Exec(ctx, tx, q, args...); err != nil {
			return fmt.Errorf("schedule expiries: %w", err)
		}
	}
	return nil
}
