package compliance

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/enforce"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// decideOnly is enforcement's decider and outcome hook without its job
// handlers (the test's stand in for the homeserver).
type decideOnly struct{ f *enforce.Feature }

func (decideOnly) Name() string                        { return "enforce" }
func (decideOnly) Jobs() map[string]appservice.Handler { return nil }
func (d decideOnly) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, s policy.Effective, dec *appservice.Decision) {
	d.f.DecideEvent(ev, room, pol, s, dec)
}
func (d decideOnly) JobOutcome(ctx context.Context, tx *sql.Tx, j *appservice.Job, state, errText string, now time.Time) error {
	return d.f.JobOutcome(ctx, tx, j, state, errText, now)
}

const canary = "CANARY-Ward7-Jane-Doe-MRN-55501"

// seeded is a deployment with one of every finding: the trail the engine
// wrote for real (plaintext redacted after 150 ms, encryption that could
// not be turned on), records the other features write, an exporter
// behind, a stale backup, an old homeserver.
type seeded struct {
	p       *apptest.Pipeline
	in      Input
	users   []string
	rooms   []string
	signing *audit.SigningKey
}

func seed(t *testing.T, dbType string, redactTakes time.Duration, policyYAML string) *seeded {
	p := apptest.New(t, dbType)
	holder := p.UsePolicy(t, policyYAML)
	p.Add(t, decideOnly{enforce.New(p.Env())})
	p.Handle(map[string]appservice.Handler{
		"redact": func(ctx context.Context, j *appservice.Job) error { p.Clock.Advance(redactTakes); return nil },
		"notice": func(ctx context.Context, j *appservice.Job) error { return nil },
		// The bot has no power in !open.
		"enable_encryption": func(ctx context.Context, j *appservice.Job) error {
			if strings.Contains(string(j.Payload), "!open:hs") {
				return appservice.Permanent(errors.New("M_FORBIDDEN"))
			}
			return nil
		},
		"bot_join": func(ctx context.Context, j *appservice.Job) error { return nil },
	})
	ctx := context.Background()
	start := p.Clock.Now()
	enc := map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}
	events := []map[string]any{
		testkit.State("$c1", "!ward7:hs", "@alice:hs", "m.room.create", "", map[string]any{"creator": "@alice:hs"}),
		testkit.State("$e1", "!ward7:hs", "@alice:hs", "m.room.encryption", "", enc),
		testkit.State("$c2", "!open:hs", "@bob:hs", "m.room.create", "", map[string]any{"creator": "@bob:hs"}),
	}
	if code := p.Put(t, "t1", events...); code != 200 {
		t.Fatal(code)
	}
	p.Dispatch(t)
	p.RunDue(t)
	for _, id := range []string{"$m1", "$m2", "$m3"} {
		p.Clock.Advance(time.Minute)
		if code := p.Put(t, "m"+id, testkit.Message(id, "!ward7:hs", "@alice:hs", canary)); code != 200 {
			t.Fatal(code)
		}
		p.Dispatch(t)
		for p.RunDue(t) > 0 {
		}
	}
	// What other features record (their own tests show when they do).
	keys := p.Chain.Keys()
	alice, bob := keys.User("@alice:hs"), keys.User("@bob:hs")
	recs := []*audit.Record{
		{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: bob, Room: keys.Room("!ward7:hs"), Action: "refuse", Detail: "not_verified"},
		{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: bob, Room: keys.Room("!ward7:hs"), Action: "refuse", Detail: "not_verified"},
		{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: alice, Room: keys.Room("!ward7:hs"), Action: "remove", Detail: "licence_expired"},
		{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: alice, Room: keys.Room("!ward7:hs"), Action: "admit", Detail: "verified"},
		{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: "unverified_warned", Detail: alice, Count: 2},
		{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: "unverified_signed_out", Detail: alice, Count: 1},
		{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: "idle_logoff", Detail: bob, Count: 3},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeSuccess, Action: "requested", Detail: bob, JobID: 1},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeSuccess, Action: "revoked", Detail: bob, JobID: 1, Count: 2},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeSuccess, Action: "done", Detail: bob, JobID: 1},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeSuccess, Action: "requested", Detail: alice, JobID: 2},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeFailure, Action: "failed", Detail: alice, JobID: 2},
		{Type: audit.TypeWipe, Outcome: audit.OutcomeSuccess, Action: "requested", Detail: alice, JobID: 3},
		{Type: audit.TypeHold, Outcome: audit.OutcomeSuccess, Actor: "os:dpo", Action: "place", Detail: alice, JobID: 1},
		{Type: audit.TypeArchive, Outcome: audit.OutcomeFailure, Actor: bob, Action: "missing", Detail: "withheld:m.unverified"},
		{Type: audit.TypeAuditRead, Outcome: audit.OutcomeSuccess, Actor: "os:root", Action: "backup", Count: 10},
		{Type: audit.TypeTraining, Outcome: audit.OutcomeSuccess, Actor: alice, Action: "sent"},
		{Type: audit.TypeTraining, Outcome: audit.OutcomeSuccess, Actor: bob, Action: "sent"},
		{Type: audit.TypeTraining, Outcome: audit.OutcomeSuccess, Actor: alice, Action: "acknowledged"},
		{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeDenied, Actor: bob, Action: "refused", Detail: "not_verified"},
		{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeSuccess, Actor: alice, Room: keys.Room("!ward7:hs"), Action: "granted", Count: 1800},
		{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeSuccess, Actor: alice, Room: keys.Room("!ward7:hs"), Action: "ended", Count: 4},
	}
	if err := p.Chain.AppendTx(ctx, p.DB, recs...); err != nil {
		t.Fatal(err)
	}
	p.Exec(t, `INSERT INTO training (user_id, sent_at, acked_at) VALUES ('@alice:hs', 1, 2), ('@bob:hs', 1, 0)`)
	p.Exec(t, `INSERT INTO break_glass (request_id, user_id, room_id, reason, started_at, ends_at) VALUES ('$r', '@alice:hs', '!ward7:hs', 'coding', 1, $1)`,
		p.Clock.Now().Add(40*time.Hour).UnixMilli())
	p.Exec(t, `INSERT INTO legal_hold (room_id, user_id, reason, placed_by, placed_at, released_at) VALUES ('', '@alice:hs', 'complaint', 'os:dpo', $1, 0)`, p.Clock.Now().UnixMilli())
	// The backup ages past a day; the exporter delivered once, long ago.
	p.Exec(t, `INSERT INTO audit_export_cursor (name, seq, updated_at) VALUES ('local', 3, $1)`, p.Clock.Now().UnixMilli())
	p.Clock.Advance(30 * time.Hour)
	signing, err := audit.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	cp := &audit.Checkpointer{Chain: p.Chain, DB: p.DB, Key: signing, Every: 1, Interval: time.Minute}
	if _, err := cp.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{}
	cfg.Homeserver.Software = "dendrite"
	cfg.Database.Type = dbType
	cfg.Compliance.HomeserverMinVersion = "0.13.8"
	cfg.Compliance.BackupMaxAge = config.Duration(26 * time.Hour)
	cfg.Compliance.ExporterMaxLag = config.Duration(5 * time.Minute)
	cfg.Audit.Exporters = []config.Exporter{{Name: "local"}, {Name: "siem"}}
	return &seeded{p: p, signing: signing, users: []string{"@alice:hs", "@bob:hs", alice, bob}, rooms: []string{"!ward7:hs", "!open:hs", keys.Room("!ward7:hs"), keys.Room("!open:hs")},
		in: Input{Config: cfg, DB: p.DB, Keys: keys, Public: signing.Pub, Policy: holder.Current(), PolicySince: start, PolicyFileRefused: true,
			Homeserver: func(context.Context) (homeserver.Software, error) {
				return homeserver.Software{Name: "Dendrite", Version: "0.13.7+9f2c1ab"}, nil
			},
			Since: start.Add(-time.Hour), Until: p.Clock.Now()}}
}

