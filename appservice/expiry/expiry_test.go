package expiry

import (
	"context"
	"database/sql"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func TestExpiryFor(t *testing.T) {
	sk := ""
	day := policy.Effective{Retention: config.Duration(24 * time.Hour), RoomRetention: policy.RoomRetentionHonour}
	honour := policy.Effective{RoomRetention: policy.RoomRetentionHonour}
	cases := []struct {
		name string
		ev   appservice.Event
		s    policy.Effective
		room policy.RoomState
		due  int64 // 0: no expiry
	}{
		{"message", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, day, policy.RoomState{}, 1000 + 86_400_000},
		{"ciphertext too", appservice.Event{ID: "$e", Type: "m.room.encrypted", ReceivedAt: 1000}, day, policy.RoomState{}, 1000 + 86_400_000},
		{"sticker", appservice.Event{ID: "$s", Type: "m.sticker", ReceivedAt: 5}, day, policy.RoomState{}, 5 + 86_400_000},
		{"state events stay", appservice.Event{ID: "$t", Type: "m.room.topic", StateKey: &sk, ReceivedAt: 1000}, day, policy.RoomState{}, 0},
		{"redactions stay", appservice.Event{ID: "$r", Type: "m.room.redaction", ReceivedAt: 1000}, day, policy.RoomState{}, 0},
		{"no lifetime", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, policy.Effective{}, policy.RoomState{}, 0},
		{"the room's m.room.retention tightens", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, day, policy.RoomState{MaxLifetime: 3_600_000}, 1000 + 3_600_000},
		{"and cannot loosen", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, day, policy.RoomState{MaxLifetime: 10 * 86_400_000}, 1000 + 86_400_000},
		{"the room sets one where policy keeps", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, honour, policy.RoomState{MaxLifetime: 60_000}, 1000 + 60_000},
		{"the room's wish is ignored unless honoured", appservice.Event{ID: "$m", Type: "m.room.message", ReceivedAt: 1000}, policy.Builtin(), policy.RoomState{MaxLifetime: 60_000}, 0},
	}
	for _, c := range cases {
		got, ok := expiryFor(&c.ev, c.s, c.room)
		if (c.due == 0) == ok || (ok && got.DueAt != c.due) {
			t.Errorf("%s: %+v %v, want due %d", c.name, got, ok, c.due)
		}
	}
}

// With a fake clock: expiries come due in due order, not before; after
// downtime everything overdue is queued oldest first; a legal hold parks
// them and its release sends them back.
func TestExpiryPump(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			t0 := p.Clock.Now().UnixMilli()
			sched := []Expiry{
				{"$late", "!a:h", "@u:h", t0, t0 + 10_000, 0},
				{"$soon", "!a:h", "@u:h", t0, t0 + 5_000, 0},
				{"$last", "!a:h", "@v:h", t0, t0 + 20_000, 0},
				{"$held", "!legal:h", "@u:h", t0, t0 + 7_000, 0},
				{"$heldUser", "!a:h", "@suspect:h", t0, t0 + 8_000, 0},
			}
			if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
				if err := scheduleExpiries(ctx, p.DB, tx, sched); err != nil {
					return err
				}
				return scheduleExpiries(ctx, p.DB, tx, sched[:1]) // a replayed batch changes nothing
			}); err != nil {
				t.Fatal(err)
			}
			roomHold, err := PlaceHold(ctx, p.DB, p.Chain, "!legal:h", "", "litigation 2026-114", "os:counsel")
			if err != nil {
				t.Fatal(err)
			}
			userHold, err := PlaceHold(ctx, p.DB, p.Chain, "", "@suspect:h", "HR case", "os:counsel")
			if err != nil {
				t.Fatal(err)
			}
			pump := &Pump{DB: p.DB, Now: p.Clock.Now, Page: 2}
			queued := func() []string {
				var out []string
				rows, _ := p.DB.R.Query(`SELECT payload FROM job WHERE kind = 'expire' ORDER BY id`)
				defer rows.Close()
				for rows.Next() {
					var raw []byte
					rows.Scan(&raw)
					var pl appservice.ActionPayload
					json.Unmarshal(raw, &pl)
					out = append(out, pl.EventID)
				}
				return out
			}
			drain := func() {
				for {
					n, err := pump.Once(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if n == 0 {
						return
					}
				}
			}
			drain()
			if q := queued(); len(q) != 0 {
				t.Fatalf("queued before anything was due: %v", q)
			}
			p.Clock.Advance(5 * time.Second)
			drain()
			if q := queued(); len(q) != 1 || q[0] != "$soon" {
				t.Fatalf("at +5s: %v", q)
			}
			// Down for an hour: on return, everything overdue, oldest first,
			// in pages of 2; the held ones parked.
			p.Clock.Advance(time.Hour)
			drain()
			if q := queued(); len(q) != 3 || q[1] != "$late" || q[2] != "$last" {
				t.Fatalf("after downtime: %v", q)
			}
			if n := p.Count(t, `SELECT COUNT(*) FROM expiry WHERE state = 'held'`); n != 2 {
				t.Fatalf("%d held, want 2", n)
			}
			// Releasing the room hold sends its message back; the user hold stands.
			if err := ReleaseHold(ctx, p.DB, p.Chain, roomHold, "os:counsel"); err != nil {
				t.Fatal(err)
			}
			drain()
			if q := queued(); len(q) != 4 || q[3] != "$held" {
				t.Fatalf("after releasing the room hold: %v", q)
			}
			if err := ReleaseHold(ctx, p.DB, p.Chain, roomHold, "os:counsel"); err == nil {
				t.Fatal("a hold was released twice")
			}
			if err := ReleaseHold(ctx, p.DB, p.Chain, userHold, "os:counsel"); err != nil {
				t.Fatal(err)
			}
			drain()
			if q := queued(); len(q) != 5 || q[4] != "$heldUser" {
				t.Fatalf("after releasing the user hold: %v", q)
			}
			// Holds are audited without their reasons.
			holds := 0
			for _, r := range p.Records(t) {
				if r["type"] == "hold" {
					holds++
				}
				if b, _ := json.Marshal(r); strings.Contains(string(b), "litigation") || strings.Contains(string(b), "HR case") {
					t.Fatalf("a hold's reason is in the audit trail: %s", b)
				}
			}
			if holds != 4 {
				t.Fatalf("%d hold records, want 4 (two placed, two released)", holds)
			}
		})
	}
}

