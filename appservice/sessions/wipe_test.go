package sessions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
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
	deleted  []string // devices deleted through the admin API
	deactive []string
}

// do runs one homeserver call against the fake's state, or fails as a
// homeserver that is down would.
func (f *fakeHS) do(call func()) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	call()
	return nil
}

func (f *fakeHS) DeleteDevices(ctx context.Context, admin, user string, devices []string) error {
	if admin != "@hipaa:h" {
		return errors.New("not a server admin")
	}
	return f.do(func() {
		f.deleted = append(f.deleted, devices...)
		f.devices[user] = slices.DeleteFunc(slices.Clone(f.devices[user]), func(d string) bool { return slices.Contains(devices, d) })
	})
}

func (f *fakeHS) Deactivate(ctx context.Context, admin, user string) error {
	return f.do(func() { f.deactive = append(f.deactive, user) })
}

var errDown = errors.New("connection refused")

func (f *fakeHS) SignOutEverywhere(ctx context.Context, user string) error {
	return f.do(func() { f.signouts++; f.devices[user] = nil })
}

func (f *fakeHS) Devices(ctx context.Context, user string) ([]string, error) {
	var out []string
	err := f.do(func() { out = f.devices[user] })
	return out, err
}

func (f *fakeHS) Redact(ctx context.Context, user, room, eventID, reason, txnID string) error {
	return f.do(func() { f.redacted = append(f.redacted, eventID) })
}

func (f *fakeHS) JoinedRooms(ctx context.Context, user string) ([]string, error) {
	var out []string
	err := f.do(func() { out = f.rooms[user] })
	return out, err
}

func (f *fakeHS) Leave(ctx context.Context, user, room string) error {
	return f.do(func() {
		f.rooms[user] = slices.DeleteFunc(slices.Clone(f.rooms[user]), func(r string) bool { return r == room })
	})
}

// The wipe's steps run in order, each recorded and audited; a homeserver that
// goes down mid-wipe makes the job retry, and it resumes where it stopped;
// the redaction scope follows policy.
func TestWipeStateMachine(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			// The user's messages: two in an enforced room, one in a room
			// policy leaves optional, one state event.
			evs := []map[string]any{
				apptest.Message("$m1", "!ward:h", "@bob:h", "x"), apptest.Message("$m2", "!ward:h", "@bob:h", "y"),
				apptest.Message("$c1", "!cafe:h", "@bob:h", "z"), apptest.Message("$a1", "!ward:h", "@alice:h", "w"),
				apptest.State("$s1", "!ward:h", "@bob:h", "m.room.topic", "", map[string]any{"topic": "t"}),
			}
			if code := p.Put(t, "t1", evs...); code != 200 {
				t.Fatal(code)
			}
			pol, err := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - room_id: \"!cafe:h\"\n    encryption: optional\n"))
			if err != nil {
				t.Fatal(err)
			}
			hs := &fakeHS{devices: map[string][]string{"@bob:h": {"PHONE", "LAPTOP"}}, rooms: map[string][]string{"@bob:h": {"!ward:h", "!cafe:h"}}}
			p.Handle(wipeJobs(p.Env(), hs, func() *policy.Policy { return pol }, appservice.WipeCaps{}))
			id, err := RequestWipe(ctx, p.DB, p.Chain, Wipe{User: "@bob:h", Offboard: true, Scope: "phi", Reason: "lost phone", RequestedBy: "os:admin"})
			if err != nil {
				t.Fatal(err)
			}
			hs.down = true
			p.RunDue(t)
			if w, _ := LoadWipe(ctx, p.DB, id); w.State != "requested" {
				t.Fatalf("state %s while the homeserver is down", w.State)
			}
			hs.down = false
			p.Clock.Advance(time.Minute)
			p.RunDue(t)
			w, err := LoadWipe(ctx, p.DB, id)
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
			for _, r := range p.Records(t) {
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
			if err := wipeHandler(p.Env(), hs, func() *policy.Policy { return pol }, appservice.WipeCaps{})(ctx, &appservice.Job{Payload: []byte(`{"wipe_id":1}`)}); err != nil || hs.signouts != 1 {
				t.Fatalf("re-run: %v, %d sign-outs", err, hs.signouts)
			}
		})
	}
}