// The report from a trail the engine wrote, field by field, with the
// findings it calls for ranked; nothing in any format names anyone.
func TestReportFromTheTrail(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			s := seed(t, dbType, 150*time.Millisecond, "version: 1\ntraining: on\n")
			rep, err := Gather(context.Background(), s.in)
			if err != nil {
				t.Fatal(err)
			}
			ev := rep.Evidence
			check := func(name string, got, want any) {
				t.Helper()
				if g, w := jsonOf(got), jsonOf(want); g != w {
					t.Errorf("%s = %s, want %s", name, g, w)
				}
			}
			check("rooms", ev.Rooms, Rooms{Known: 2, EncryptionRequired: 2, Encrypted: 1, Unencrypted: 1, NeedAttention: 1})
			check("plaintext", ev.Plaintext, Plaintext{Redacted: 3, WindowSamples: 3, WindowP50Ms: 150, WindowP99Ms: 150, WindowMaxMs: 150})
			check("membership", ev.Membership, Membership{Admitted: 1, Refused: map[string]int64{"not_verified": 2}, Removed: map[string]int64{"licence_expired": 1}})
			check("sessions", ev.Sessions, Sessions{UnverifiedWarned: 2, UnverifiedSignedOut: 1, IdleLogoffs: 3})
			check("wipes", ev.Wipes, Wipes{Requested: 3, Confirmed: 1, Failed: 1, Unconfirmed: 1})
			check("holds", ev.Holds, Holds{Standing: 1, Placed: 1})
			check("archive", ev.Archive, Archive{Missing: 1})
			check("pushers", ev.Pushers, Pushers{Why: "not checked yet"})
			check("jobs", ev.Jobs, Jobs{Failed: 1})
			check("training", ev.Training, Training{On: true, Sent: 2, Acknowledged: 1, Unacknowledged: 1, SentInPeriod: 2, AckedInPeriod: 1})
			check("emergency", ev.Emergency, Emergency{Granted: 1, Refused: map[string]int64{"not_verified": 1}, Ended: 1, Messages: 4, Open: 1})
			check("days", ev.Days, []DayCounts{{Date: "2026-03-01", Plaintext: 3, Refused: 2, Signouts: 4}, {Date: "2026-03-02"}})
			// The checkpoint vouches for the record before its own.
			if a := ev.Audit; !a.Intact || a.Head != a.Records || a.CheckpointSeq != a.Head-1 || a.CheckpointsChecked != 1 || a.KeyID != s.signing.ID() ||
				a.PublicKey != audit.FormatPublicKey(s.signing.Pub) || a.Reads != 1 || a.CheckpointTime.IsZero() {
				t.Errorf("audit = %+v", a)
			}
			if len(ev.Exporters) != 2 || !ev.Exporters[0].Lagging || ev.Exporters[0].Name != "local" || ev.Exporters[0].Behind != ev.Audit.Head-3 ||
				ev.Exporters[0].LagSeconds != 30*3600 || ev.Exporters[1].Name != "siem" || ev.Exporters[1].Behind != ev.Audit.Head || !ev.Exporters[1].Lagging {
				t.Errorf("exporters = %+v", ev.Exporters)
			}
			wantBackup := Backup{MaxAgeSeconds: 26 * 3600}
			if dbType == "sqlite3" {
				wantBackup = Backup{Applicable: true, Last: s.in.Until.Add(-30 * time.Hour).UTC(), AgeSeconds: 30 * 3600, MaxAgeSeconds: 26 * 3600}
			}
			check("backup", ev.Backup, wantBackup)
			if d := rep.Deployment; d.HomeserverVersion != "0.13.7+9f2c1ab" || d.HomeserverName != "Dendrite" || d.HomeserverPatched == nil || *d.HomeserverPatched ||
				!d.PolicyFileRefused || d.PolicyHash != s.in.Policy.Hash || d.Database != dbType {
				t.Errorf("deployment = %+v", d)
			}
			// Most urgent first: severity, then how many.
			want := "rooms-unencrypted/critical/1 exporters-lagging/high/2 policy-file-refused/high/1 homeserver-outdated/high/1 "
			if dbType == "sqlite3" {
				want += "backup-stale/high/1 "
			}
			want += "wipes-failed/high/1 jobs-failed/high/1 plaintext-sent/medium/3 unverified-sessions/medium/2 wipes-unconfirmed/medium/1 " +
				"emergency-access-used/medium/1 archive-missing/medium/1 members-refused/low/3 pushers-unchecked/low/1 training-unacknowledged/low/1"
			if got := findingList(rep); got != want {
				t.Errorf("findings\n%s\nwant\n%s", got, want)
			}
			for i, f := range rep.Findings {
				if f.Rank != i+1 || f.Fix == "" || f.Section == "" {
					t.Errorf("finding %+v", f)
				}
			}
			noPHI(t, rep, s)
		})
	}
}

