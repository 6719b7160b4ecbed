package appservice

import (
	"context"
	"fmt"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

var stateEvent = testkit.State

// The dispatcher keeps each room's state as policy needs it, and shows each
// decision the state as of that event; the state survives in the database.
func TestRoomStateTracking(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			room := "!ward:h"
			evs := []map[string]any{
				stateEvent("$1", room, "@alice:h", "m.room.create", "", map[string]any{"room_version": "10", "creator": "@alice:h"}),
				stateEvent("$2", room, "@alice:h", "m.room.join_rules", "", map[string]any{"join_rule": "public"}),
				stateEvent("$3", room, "@alice:h", "m.room.guest_access", "", map[string]any{"guest_access": "can_join"}),
				msgEvent("$4", room, "@alice:h", "before encryption"),
				stateEvent("$5", room, "@alice:h", "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}),
				stateEvent("$6", room, "@alice:h", "m.room.canonical_alias", "", map[string]any{"alias": "#icu-1:h", "alt_aliases": []string{"#icu:h", "#icu-1:h"}}),
				stateEvent("$7", room, "@alice:h", "m.space.parent", "!hospital:h", map[string]any{"via": []string{"h"}}),
				stateEvent("$8", room, "@alice:h", "m.space.parent", "!old:h", map[string]any{"via": []string{"h"}}),
				stateEvent("$9", room, "@alice:h", "m.space.parent", "!old:h", map[string]any{}),
				stateEvent("$9r", room, "@alice:h", "m.room.retention", "", map[string]any{"max_lifetime": 86400000}),
				msgEvent("$10", room, "@alice:h", "after"),
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			seen := map[string]string{}
			lifetimes := map[string]int64{}
			p.disp.decider = deciderFunc(func(e *Event, r *RoomInfo) Decision {
				lifetimes[e.ID] = r.State.MaxLifetime
				seen[e.ID] = fmt.Sprintf("enc=%v join=%s guest=%s creator=%s aliases=%v spaces=%v", r.State.Encrypted, r.State.JoinRule, r.State.GuestAccess, r.State.Creator, r.Aliases, r.Spaces)
				return Decision{}
			})
			if _, err := p.disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			if lifetimes["$4"] != 0 || lifetimes["$10"] != 86400000 {
				t.Fatalf("m.room.retention max_lifetime: %v", lifetimes)
			}
			var stored int64
			p.db.R.QueryRow(`SELECT max_lifetime_ms FROM room_state WHERE room_id = $1`, room).Scan(&stored)
			if stored != 86400000 {
				t.Fatalf("stored max lifetime %d", stored)
			}
			want := map[string]string{
				"$4":  "enc=false join=public guest=can_join creator=@alice:h aliases=[] spaces=[]",
				"$10": "enc=true join=public guest=can_join creator=@alice:h aliases=[#icu-1:h #icu:h] spaces=[!hospital:h]",
			}
			for id, w := range want {
				if seen[id] != w {
					t.Errorf("state at %s:\n got %s\nwant %s", id, seen[id], w)
				}
			}
			rooms, err := LoadRooms(context.Background(), p.db, []string{room, "!unknown:h"})
			if err != nil {
				t.Fatal(err)
			}
			r := rooms[room]
			if !r.State.Encrypted || r.State.Creator != "@alice:h" || len(r.Aliases) != 2 || len(r.Spaces) != 1 {
				t.Fatalf("stored state %+v", r)
			}
			// Policy matches the room by its tracked alias and space.
			pol, _ := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - alias: \"#icu-*:h\"\n    retention: 1h\n  - space: \"!hospital:h\"\n    dry_run: true\n"))
			e := pol.For(r.PolicyRoom(RoomLinks{Aliases: []string{"#icu-1:h"}, Spaces: []string{"!hospital:h"}}))
			if e.Retention.D().Hours() != 1 || !e.DryRun {
				t.Fatalf("policy for tracked room: %+v", e)
			}
			if u := rooms["!unknown:h"]; u.State.Encrypted || u.Aliases != nil {
				t.Fatalf("unknown room %+v", u)
			}
		})
	}
}

// State a member sends under another state key is not the room's setting,
// and the creator is who sent m.room.create, whatever its content claims:
// otherwise `m.room.encryption` with state_key "x" made a room count as
// encrypted (so it was never made so), and content.creator chose whom the
// service acts as.
func TestHostileOddStateKeysAndCreatorField(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			room := "!odd:h"
			evs := []map[string]any{
				stateEvent("$c", room, "@alice:h", "m.room.create", "", map[string]any{"room_version": "10", "creator": "@mallory:evil.example"}),
				stateEvent("$e", room, "@mallory:h", "m.room.encryption", "x", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}),
				stateEvent("$j", room, "@mallory:h", "m.room.join_rules", "x", map[string]any{"join_rule": "public"}),
				stateEvent("$g", room, "@mallory:h", "m.room.guest_access", "x", map[string]any{"guest_access": "can_join"}),
				stateEvent("$a", room, "@mallory:h", "m.room.canonical_alias", "x", map[string]any{"alias": "#cafe:h"}),
				stateEvent("$r", room, "@mallory:h", "m.room.retention", "x", map[string]any{"max_lifetime": 1}),
				stateEvent("$c2", room, "@mallory:h", "m.room.create", "x", map[string]any{"creator": "@mallory:h"}),
				msgEvent("$m", room, "@alice:h", "after"),
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			var seen string
			p.disp.decider = deciderFunc(func(e *Event, r *RoomInfo) Decision {
				seen = fmt.Sprintf("enc=%v join=%q guest=%q creator=%s aliases=%v life=%d", r.State.Encrypted, r.State.JoinRule, r.State.GuestAccess, r.State.Creator, r.Aliases, r.State.MaxLifetime)
				return Decision{}
			})
			if _, err := p.disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			if want := `enc=false join="" guest="" creator=@alice:h aliases=[] life=0`; seen != want {
				t.Fatalf("room as policy saw it: %s, want %s", seen, want)
			}
		})
	}
}

// A max_lifetime of 2^64-1 or 18446744073710 ms is stored clamped to the
// longest lifetime, never wrapped to a tiny or negative one.
func TestHostileMaxLifetimeStoredClamped(t *testing.T) {
	sk := ""
	for raw, want := range map[string]int64{
		"18446744073709551615": policy.MaxLifetime.Milliseconds(),
		"18446744073710":       policy.MaxLifetime.Milliseconds(),
		"1e300":                policy.MaxLifetime.Milliseconds(),
		"1":                    1,
		"-1":                   0,
		"86400000":             86400000,
	} {
		r := &RoomInfo{ID: "!r:h"}
		r.Apply(&Event{ID: "$r", Type: "m.room.retention", StateKey: &sk, Raw: []byte(`{"content":{"max_lifetime":` + raw + `}}`)})
		if r.State.MaxLifetime != want {
			t.Errorf("max_lifetime %s stored as %d, want %d", raw, r.State.MaxLifetime, want)
		}
	}
}