// What each homeserver can do: with Synapse's admin API one device is
// deleted and the others stay, and offboarding can deactivate; without it,
// both are refused with the reason, and everything else signs out all.
func TestWipeByCapability(t *testing.T) {
	synapse := appservice.WipeCaps{AdminAPI: true, Admin: "@hipaa:h"}
	cases := []struct {
		name         string
		caps         appservice.WipeCaps
		wipe         Wipe
		wantState    string
		wantErr      string
		wantDevices  string // left afterwards
		wantDeleted  string
		wantSignOuts int
		wantDeact    bool
	}{
		{name: "generic: all sessions", wipe: Wipe{}, wantState: "done", wantSignOuts: 1},
		{name: "generic: one device refused", wipe: Wipe{Device: "PHONE"}, wantState: "failed", wantErr: "cannot sign out a single device", wantDevices: "PHONE,LAPTOP"},
		{name: "generic: deactivate refused", wipe: Wipe{Offboard: true, Deactivate: true}, wantState: "failed", wantErr: "cannot deactivate", wantDevices: "PHONE,LAPTOP"},
		{name: "synapse: all devices", caps: synapse, wipe: Wipe{}, wantState: "done", wantDeleted: "PHONE,LAPTOP"},
		{name: "synapse: one device", caps: synapse, wipe: Wipe{Device: "PHONE"}, wantState: "done", wantDevices: "LAPTOP", wantDeleted: "PHONE"},
		{name: "synapse: a device already gone", caps: synapse, wipe: Wipe{Device: "TABLET"}, wantState: "done", wantDevices: "PHONE,LAPTOP"},
		{name: "synapse: offboard and deactivate", caps: synapse, wipe: Wipe{Offboard: true, Deactivate: true}, wantState: "done", wantDeleted: "PHONE,LAPTOP", wantDeact: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := apptest.New(t, "sqlite3")
			ctx := context.Background()
			hs := &fakeHS{devices: map[string][]string{"@bob:h": {"PHONE", "LAPTOP"}}, rooms: map[string][]string{}}
			pol, _ := policy.Parse("p.yaml", []byte("version: 1\n"))
			p.Handle(wipeJobs(p.Env(), hs, func() *policy.Policy { return pol }, c.caps))
			w := c.wipe
			w.User, w.Scope, w.Reason, w.RequestedBy = "@bob:h", "none", "r", "os:admin"
			id, err := RequestWipe(ctx, p.DB, p.Chain, w)
			if err != nil {
				t.Fatal(err)
			}
			p.RunDue(t)
			got, _ := LoadWipe(ctx, p.DB, id)
			if got.State != c.wantState || !strings.Contains(got.LastError, c.wantErr) {
				t.Fatalf("state %s (%q), want %s (%q)", got.State, got.LastError, c.wantState, c.wantErr)
			}
			if d := strings.Join(hs.devices["@bob:h"], ","); d != c.wantDevices {
				t.Fatalf("devices left %q, want %q", d, c.wantDevices)
			}
			if d := strings.Join(hs.deleted, ","); d != c.wantDeleted || hs.signouts != c.wantSignOuts || (len(hs.deactive) > 0) != c.wantDeact {
				t.Fatalf("deleted %q, sign-outs %d, deactivated %v", d, hs.signouts, hs.deactive)
			}
		})
	}
}

