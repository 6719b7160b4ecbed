package enforce

import (
	"context"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// What "needs attention" means, one definition for rooms, status, the gauge
// and the alert: a setting policy requires that is not in force, or an
// action that failed for good. A bot without power alone is not it.
func TestRoomNeedsAttention(t *testing.T) {
	ok := RoomReport{ID: "!r:hs", Encrypted: true, EncryptionRequired: true, JoinRule: "invite", GuestAccess: "forbidden",
		PublicForbidden: true, GuestsForbidden: true, BotJoined: true, BotPower: 0, Needed: 100}
	cases := []struct {
		name   string
		change func(*RoomReport)
		want   string
	}{
		{"ordinary room, bot at power 0", func(*RoomReport) {}, ""},
		{"not encrypted", func(r *RoomReport) { r.Encrypted = false }, "not encrypted"},
		{"unencrypted where policy allows it", func(r *RoomReport) { r.Encrypted, r.EncryptionRequired = false, false }, ""},
		{"public where forbidden", func(r *RoomReport) { r.JoinRule = "public" }, "public join rule"},
		{"public where allowed", func(r *RoomReport) { r.JoinRule, r.PublicForbidden = "public", false }, ""},
		{"guests where forbidden", func(r *RoomReport) { r.GuestAccess = "can_join" }, "guests may join"},
		{"an action failed for good", func(r *RoomReport) {
			r.Problems = []Problem{{Action: "quarantine_media", Detail: "no media quarantine API", Since: 1_800_000_000_000}}
		}, "quarantine_media failed since 2027-01-15T08:00:00Z: no media quarantine API"},
	}
	for _, c := range cases {
		r := ok
		c.change(&r)
		if got := strings.Join(r.Attention(), "; "); got != c.want || r.NeedsAttention() != (c.want != "") {
			t.Errorf("%s: %q (needs attention %v), want %q", c.name, got, r.NeedsAttention(), c.want)
		}
	}
}

// The status report's room counts: a room the dispatcher saw, which the
// example policy wants encrypted and is not, needs attention.
func TestRoomCounts(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			if code := p.Put(t, "t1", map[string]any{"event_id": "$e", "room_id": "!r:hs", "sender": "@u:hs", "type": "m.room.encrypted",
				"origin_server_ts": 5, "content": map[string]any{}}); code != 200 {
				t.Fatal(code)
			}
			p.Dispatch(t)
			pol, err := policy.Parse("p.yaml", policy.Example())
			if err != nil {
				t.Fatal(err)
			}
			rooms, attention, err := RoomCounts(context.Background(), p.DB, pol)
			if err != nil || rooms != 1 || attention != 1 {
				t.Fatalf("RoomCounts = %d, %d, %v; want 1, 1", rooms, attention, err)
			}
		})
	}
}
