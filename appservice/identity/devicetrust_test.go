package identity

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

type fakeTrustHS struct {
	mu       sync.Mutex
	devices  map[string][]homeserver.Device
	signOuts []string
	deleted  []string
}

func (f *fakeTrustHS) DeviceInventory(_ context.Context, user string) ([]homeserver.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]homeserver.Device(nil), f.devices[user]...), nil
}

func (f *fakeTrustHS) SignOutEverywhere(_ context.Context, user string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signOuts = append(f.signOuts, user)
	f.devices[user] = nil
	return nil
}

func (f *fakeTrustHS) DeleteDevices(_ context.Context, _, user string, devices []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range devices {
		f.deleted = append(f.deleted, user+"/"+d)
		for i, x := range f.devices[user] {
			if x.ID == d {
				f.devices[user] = append(f.devices[user][:i], f.devices[user][i+1:]...)
				break
			}
		}
	}
	return nil
}

type fakeDM struct {
	mu      sync.Mutex
	rooms   int
	notices []string
}

func (f *fakeDM) CreateDM(_ context.Context, user string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rooms++
	return "!dm-" + user, nil
}

func (f *fakeDM) SendNotice(_ context.Context, room, _, target, text, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notices = append(f.notices, room+">"+target+": "+text)
	return nil
}

// Verified clinicians' sessions they have not cross-signed: warned once in a
// direct message; under sign_out, ended after the grace period (one device
// with Synapse's admin API, else all), unless verified in the meantime;
// nobody else's sessions are looked at.
func TestDeviceTrust(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		for _, caps := range []appservice.WipeCaps{{}, {AdminAPI: true, Admin: "@hipaa:h"}} {
			t.Run(fmt.Sprintf("%s/adminAPI=%v", dbType, caps.AdminAPI), func(t *testing.T) {
				p := apptest.New(t, dbType)
				ctx := context.Background()
				verifyClinicians(t, p,
					roster.Clinician{UserID: "@doc:h", NPI: "1234567893", Role: "physician", VerifiedBy: "x"},
					roster.Clinician{UserID: "@rn:h", NPI: "1003000126", Role: "nurse", VerifiedBy: "x"},
				)
				hs := &fakeTrustHS{devices: map[string][]homeserver.Device{
					"@doc:h":  {{ID: "PHONE", HasKeys: true, CrossSigned: true}, {ID: "TABLET", HasKeys: true}, {ID: "WEB"}},
					"@rn:h":   {{ID: "PAGER", HasKeys: true}},
					"@temp:h": {{ID: "X", HasKeys: true}}, // not on the roster
				}}
				dm := &fakeDM{}
				pol := &policy.Policy{UnverifiedSessions: policy.UnverifiedSignOut, UnverifiedSessionGrace: config.Duration(time.Hour)}
				p.Handle(deviceJobs(p.Env(), hs, dm, func() *policy.Policy { return pol }, caps))
				d := &DeviceTrust{DB: p.DB, Policy: func() *policy.Policy { return pol }, HS: hs, Now: p.Clock.Now, Log: zerolog.Nop()}
				if n, err := d.Sweep(ctx); err != nil || n != 2 {
					t.Fatalf("first sweep queued %d (%v), want the two warnings", n, err)
				}
				p.RunDue(t)
				if n, _ := d.Sweep(ctx); n != 0 {
					t.Fatalf("warned again (%d jobs)", n)
				}
				if len(dm.notices) != 2 || dm.rooms != 2 || !strings.Contains(dm.notices[0]+dm.notices[1], "!dm-@doc:h>@doc:h: your session TABLET is not verified") ||
					!strings.Contains(dm.notices[0]+dm.notices[1], "signs out unverified sessions after 1h0m0s") {
					t.Fatalf("notices %v (%d rooms)", dm.notices, dm.rooms)
				}
				// The nurse verifies her pager; the doctor does not.
				hs.devices["@rn:h"][0].CrossSigned = true
				p.Clock.Advance(time.Hour)
				if n, err := d.Sweep(ctx); err != nil || n != 1 {
					t.Fatalf("after the grace queued %d (%v)", n, err)
				}
				p.RunDue(t)
				if caps.AdminAPI {
					if strings.Join(hs.deleted, ",") != "@doc:h/TABLET" || len(hs.signOuts) != 0 || len(hs.devices["@doc:h"]) != 2 {
						t.Fatalf("deleted %v, sign-outs %v", hs.deleted, hs.signOuts)
					}
				} else if strings.Join(hs.signOuts, ",") != "@doc:h" || len(hs.deleted) != 0 {
					t.Fatalf("deleted %v, sign-outs %v", hs.deleted, hs.signOuts)
				}
				var actions []string
				for _, r := range p.Records(t) {
					if r["type"] == "session" {
						actions = append(actions, r["action"].(string))
					}
				}
				if strings.Join(actions, ",") != "unverified_warned,unverified_warned,unverified_signed_out" {
					t.Fatalf("session records %v", actions)
				}
				// allow: nothing is looked at.
				pol.UnverifiedSessions = policy.UnverifiedAllow
				hs.devices["@doc:h"] = append(hs.devices["@doc:h"], homeserver.Device{ID: "NEW", HasKeys: true})
				if n, _ := d.Sweep(ctx); n != 0 {
					t.Fatal("swept with unverified_sessions: allow")
				}
			})
		}
	}
}