func TestWipeRequestChecks(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	for _, w := range []Wipe{
		{User: "bob", Scope: "phi", Reason: "r"},
		{User: "@bob:h", Scope: "phi"},
		{User: "@bob:h", Scope: "some", Reason: "r"},
		{User: "@bob:h", Scope: "phi", Reason: "r", Deactivate: true},
		{User: "@bob:h", Scope: "phi", Reason: "r", Offboard: true, Deactivate: true, Device: "X"},
	} {
		if _, err := RequestWipe(context.Background(), p.DB, p.Chain, w); err == nil {
			t.Errorf("accepted %+v", w)
		}
	}
}

// The trail holds the steps a wipe ran: a plain wipe leaves no rooms, so it
// has no "offboarded" step; --redact none redacts nothing, so no
// "redacted" step. The state still moves through them to done.
func TestWipeAuditsOnlyStepsThatRan(t *testing.T) {
	cases := []struct {
		w    Wipe
		want string
	}{
		{Wipe{User: "@bob:h", Scope: "phi"}, "requested,revoked,redacted,done"},
		{Wipe{User: "@bob:h", Scope: "none"}, "requested,revoked,done"},
		{Wipe{User: "@bob:h", Scope: "all", Offboard: true}, "requested,revoked,redacted,offboarded,done"},
	}
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			for _, c := range cases {
				p := apptest.New(t, dbType)
				ctx := context.Background()
				hs := &fakeHS{devices: map[string][]string{"@bob:h": {"PHONE"}}, rooms: map[string][]string{"@bob:h": {"!ward:h"}}}
				p.Handle(wipeJobs(p.Env(), hs, func() *policy.Policy { return &policy.Policy{Version: 1, Hash: "builtin"} }, appservice.WipeCaps{}))
				c.w.Reason, c.w.RequestedBy = "lost phone", "os:admin"
				id, err := RequestWipe(ctx, p.DB, p.Chain, c.w)
				if err != nil {
					t.Fatal(err)
				}
				p.RunDue(t)
				if w, _ := LoadWipe(ctx, p.DB, id); w.State != "done" {
					t.Fatalf("%+v: state %s", c.w, w.State)
				}
				var steps []string
				for _, r := range p.Records(t) {
					if r["type"] == "wipe" {
						steps = append(steps, r["action"].(string))
					}
				}
				if got := strings.Join(steps, ","); got != c.want {
					t.Fatalf("scope %s offboard %v: audited %s, want %s", c.w.Scope, c.w.Offboard, got, c.want)
				}
			}
		})
	}
}

// The sessions' job kinds have the priorities the engine's table gives
// them: a wipe runs ahead of routine work; idle logoff is normal.
func TestSessionJobPriorities(t *testing.T) {
	if appservice.PriorityOf(JobWipe) != appservice.PriorityUrgent || appservice.PriorityOf(JobIdleLogoff) != appservice.PriorityNormal {
		t.Fatalf("wipe %d, idle_logoff %d", appservice.PriorityOf(JobWipe), appservice.PriorityOf(JobIdleLogoff))
	}
}

// A wipe after the metadata pruner has run still redacts every message of
// the user that exists: in a room where nothing expires, and under a hold;
// a message already redacted on expiry is gone from the inbox, as it is
// from the homeserver.
func TestWipeAfterPruning(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			cut := time.UnixMilli(1_800_000_000_000)
			old := cut.Add(-48 * time.Hour).UnixMilli()
			exec := func(q string, args ...any) {
				if _, err := p.DB.W.ExecContext(ctx, q, args...); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range []string{"$lives", "$expired", "$held"} {
				exec(`INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at) VALUES ($1, $2, 't', '!r:hs', 'm.room.encrypted', '@u:hs', $2)`, id, old)
			}
			exec(`INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES ('$expired', '!r:hs', '@u:hs', $1, $2, 'queued', $1)`, old, old+1)
			exec(`INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES ('$held', '!r:hs', '@u:hs', $1, $2, 'held', $1)`, old, old+1)
			exec(`INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at) VALUES ('expire', 'expire:$expired', '{}', 'done', $1, $1, $1)`, old)
			exec(`UPDATE dispatch_cursor SET seq = (SELECT MAX(seq) FROM inbox) WHERE id = 1`)
			if pr, err := appservice.PruneMetadata(ctx, p.DB, p.Chain, cut); err != nil || pr.Expiry != 1 {
				t.Fatalf("prune %+v %v", pr, err)
			}
			hs := &fakeHS{}
			n, _, err := redactWiped(ctx, p.DB, hs, &policy.Policy{Version: 1, Hash: "builtin"}, Wipe{ID: 1, User: "@u:hs", Scope: "all"})
			if err != nil || n != 2 || fmt.Sprint(hs.redacted) != "[$lives $held]" {
				t.Fatalf("wipe after pruning redacted %d: %v (%v)", n, hs.redacted, err)
			}
		})
	}
}