// A shorter lifetime brings waiting messages' ends forward; a longer one, or
// none, leaves them (and applies to new messages only).
func TestRescheduleOnPolicyChange(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			t0 := p.Clock.Now().UnixMilli()
			hour := int64(time.Hour / time.Millisecond)
			if err := p.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
				return scheduleExpiries(ctx, p.DB, tx, []Expiry{
					{"$a1", "!a:h", "@u:h", t0, t0 + hour, 0}, {"$a2", "!a:h", "@u:h", t0 + 1000, t0 + 1000 + hour, 0},
					{"$b1", "!b:h", "@u:h", t0, t0 + hour, 0},
				})
			}); err != nil {
				t.Fatal(err)
			}
			due := func(id string) int64 {
				var d int64
				p.DB.R.QueryRow(`SELECT due_at FROM expiry WHERE event_id = $1`, id).Scan(&d)
				return d
			}
			apply := func(yaml string) int64 {
				pol, err := policy.Parse("p.yaml", []byte(yaml))
				if err != nil {
					t.Fatal(err)
				}
				n, err := RescheduleExpiries(ctx, p.DB, pol, p.Clock.Now())
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			n := apply("version: 1\nrooms:\n  - room_id: \"!a:h\"\n    retention: 10m\n  - room_id: \"!b:h\"\n    retention: 2h\n")
			if n != 2 || due("$a1") != t0+600_000 || due("$a2") != t0+1000+600_000 || due("$b1") != t0+hour {
				t.Fatalf("moved %d: a1 %d a2 %d b1 %d", n, due("$a1")-t0, due("$a2")-t0, due("$b1")-t0)
			}
			if n := apply("version: 1\ndefaults:\n  retention: 0\n"); n != 0 || due("$a1") != t0+600_000 {
				t.Fatalf("keeping messages longer moved %d", n)
			}
			// Retroactive: a longer lifetime applies to waiting messages too.
			if n := apply("version: 1\nrooms:\n  - room_id: \"!a:h\"\n    retention: 2h\n    retroactive: true\n"); n != 2 || due("$a1") != t0+2*hour {
				t.Fatalf("retroactive 2h moved %d, a1 due +%d", n, due("$a1")-t0)
			}
			// Retroactive keep: waiting messages are no longer expired.
			if n := apply("version: 1\nrooms:\n  - room_id: \"!b:h\"\n    retention: 0\n    retroactive: true\n"); n != 1 ||
				p.Count(t, `SELECT COUNT(*) FROM expiry WHERE event_id = '$b1' AND state = 'cancelled'`) != 1 {
				t.Fatalf("retroactive keep changed %d", n)
			}
		})
	}
}

func TestLifetimeText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		72 * time.Hour:   "deleted 3 days after",
		24 * time.Hour:   "deleted 1 day after",
		36 * time.Hour:   "deleted 36 hours after",
		90 * time.Minute: "deleted 90 minutes after",
		3 * time.Second:  "deleted 3 seconds after",
		0:                "no longer deleted automatically",
	} {
		if got := lifetimeText(d); !strings.Contains(got, want) {
			t.Errorf("%s: %q", d, got)
		}
	}
}

