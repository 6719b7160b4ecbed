package expiry

import (
	"context"
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// fakeRetentionHS is the room's current m.room.retention as the homeserver
// has it (nil: none).
type fakeRetentionHS struct{ maxLifetime any }

func (f *fakeRetentionHS) StateContent(ctx context.Context, user, room, eventType, key string) (map[string]any, error) {
	if f.maxLifetime == nil {
		return nil, mautrix.MNotFound
	}
	return map[string]any{"max_lifetime": f.maxLifetime}, nil
}

// A room admin sets max_lifetime to an hour in a room whose messages policy
// keeps 30 days and whose own retention it honours. New messages take the
// hour at once. The waiting ones: a change that the room's current state
// does not confirm (soft-failed, undone) changes nothing; one that would end
// more than retention_change_limit at once is held (audited, counted for the
// alert) for an hour, and applies then only if the room still says so; a
// small one applies at once.
func TestHostileRoomRetentionCannotWipeHistoryAtOnce(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			p.UsePolicy(t, "version: 1\nretention_change_limit: 5\ndefaults:\n  retention: 30d\n  room_retention: honour\n  encryption: optional\n")
			hs := &fakeRetentionHS{}
			f := New(p.Env())
			f.StateHS = hs
			p.Add(t, f)
			room := "!ward:h"
			evs := []map[string]any{apptest.State("$c", room, "@mallory:h", "m.room.create", "", map[string]any{"room_version": "10"})}
			for i := range 10 {
				evs = append(evs, apptest.Message(fmt.Sprintf("$m%d", i), room, "@doc:h", "x"))
			}
			push := func(txn string, evs ...map[string]any) {
				t.Helper()
				if code := p.Put(t, txn, evs...); code != 200 {
					t.Fatal(code)
				}
				if _, err := p.Disp.DispatchBatch(ctx); err != nil {
					t.Fatal(err)
				}
			}
			push("t1", evs...)
			p.Clock.Advance(2 * time.Hour)
			due := func() int {
				// The ten messages that were waiting before the change.
				return p.Count(t, `SELECT COUNT(*) FROM expiry WHERE room_id = $1 AND event_id LIKE '$m%' AND due_at <= $2`, room, p.Clock.Now().UnixMilli())
			}
			decisions := func(detail string) int {
				n := 0
				for _, r := range p.Records(t) {
					if r["type"] == "policy.decision" && r["action"] == "retention_change" && r["detail"] == detail {
						n++
					}
				}
				return n
			}
			retention := func(id string, ms int64) map[string]any {
				return apptest.State(id, room, "@mallory:h", "m.room.retention", "", map[string]any{"max_lifetime": ms})
			}

			// Not confirmed: the homeserver's current state has no such
			// change (soft-failed, say). A message that took its lifetime
			// meanwhile gets the policy's again.
			push("t2", retention("$r1", 3_600_000), apptest.Message("$between", room, "@doc:h", "x"))
			if n := p.Count(t, `SELECT COUNT(*) FROM expiry WHERE event_id = '$between' AND due_at = received_at + 3600000`); n != 1 {
				t.Fatal("a message after the change did not take its lifetime")
			}
			p.RunDue(t)
			if due() != 0 || decisions("not-confirmed") != 1 {
				t.Fatalf("an unconfirmed change: %d due, %d not-confirmed records", due(), decisions("not-confirmed"))
			}
			if n := p.Count(t, `SELECT COUNT(*) FROM expiry WHERE event_id = '$between' AND due_at = received_at + 2592000000`); n != 1 {
				t.Fatal("the unconfirmed change's lifetime stayed on a message")
			}

			// Confirmed, but it would end 10 messages at once (limit 5): held.
			hs.maxLifetime = float64(3_000_000)
			push("t3", retention("$r2", 3_000_000))
			p.RunDue(t)
			var m dto.Metric
			p.Metrics.RetentionHeld.Write(&m)
			if due() != 0 || decisions("held") != 1 || m.GetCounter().GetValue() != 1 {
				t.Fatalf("over the limit: %d due, %d held records, metric %v", due(), decisions("held"), m.GetCounter().GetValue())
			}
			// A new message takes the room's lifetime at once (lifted to
			// the built-in retention_min, an hour).
			push("t4", apptest.Message("$new", room, "@doc:h", "y"))
			if n := p.Count(t, `SELECT COUNT(*) FROM expiry WHERE event_id = '$new' AND due_at = received_at + 3600000`); n != 1 {
				t.Fatal("a new message did not take the room's lifetime")
			}
			// An hour later the room still says so: it applies.
			p.Clock.Advance(time.Hour + time.Minute)
			p.RunDue(t)
			if due() != 10 || decisions("confirmed") != 1 {
				t.Fatalf("after the delay: %d due, %d confirmed", due(), decisions("confirmed"))
			}

			// A small change in another room applies at once.
			small := "!small:h"
			push("t5", apptest.State("$c2", small, "@mallory:h", "m.room.create", "", map[string]any{"room_version": "10"}),
				apptest.Message("$s1", small, "@doc:h", "x"))
			p.Clock.Advance(2 * time.Hour)
			hs.maxLifetime = float64(3_600_000)
			push("t6", apptest.State("$r3", small, "@mallory:h", "m.room.retention", "", map[string]any{"max_lifetime": 3_600_000}))
			p.RunDue(t)
			if decisions("applied") != 1 || p.Count(t, `SELECT COUNT(*) FROM expiry WHERE room_id = $1 AND due_at <= $2`, small, p.Clock.Now().UnixMilli()) != 1 {
				t.Fatalf("a small change was not applied at once")
			}
			// The retention event is redacted (Synapse sends redactions to
			// the service): redacted state has no effect, so the waiting
			// message gets the policy's 30 days back, and so do new ones.
			hs.maxLifetime = nil
			push("t7", map[string]any{"event_id": "$undo", "room_id": small, "sender": "@mallory:h", "type": "m.room.redaction",
				"redacts": "$r3", "content": map[string]any{"redacts": "$r3"}}, apptest.Message("$s2", small, "@doc:h", "y"))
			p.RunDue(t)
			if decisions("undone") != 1 || p.Count(t, `SELECT COUNT(*) FROM expiry WHERE room_id = $1 AND state = 'pending' AND due_at = received_at + 2592000000`, small) != 2 {
				t.Fatalf("redacting the retention event did not undo it (%d undone records)", decisions("undone"))
			}
		})
	}
}