// The findings the seeded trail does not call for, each from its own
// condition.
func TestEachFindingHasItsCondition(t *testing.T) {
	cases := []struct {
		id     string
		policy string
		slow   bool
		change func(t *testing.T, s *seeded)
	}{
		{id: "audit-chain-broken", change: func(t *testing.T, s *seeded) {
			s.p.Exec(t, `UPDATE audit SET ts = ts + 1 WHERE seq = 5`)
		}},
		{id: "homeserver-version-unknown", change: func(t *testing.T, s *seeded) {
			s.in.Homeserver = func(context.Context) (homeserver.Software, error) {
				return homeserver.Software{}, errors.New("HTTP 404")
			}
		}},
		{id: "homeserver-minimum-unset", change: func(t *testing.T, s *seeded) { s.in.Config.Compliance.HomeserverMinVersion = "" }},
		{id: "pushers-content", change: func(t *testing.T, s *seeded) {
			s.in.Config.Homeserver.Software = "synapse"
			s.p.Exec(t, `INSERT INTO pusher_check (user_id, pushers, with_content, checked_at) VALUES ('@alice:hs', 1, 1, 5), ('@bob:hs', 2, 0, 5)`)
			s.p.Exec(t, `INSERT INTO pusher_check_run (id, checked_at, users) VALUES (1, 5, 2)`)
		}},
		{id: "enforcement-slow", slow: true},
		{id: "training-off", policy: "version: 1\n"},
		{id: "checkpoints-missing", change: func(t *testing.T, s *seeded) {
			s.p.Exec(t, `DELETE FROM audit_checkpoint`)
		}},
		{id: "rooms-dry-run", policy: "version: 1\ndefaults:\n  dry_run: true\n"},
		{id: "rooms-attention", change: func(t *testing.T, s *seeded) {
			s.p.Exec(t, `INSERT INTO room_problem (room_id, action, detail, since) VALUES ('!ward7:hs', 'quarantine_media', 'no API', 5)`)
		}},
	}
	for _, c := range cases {
		t.Run(c.id, func(t *testing.T) {
			took, pol := 150*time.Millisecond, "version: 1\ntraining: on\n"
			if c.slow {
				took = 700 * time.Millisecond
			}
			if c.policy != "" {
				pol = c.policy
			}
			s := seed(t, "sqlite3", took, pol)
			before, err := Gather(context.Background(), s.in)
			if err != nil {
				t.Fatal(err)
			}
			if c.change != nil {
				if strings.Contains(findingList(before), c.id+"/") {
					t.Fatalf("%s before its condition: %s", c.id, findingList(before))
				}
				c.change(t, s)
			}
			rep, err := Gather(context.Background(), s.in)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(findingList(rep), c.id+"/") {
				t.Fatalf("no %s: %s", c.id, findingList(rep))
			}
			if c.id == "audit-chain-broken" && (rep.Findings[0].ID != c.id || rep.Evidence.Audit.BrokenAt != 5) {
				t.Fatalf("a broken chain is not the first finding: %s, %+v", findingList(rep), rep.Evidence.Audit)
			}
			noPHI(t, rep, s)
		})
	}
}