// A legal hold binds a wipe: messages in a held room, or all of a held
// user's, are left on the homeserver and counted (audited "held"), the
// rest redacted.
func TestWipeLeavesHeldMessages(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			p.Put(t, "t1", apptest.Message("$w1", "!ward:h", "@bob:h", "x"), apptest.Message("$h1", "!held:h", "@bob:h", "y"),
				apptest.Message("$h2", "!held:h", "@bob:h", "z"), apptest.Message("$c1", "!ward:h", "@carol:h", "w"))
			pol, err := policy.Parse("p.yaml", []byte("version: 1\n"))
			if err != nil {
				t.Fatal(err)
			}
			p.Exec(t, `INSERT INTO legal_hold (room_id, user_id, reason, placed_by, placed_at) VALUES ('!held:h', '', 'case 7', 'os:counsel', 1)`)
			p.Exec(t, `INSERT INTO legal_hold (room_id, user_id, reason, placed_by, placed_at) VALUES ('', '@carol:h', 'case 8', 'os:counsel', 1)`)
			// A released hold binds nothing.
			p.Exec(t, `INSERT INTO legal_hold (room_id, user_id, reason, placed_by, placed_at, released_by, released_at) VALUES ('!ward:h', '', 'old', 'os:counsel', 1, 'os:counsel', 2)`)
			hs := &fakeHS{devices: map[string][]string{"@bob:h": {"PHONE"}, "@carol:h": {"PAD"}}}
			p.Handle(wipeJobs(p.Env(), hs, func() *policy.Policy { return pol }, appservice.WipeCaps{}))
			bob, err := RequestWipe(ctx, p.DB, p.Chain, Wipe{User: "@bob:h", Scope: "all", Reason: "lost phone", RequestedBy: "os:admin"})
			if err != nil {
				t.Fatal(err)
			}
			carol, err := RequestWipe(ctx, p.DB, p.Chain, Wipe{User: "@carol:h", Scope: "all", Reason: "left", RequestedBy: "os:admin"})
			if err != nil {
				t.Fatal(err)
			}
			p.RunDue(t)
			wb, _ := LoadWipe(ctx, p.DB, bob)
			wc, _ := LoadWipe(ctx, p.DB, carol)
			if wb.State != "done" || wc.State != "done" || strings.Join(hs.redacted, ",") != "$w1" || wb.Redacted != 1 || wc.Redacted != 0 || wb.Held != 2 || wc.Held != 1 {
				t.Fatalf("redacted %v; bob's wipe %+v, carol's %+v", hs.redacted, wb, wc)
			}
			held := map[float64]float64{}
			for _, r := range p.Records(t) {
				if r["type"] == "wipe" && r["action"] == "held" {
					held[r["job_id"].(float64)] = r["count"].(float64)
				}
			}
			if held[float64(bob)] != 2 || held[float64(carol)] != 1 {
				t.Fatalf("held counts audited %v, want bob's wipe 2 and carol's 1", held)
			}
		})
	}
}
