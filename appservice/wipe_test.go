package appservice

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// fakeHS records what a wipe asked of the homeserver; down makes every call
// fail (a homeserver that is down).
type fakeHS struct {
	mu       sync.Mutex
	down     bool
	devices  map[string][]string
	rooms    map[string][]string
	redacted []string
	signouts int
}

var errDown = errors.New("connection refused")

func (f *fakeHS) SignOutEverywhere(ctx context.Context, user string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.signouts++
	f.devices[user] = nil
	return nil
}

func (f *fakeHS) Devices(ctx context.Context, user string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	return f.devices[user], nil
}

func (f *fakeHS) Redact(ctx context.Context, user, room, eventID, reason, txnID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.redacted = append(f.redacted, eventID)
	return nil
}

func (f *fakeHS) JoinedRooms(ctx context.Context, user string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	return f.rooms[user], nil
}

func (f *fakeHS) Leave(ctx context.Context, user, room string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	var keep []string
	for _, r := range f.rooms[user] {
		if r != room {
			keep = append(keep, r)
		}
	}
	f.rooms[user] = keep
	return nil
}

// The wipe's steps run in order, each recorded and audited; a homeserver that
// goes down mid-wipe makes the job retry, and it resumes where it stopped;
// the redaction scope follows policy.
func TestWipeStateMachine(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			// The user's messages: two in an enforced room, one in a room
			// policy leaves optional, one state event.
			evs := []map[string]any{
				msgEvent("$m1", "!ward:h", "@bob:h", "x"), msgEvent("$m2", "!ward:h", "@bob:h", "y"),
				msgEvent("$c1", "!cafe:h", "@bob:h", "z"), msgEvent("$a1", "!ward:h", "@alice:h", "w"),
				stateEvent("$s1", "!ward:h", "@bob:h", "m.room.topic", "", map[string]any{"topic": "t"}),
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			pol, err := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - room_id: \"!cafe:h\"\n    encryption: optional\n"))
			if err != nil {
				t.Fatal(err)
			}
			hs := &fakeHS{devices: map[string][]string{"@bob:h": {"PHONE", "LAPTOP"}}, rooms: map[string][]string{"@bob:h": {"!ward:h", "!cafe:h"}}}
			RegisterWipe(p.runner, hs, func() *policy.Policy { return pol })
			id, err := RequestWipe(ctx, p.db, p.chain, Wipe{User: "@bob:h", Offboard: true, Scope: "phi", Reason: "lost phone", RequestedBy: "os:admin"})
			if err != nil {
				t.Fatal(err)
			}
			hs.down = true
			p.runDue(t)
			if w, _ := LoadWipe(ctx, p.db, id); w.State != "requested" {
				t.Fatalf("state %s while the homeserver is down", w.State)
			}
			hs.down = false
			p.clock.Advance(time.Minute)
			p.runDue(t)
			w, err := LoadWipe(ctx, p.db, id)
			if err != nil {
				t.Fatal(err)
			}
			if w.State != "done" || w.Revoked != 2 || w.Redacted != 2 || w.Left != 2 || w.ConfirmedAt == 0 {
				t.Fatalf("after the homeserver returned: %+v", w)
			}
			if strings.Join(hs.redacted, ",") != "$m1,$m2" || len(hs.rooms["@bob:h"]) != 0 || hs.signouts != 1 {
				t.Fatalf("redacted %v, rooms left %v, sign-outs %d", hs.redacted, hs.rooms, hs.signouts)
			}
			steps := []string{}
			for _, r := range p.exported(t) {
				if r["type"] == "wipe" {
					steps = append(steps, r["action"].(string))
					if strings.Contains(r["detail"].(string), "bob") {
						t.Fatalf("a user ID in the audit trail: %v", r)
					}
				}
			}
			if strings.Join(steps, ",") != "requested,revoked,redacted,offboarded,done" {
				t.Fatalf("audited steps %v", steps)
			}
			// Running the finished job again changes nothing.
			if err := p.runner.handlers[JobWipe](ctx, &Job{Payload: []byte(`{"wipe_id":1}`)}); err != nil || hs.signouts != 1 {
				t.Fatalf("re-run: %v, %d sign-outs", err, hs.signouts)
			}
		})
	}
}

func TestWipeRequestChecks(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	for _, w := range []Wipe{
		{User: "bob", Scope: "phi", Reason: "r"},
		{User: "@bob:h", Scope: "phi"},
		{User: "@bob:h", Scope: "some", Reason: "r"},
	} {
		if _, err := RequestWipe(context.Background(), p.db, p.chain, w); err == nil {
			t.Errorf("accepted %+v", w)
		}
	}
}