func findingList(rep *Report) string {
	var parts []string
	for _, f := range rep.Findings {
		parts = append(parts, fmt.Sprintf("%s/%s/%d", f.ID, f.Severity, f.Count))
	}
	return strings.Join(parts, " ")
}

// noPHI: no format holds the message, a user or room ID, or a pseudonym.
func noPHI(t *testing.T, rep *Report, s *seeded) {
	t.Helper()
	for _, format := range Formats {
		var buf bytes.Buffer
		if err := rep.Write(&buf, format); err != nil {
			t.Fatal(err)
		}
		for _, phi := range append(append([]string{canary, "alice", "bob", "ward7"}, s.users...), s.rooms...) {
			if strings.Contains(buf.String(), phi) {
				t.Errorf("the %s report holds %q", format, phi)
			}
		}
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCodeSpans(t *testing.T) {
	for in, want := range map[string]string{
		"run `a <b>` now":  "run <code>a &lt;b&gt;</code> now",
		"odd ` tick":       "odd ` tick",
		"`x` and `y`":      "<code>x</code> and <code>y</code>",
		"<script>` & `</i": "&lt;script&gt;<code> &amp; </code>&lt;/i",
	} {
		if got := string(code(in)); got != want {
			t.Errorf("code(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAtLeast(t *testing.T) {
	for _, c := range []struct {
		v, min string
		want   bool
	}{
		{"0.13.8", "0.13.8", true}, {"0.13.8+9f2c1ab", "0.13.8", true}, {"0.13.7+9f2c1ab", "0.13.8", false},
		{"1.160.0", "1.150", true}, {"1.99.0", "1.150.0", false}, {"v1.160.0", "1.160", true}, {"1.160.0rc1", "1.160", true},
		{"2", "1.999.999", true}, {"", "0.1", false}, {"garbage", "0.0.1", false},
	} {
		if got := AtLeast(c.v, c.min); got != c.want {
			t.Errorf("AtLeast(%q, %q) = %v", c.v, c.min, got)
		}
	}
}

// Versions are totally ordered, whatever the homeserver says.
func FuzzAtLeast(f *testing.F) {
	for _, s := range []string{"0.13.8+9f2c1ab", "1.160.0rc1", "v2", "", "..", "99999999999999999999.1"} {
		f.Add(s, "1.150.0")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if !AtLeast(a, a) || !(AtLeast(a, b) || AtLeast(b, a)) {
			t.Fatalf("AtLeast(%q, %q) = %v, reverse %v", a, b, AtLeast(a, b), AtLeast(b, a))
		}
	})
}