// A policy reload is no way around the hold: where a room's own retention
// makes the lifetime shorter, the reload applies only the policy's own
// lifetime and queues a room_retention job, which confirms and holds.
func TestPolicyReloadDoesNotBypassTheRetentionHold(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	ctx := context.Background()
	t0 := p.Clock.Now().UnixMilli()
	p.Exec(t, `INSERT INTO room_state (room_id, creator, updated_at, max_lifetime_ms) VALUES ('!ward:h', '@mallory:h', 0, 3600000)`)
	for i := range 200 {
		p.Exec(t, `INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state) VALUES ($1, '!ward:h', '@doc:h', $2, $3, 'pending')`,
			fmt.Sprintf("$m%d", i), t0-2*3600000, t0+30*86400000)
	}
	pol, err := policy.Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 30d\n  room_retention: honour\n"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := RescheduleExpiries(ctx, p.DB, pol, p.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if n != 200 || p.Count(t, `SELECT COUNT(*) FROM expiry WHERE due_at <= $1`, t0) != 0 {
		t.Fatalf("%d rescheduled; %d due at once, want none (the room's hour is not applied by a reload)", n, p.Count(t, `SELECT COUNT(*) FROM expiry WHERE due_at <= $1`, t0))
	}
	if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'room_retention'`); c != 1 {
		t.Fatalf("%d room_retention jobs queued, want 1", c)
	}
}
