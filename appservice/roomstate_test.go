package appservice

import (
	"context"
	"fmt"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func stateEvent(id, room, sender, typ, stateKey string, content map[string]any) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": typ, "state_key": stateKey, "content": content}
}

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
			rooms, err := loadRooms(context.Background(), p.db, []string{room, "!unknown:h"})
			if err != nil {
				t.Fatal(err)
			}
			r := rooms[room]
			if !r.State.Encrypted || r.State.Creator != "@alice:h" || len(r.Aliases) != 2 || len(r.Spaces) != 1 {
				t.Fatalf("stored state %+v", r)
			}
			// Policy matches the room by its tracked alias and space.
			pol, _ := policy.Parse("p.yaml", []byte("version: 1\nrooms:\n  - alias: \"#icu-*:h\"\n    retention: 1h\n  - space: \"!hospital:h\"\n    dry_run: true\n"))
			e := pol.For(r.PolicyRoom())
			if e.Retention.D().Hours() != 1 || !e.DryRun {
				t.Fatalf("policy for tracked room: %+v", e)
			}
			if u := rooms["!unknown:h"]; u.State.Encrypted || u.Aliases != nil {
				t.Fatalf("unknown room %+v", u)
			}
		})
	}
}
