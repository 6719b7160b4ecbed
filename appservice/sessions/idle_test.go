package sessions

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func TestAllIdle(t *testing.T) {
	now := time.UnixMilli(10_000_000)
	ago := func(d time.Duration) homeserver.Device { return homeserver.Device{LastSeen: now.Add(-d).UnixMilli()} }
	cases := []struct {
		name     string
		sessions []homeserver.Device
		want     bool
	}{
		{"no sessions: nothing to end", nil, false},
		{"one idle session", []homeserver.Device{ago(2 * time.Hour)}, true},
		{"exactly at the timeout", []homeserver.Device{ago(time.Hour)}, true},
		{"just under it", []homeserver.Device{ago(time.Hour - time.Millisecond)}, false},
		{"all idle", []homeserver.Device{ago(2 * time.Hour), ago(90 * time.Minute)}, true},
		{"one in use", []homeserver.Device{ago(5 * time.Hour), ago(time.Minute)}, false},
		{"last seen unknown", []homeserver.Device{ago(5 * time.Hour), {LastSeen: 0}}, false},
		{"seen in the future (clock skew)", []homeserver.Device{ago(-time.Hour)}, false},
	}
	for _, c := range cases {
		if got, _ := allIdle(c.sessions, time.Hour, now); got != c.want {
			t.Errorf("%s: idle %v, want %v", c.name, got, c.want)
		}
	}
}

// fakeSessions is a homeserver's session list per user.
type fakeSessions struct {
	mu       sync.Mutex
	sessions map[string][]homeserver.Device
	signOuts map[string]int
	deleted  map[string][]string
}

func (f *fakeSessions) Sessions(_ context.Context, user string) ([]homeserver.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[user], nil
}

func (f *fakeSessions) DeleteDevices(_ context.Context, admin, user string, devices []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted[user] = append(f.deleted[user], devices...)
	f.sessions[user] = slices.DeleteFunc(f.sessions[user], func(d homeserver.Device) bool { return slices.Contains(devices, d.ID) })
	return nil
}

func (f *fakeSessions) SignOutEverywhere(_ context.Context, user string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signOuts[user]++
	delete(f.sessions, user)
	return nil
}