// Members are told the lifetime when a room is created with one, when the
// room's own m.room.retention changes it, and when a new policy does.
func TestLifetimeNotices(t *testing.T) {
	sk := ""
	s := policy.Effective{Retention: config.Duration(72 * time.Hour), RoomRetention: policy.RoomRetentionHonour}
	room := &appservice.RoomInfo{ID: "!r:h"}
	create := &appservice.Event{ID: "$c", Type: "m.room.create", Sender: "@doc:h", StateKey: &sk, RoomID: "!r:h"}
	room.Apply(create)
	room.State.Creator = "@doc:h"
	if a, ok := lifetimeNotice(create, room, s); !ok || a.ActAs != "@doc:h" || !strings.Contains(a.Reason, "3 days") {
		t.Fatalf("creation: %+v %v", a, ok)
	}
	retention := func(id string, ms int) *appservice.Event {
		e := &appservice.Event{ID: id, Type: "m.room.retention", StateKey: &sk, RoomID: "!r:h",
			Raw: json.RawMessage(`{"type":"m.room.retention","state_key":"","content":{"max_lifetime":` + strconv.Itoa(ms) + `}}`)}
		room.Apply(e)
		return e
	}
	if a, ok := lifetimeNotice(retention("$t", 86_400_000), room, s); !ok || !strings.Contains(a.Reason, "1 day") {
		t.Fatalf("tightened by the room: %+v %v", a, ok)
	}
	if _, ok := lifetimeNotice(retention("$same", 86_400_000), room, s); ok {
		t.Fatal("told again though nothing changed")
	}
	if _, ok := lifetimeNotice(retention("$loose", 10*86_400_000), room, s); !ok {
		t.Fatal("back from 1 day to the policy's 3 days is a change")
	}
	if _, ok := lifetimeNotice(retention("$looser", 20*86_400_000), room, s); ok {
		t.Fatal("a looser wish changes nothing (the policy's 3 days stand)")
	}
	msg := &appservice.Event{ID: "$m", Type: "m.room.message", RoomID: "!r:h"}
	room.Apply(msg)
	if _, ok := lifetimeNotice(msg, room, s); ok {
		t.Fatal("a message is not a lifetime change")
	}

	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			for _, r := range []struct{ id, aliases string }{{"!a:h", "#icu-1:h"}, {"!b:h", "#cafe:h"}} {
				if _, err := p.DB.W.Exec(`INSERT INTO room_state (room_id, creator, aliases, updated_at) VALUES ($1, '@doc:h', $2, 0)`, r.id, r.aliases); err != nil {
					t.Fatal(err)
				}
			}
			p.Exec(t, `INSERT INTO room_link (room_id, kind, value, verified_at) VALUES ('!a:h', 'alias', '#icu-1:h', 0)`)
			old, _ := policy.Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 30d\n"))
			pol, _ := policy.Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 30d\nrooms:\n  - alias: \"#icu-*:h\"\n    retention: 72h\n"))
			n, err := NoticeLifetimeChanges(ctx, p.DB, p.Chain, old, pol)
			if err != nil || n != 1 {
				t.Fatalf("%d rooms told (%v), want 1", n, err)
			}
			if c := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'notice' AND payload LIKE '%!a:h%' AND payload LIKE '%3 days%'`); c != 1 {
				t.Fatalf("%d notices for !a:h", c)
			}
			if n, _ := NoticeLifetimeChanges(ctx, p.DB, p.Chain, pol, pol); n != 0 {
				t.Fatalf("the same policy again told %d rooms", n)
			}
		})
	}
}

// History is purged only up to the oldest message still waiting, never while
// a hold stands, and not before anything has expired.
func TestPurgeBound(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			ctx := context.Background()
			// The homeserver's timestamps are what count; receipt here is
			// a day later, as after an outage.
			ins := func(id, room, state string, origin int64) {
				if _, err := p.DB.W.Exec(`INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES ($1, $2, '@u:h', $3, 0, $4, $5)`,
					id, room, origin+86_400_000, state, origin); err != nil {
					t.Fatal(err)
				}
			}
			bound := func(room string) (int64, bool) {
				v, ok, err := purgeBound(ctx, p.DB, room)
				if err != nil {
					t.Fatal(err)
				}
				return v, ok
			}
			ins("$q1", "!a:h", "queued", 100)
			ins("$q2", "!a:h", "queued", 200)
			if v, ok := bound("!a:h"); !ok || v != 201 {
				t.Fatalf("all expired: %d %v", v, ok)
			}
			ins("$p1", "!a:h", "pending", 150)
			if v, ok := bound("!a:h"); !ok || v != 150 {
				t.Fatalf("one waiting at 150: %d %v", v, ok)
			}
			ins("$p2", "!b:h", "pending", 10)
			if _, ok := bound("!b:h"); ok {
				t.Fatal("purged a room where nothing has expired")
			}
			// A row from before origin_ts was kept holds purges back.
			ins("$q3", "!c:h", "queued", 500)
			ins("$old", "!c:h", "pending", 0)
			if v, ok := bound("!c:h"); ok {
				t.Fatalf("purged up to %d past a message of unknown timestamp", v)
			}
			if _, err := PlaceHold(ctx, p.DB, p.Chain, "", "@someone:h", "case", "os:counsel"); err != nil {
				t.Fatal(err)
			}
			if _, ok := bound("!a:h"); ok {
				t.Fatal("purged while a user hold stands")
			}
		})
	}
}
