package identity

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

type fakeGate struct {
	mu             sync.Mutex
	db             *store.DB         // memberships as the dispatcher recorded them
	current        map[string]string // user → their current membership event, where the test sets one
	creatorPowered bool
	kicks          []string // actor:user:reason
	notices        []string // target:text
}

func (f *fakeGate) Kick(_ context.Context, actAs, room, user, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.creatorPowered {
		return mautrix.MForbidden
	}
	f.kicks = append(f.kicks, actAs+">"+user+":"+reason)
	return nil
}

func (f *fakeGate) Membership(ctx context.Context, _, room, user string) (string, string, error) {
	var m string
	err := f.db.R.QueryRowContext(ctx, `SELECT membership FROM room_member WHERE room_id = $1 AND user_id = $2`, room, user).Scan(&m)
	if err != nil && err != sql.ErrNoRows {
		return "", "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current[user], m, nil
}

type fakeGateBot struct{ g *fakeGate }

func (b fakeGateBot) Kick(_ context.Context, room, user, reason string) error {
	b.g.mu.Lock()
	defer b.g.mu.Unlock()
	b.g.kicks = append(b.g.kicks, "bot>"+user+":"+reason)
	return nil
}

func (b fakeGateBot) SendNotice(_ context.Context, room, inviter, target, text, txnID string) error {
	b.g.mu.Lock()
	defer b.g.mu.Unlock()
	b.g.notices = append(b.g.notices, target+">"+text)
	return nil
}

// The gate on real events through the pipeline: who is let in, who is
// removed and by whom, what the inviter and the room are told; then the
// sweep of existing members after the roster changes.
func TestMemberGate(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "policy.yaml")
			src := "version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\nrooms:\n  - room_id: \"!icu:h\"\n    members: verified\n    roles: [physician, nurse]\n    announce_roles: true\n"
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			holder, err := appservice.NewPolicyHolder(ctx, path, p.DB, p.Chain, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			pol := holder.Current()
			decider := &appservice.PolicyDecider{Policy: holder, Bot: "@hipaa:h", Keys: p.Chain.Keys()}
			decider.Use(New(p.Env())) // the member check decider
			p.Disp = appservice.NewDispatcher(p.DB, p.Chain, decider, p.Metrics, zerolog.Nop(), p.Runner.Wake)
			g := &fakeGate{db: p.DB, current: map[string]string{}, creatorPowered: true}
			gateDeps := GateDeps{HS: g, Bot: fakeGateBot{g}, Policy: func() *policy.Policy { return pol },
				Exempt: func(u string) bool { return u == "@hipaa:h" || u == "@admin:h" }}
			p.Handle(gateJobs(p.Env(), gateDeps))
			day := func(s string) time.Time { d, _ := time.Parse("2006-01-02", s); return d }
			verifyClinicians(t, p,
				roster.Clinician{UserID: "@att:h", NPI: "1234567893", Role: "physician", VerifiedBy: "x"},
				roster.Clinician{UserID: "@rn:h", NPI: "1003000126", Role: "nurse", Department: "ICU", LicenceExpires: day("2099-01-01"), VerifiedBy: "x"},
				roster.Clinician{UserID: "@rph:h", NPI: "1679576722", Role: "pharmacist", VerifiedBy: "x"},
			)
			push := func(txn string, evs ...map[string]any) {
				t.Helper()
				if code := p.Put(t, txn, evs...); code != 200 {
					t.Fatal(code)
				}
				for n := 1; n > 0; {
					if n, err = p.Disp.DispatchBatch(ctx); err != nil {
						t.Fatal(err)
					}
				}
				p.RunDue(t)
			}
			push("t1",
				apptest.State("$c", "!icu:h", "@att:h", "m.room.create", "", map[string]any{"creator": "@att:h", "room_version": "10"}),
				apptest.Member("$1", "!icu:h", "@att:h", "@att:h", "join"),
				apptest.Member("$2", "!icu:h", "@att:h", "@stranger:h", "invite"),
				apptest.Member("$3", "!icu:h", "@att:h", "@rn:h", "invite"),
				apptest.Member("$4", "!icu:h", "@rn:h", "@rn:h", "join"),
				apptest.Member("$5", "!icu:h", "@att:h", "@rph:h", "invite"),
				apptest.Member("$6", "!icu:h", "@admin:h", "@admin:h", "join"),
				apptest.Member("$7", "!other:h", "@x:h", "@stranger:h", "join"), // not a gated room
			)
			want := []string{
				"@att:h>@rph:h:this room is for physician, nurse; your verified role is pharmacist.",
				"@att:h>@stranger:h:Only verified clinicians may be in this room (hospital policy): your account is not on the verified clinician roster. Ask your administrator to verify you.",
			}
			// Jobs run two at a time: compare as sets.
			slices.Sort(g.kicks)
			slices.Sort(g.notices)
			if strings.Join(g.kicks, "\n") != strings.Join(want, "\n") {
				t.Fatalf("kicks:\n%s", strings.Join(g.kicks, "\n"))
			}
			wantNotices := []string{
				">@att:h joined: verified physician.",
				">@rn:h joined: verified nurse (ICU).",
				"@att:h>your invite of @rph:h was withdrawn: this room is for physician, nurse; their verified role is pharmacist.",
				"@att:h>your invite of @stranger:h was withdrawn: only verified clinicians may be in this room, and they are not on the verified roster.",
			}
			if strings.Join(g.notices, "\n") != strings.Join(wantNotices, "\n") {
				t.Fatalf("notices:\n%s", strings.Join(g.notices, "\n"))
			}
			// A check that runs late, when the person's membership has moved on
			// (a newer invite), leaves it to the newer one's own check.
			g.kicks, g.notices = nil, nil
			g.current["@late:h"] = "$newer"
			payload := []byte(`{"room":"!icu:h","event_id":"$older","user":"@late:h","membership":"invite","creator":"@att:h"}`)
			if code := p.Put(t, "t1b", apptest.Member("$newer", "!icu:h", "@att:h", "@late:h", "invite")); code != 200 {
				t.Fatal(code)
			}
			for n := 1; n > 0; {
				if n, err = p.Disp.DispatchBatch(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := memberGateHandler(p.Env(), gateDeps)(ctx, &appservice.Job{ID: 999, Payload: payload}); err != nil || len(g.kicks) != 0 {
				t.Fatalf("a stale check acted: %v %v", err, g.kicks)
			}
			g.current["@late:h"] = "$newer"
			p.RunDue(t) // the newer invite's own check
			if len(g.kicks) != 1 || !strings.HasPrefix(g.kicks[0], "@att:h>@late:h:") {
				t.Fatalf("the current invite's check: %v", g.kicks)
			}
			// The kicks come back as leaves; nothing more happens.
			g.kicks, g.notices = nil, nil
			push("t2", apptest.Member("$8", "!icu:h", "@att:h", "@stranger:h", "leave"), apptest.Member("$9", "!icu:h", "@att:h", "@rph:h", "leave"),
				apptest.Member("$10", "!icu:h", "@att:h", "@late:h", "leave"))
			if len(g.kicks)+len(g.notices) != 0 {
				t.Fatalf("after the leaves: %v %v", g.kicks, g.notices)
			}

			// The nurse's verification is revoked; the sweep removes her, as
			// the bot when the creator has lost the power; admins stay.
			if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return RevokeTx(ctx, tx, p.Chain, "@rn:h", "left", "os:admin") }); err != nil {
				t.Fatal(err)
			}
			g.creatorPowered = false
			sw := NewMemberSweeper(p.DB, func() *policy.Policy { return pol }, func(u string) bool { return u == "@hipaa:h" || u == "@admin:h" }, p.Clock.Now, nil, zerolog.Nop())
			if n, err := sw.Sweep(ctx); err != nil || n != 1 {
				t.Fatalf("sweep queued %d (%v)", n, err)
			}
			if n, _ := sw.Sweep(ctx); n != 1 || p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'check_member' AND dedupe_key LIKE 'member-sweep:%'`) != 1 {
				t.Fatal("a second sweep queued the same removal again")
			}
			p.RunDue(t)
			if strings.Join(g.kicks, "|") != "bot>@rn:h:Only verified clinicians may be in this room (hospital policy): your verification has been withdrawn. Ask your administrator." ||
				strings.Join(g.notices, "|") != ">@rn:h was removed: their verification as a clinician was withdrawn." {
				t.Fatalf("removal: %v %v", g.kicks, g.notices)
			}
			var got []string
			for _, r := range p.Records(t) {
				if r["type"] == "membership" {
					d, _ := r["detail"].(string)
					got = append(got, r["action"].(string)+":"+d)
				}
			}
			slices.Sort(got)
			if s := strings.Join(got, ","); s != "admit:,admit:,admit:,admit:,refuse:not_verified,refuse:not_verified,refuse:role_not_allowed,remove:verification_revoked" {
				t.Fatalf("membership records %s", s)
			}
		})
	}
}

// A revocation made by another process (the roster command, the admin
// API) reaches the running member sweep within a second or two, not at the
// next full sweep (here an hour away).
func TestRevocationReachesTheRunningSweepAtOnce(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pol, err := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - room_id: \"!icu:h\"\n    members: verified\n"))
	if err != nil {
		t.Fatal(err)
	}
	p.Exec(t, `INSERT INTO room_state (room_id, creator, updated_at) VALUES ('!icu:h', '@att:h', 0)`)
	p.Exec(t, `INSERT INTO room_member (room_id, user_id, membership, updated_at) VALUES ('!icu:h', '@rn:h', 'join', 0)`)
	verifyClinicians(t, p, roster.Clinician{UserID: "@rn:h", NPI: "1003000126", Role: "nurse", VerifiedBy: "x"})
	sw := NewMemberSweeper(p.DB, func() *policy.Policy { return pol }, func(string) bool { return false }, p.Clock.Now, nil, zerolog.Nop())
	go sw.Run(ctx, time.Hour)
	time.Sleep(300 * time.Millisecond) // its first sweep finds nothing to do
	if n := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'check_member'`); n != 0 {
		t.Fatalf("%d removals queued for a verified nurse", n)
	}
	revoked := time.Now()
	if err := Revoke(ctx, p.DB, p.Chain, "@rn:h", "left the hospital", "os:admin"); err != nil {
		t.Fatal(err)
	}
	for p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'check_member'`) == 0 {
		if time.Since(revoked) > 2*time.Second {
			t.Fatal("the revocation did not reach the running sweep within 2 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("removal queued %s after the revocation", time.Since(revoked).Round(time.Millisecond))
}