// The sweep queues exactly the users whose sessions are all idle (not the
// exempt bot, not other servers' users); the job checks again before it
// signs out, signs out once, and audits it. With Synapse's admin API, the
// idle devices of a user who still uses another are deleted alone.
func TestIdleLogoff(t *testing.T) {
	type setup struct {
		dbType string
		caps   appservice.WipeCaps
	}
	var runs []setup
	for _, d := range storetest.Dialects {
		runs = append(runs, setup{d, appservice.WipeCaps{}}, setup{d, appservice.WipeCaps{AdminAPI: true, Admin: "@hipaa:h"}})
	}
	for _, run := range runs {
		dbType := run.dbType
		t.Run(fmt.Sprintf("%s/adminAPI=%v", dbType, run.caps.AdminAPI), func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			pol := &policy.Policy{SessionIdleTimeout: config.Duration(time.Hour)}
			now := p.Clock.Now()
			seen := func(d time.Duration) homeserver.Device {
				return homeserver.Device{ID: "D", LastSeen: now.Add(-d).UnixMilli()}
			}
			hs := &fakeSessions{signOuts: map[string]int{}, deleted: map[string][]string{}, sessions: map[string][]homeserver.Device{
				"@idle:h":    {seen(3 * time.Hour), seen(2 * time.Hour)},
				"@busy:h":    {{ID: "OLD", LastSeen: now.Add(-3 * time.Hour).UnixMilli()}, seen(time.Minute)},
				"@later:h":   {seen(2 * time.Hour)}, // uses the phone between sweep and job
				"@hipaa:h":   {seen(9 * time.Hour)},
				"@remote:x":  {seen(9 * time.Hour)},
				"@nosess:h":  nil,
				"@leaving:h": {seen(9 * time.Hour)},
			}}
			var evs []map[string]any
			for _, u := range []string{"@idle:h", "@busy:h", "@later:h", "@hipaa:h", "@remote:x", "@nosess:h", "@leaving:h"} {
				evs = append(evs, apptest.Member("$j"+u, "!r:h", u, u, "join"))
				if u == "@leaving:h" {
					evs = append(evs, apptest.Member("$l"+u, "!r:h", u, u, "leave"))
				}
			}
			if code := p.Put(t, "t1", evs...); code != 200 {
				t.Fatal(code)
			}
			for n := 1; n > 0; {
				var err error
				if n, err = p.Disp.DispatchBatch(ctx); err != nil {
					t.Fatal(err)
				}
			}
			p.Handle(idleJobs(p.Env(), hs, func() *policy.Policy { return pol }, run.caps))
			sw := &IdleSweeper{Caps: run.caps, DB: p.DB, Policy: func() *policy.Policy { return pol }, HS: hs, Domain: "h", Now: p.Clock.Now,
				Exempt: func(u string) bool { return u == "@hipaa:h" }}
			want := 2 // @idle and @later
			if run.caps.AdminAPI {
				want = 3 // and @busy's old device
			}
			n, err := sw.Sweep(ctx)
			if err != nil || n != want {
				t.Fatalf("queued %d (%v), want %d", n, err, want)
			}
			if again, _ := sw.Sweep(ctx); again != want || p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'idle_logoff'`) != want {
				t.Fatalf("a second sweep made new jobs for the same idle spell")
			}
			hs.sessions["@later:h"] = []homeserver.Device{seen(0)}
			p.RunDue(t)
			var got []string
			for _, r := range p.Records(t) {
				if r["type"] == audit.TypeSession {
					got = append(got, fmt.Sprintf("%s:%v:%v", r["action"], r["detail"] == p.Chain.Keys().User("@idle:h"), r["count"]))
				}
			}
			if !run.caps.AdminAPI {
				if hs.signOuts["@idle:h"] != 1 || len(hs.signOuts) != 1 || len(hs.deleted) != 0 {
					t.Fatalf("sign-outs %v, deleted %v", hs.signOuts, hs.deleted)
				}
				if strings.Join(got, ",") != "idle_logoff:true:2" {
					t.Fatalf("session records %v", got)
				}
			} else {
				if len(hs.signOuts) != 0 || strings.Join(hs.deleted["@idle:h"], ",") != "D,D" || strings.Join(hs.deleted["@busy:h"], ",") != "OLD" || len(hs.sessions["@busy:h"]) != 1 {
					t.Fatalf("sign-outs %v, deleted %v", hs.signOuts, hs.deleted)
				}
				slices.Sort(got)
				if strings.Join(got, ",") != "idle_device_logoff:false:1,idle_logoff:true:2" {
					t.Fatalf("session records %v", got)
				}
			}
			// Off in policy: nothing is swept.
			pol.SessionIdleTimeout = 0
			if n, _ := sw.Sweep(ctx); n != 0 {
				t.Fatalf("swept with idle logoff off")
			}
		})
	}
}

// Synapse records a session's activity at most every two minutes: a client
// syncing all along can show as unused for up to that long. A session is
// idle only once its last-seen time is older than the timeout plus that
// granularity, so an active user is never signed out for it (seen on
// Synapse 1.160 with a one-minute timeout before this was allowed for).
func TestIdleAllowsForLastSeenGranularity(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	seen := func(ago time.Duration) []homeserver.Device {
		return []homeserver.Device{{ID: "PHONE", LastSeen: now.Add(-ago).UnixMilli()}}
	}
	synapse := appservice.WipeCaps{AdminAPI: true, LastSeenGranularity: 2 * time.Minute}
	for _, c := range []struct {
		name string
		caps appservice.WipeCaps
		ago  time.Duration
		idle bool
	}{
		{"exact last-seen, past the timeout", appservice.WipeCaps{}, 61 * time.Second, true},
		{"exact last-seen, within it", appservice.WipeCaps{}, 59 * time.Second, false},
		{"Synapse, last seen 90 s ago: may be in use now", synapse, 90 * time.Second, false},
		{"Synapse, last seen 2m59s ago", synapse, 179 * time.Second, false},
		{"Synapse, last seen 3m01s ago", synapse, 181 * time.Second, true},
	} {
		all, _ := allIdle(seen(c.ago), c.caps.IdleAfter(time.Minute), now)
		if all != c.idle {
			t.Errorf("%s: idle %v, want %v", c.name, all, c.idle)
		}
	}
}
