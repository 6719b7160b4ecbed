package appservice

import (
	"context"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func member(id, room, sender, target, membership string) map[string]any {
	return stateEvent(id, room, sender, "m.room.member", target, map[string]any{"membership": membership})
}

// room_member follows memberships event by event, including several
// changes to one person in one batch and across batches.
func TestMembershipTracking(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			dispatch := func() {
				t.Helper()
				for {
					n, err := p.disp.DispatchBatch(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if n == 0 {
						return
					}
				}
			}
			evs := []map[string]any{
				member("$1", "!a:h", "@alice:h", "@alice:h", "join"),
				member("$2", "!a:h", "@alice:h", "@bob:h", "invite"),
				member("$3", "!a:h", "@bob:h", "@bob:h", "join"),
				msgEvent("$4", "!a:h", "@bob:h", "hi"),
				member("$5", "!b:h", "@carol:h", "@carol:h", "join"),
				member("$6", "!b:h", "@carol:h", "@dave:elsewhere", "invite"),
				member("$7", "!b:h", "@dave:elsewhere", "@dave:elsewhere", "join"),
				member("$8", "!a:h", "@alice:h", "@bob:h", "leave"), // kicked in the same batch
				member("$9", "!a:h", "@bob:h", "@bob:h", "bogus"),   // not a membership: ignored
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			dispatch()
			got, err := JoinedUsers(ctx, p.db, "h")
			if err != nil || strings.Join(got, ",") != "@alice:h,@carol:h" {
				t.Fatalf("joined on h: %v %v", got, err)
			}
			if all, _ := JoinedUsers(ctx, p.db, ""); strings.Join(all, ",") != "@alice:h,@carol:h,@dave:elsewhere" {
				t.Fatalf("joined anywhere: %v", all)
			}
			if rec := p.put(t, "t2", txnBodyOf(member("$10", "!b:h", "@alice:h", "@bob:h", "invite"), member("$11", "!b:h", "@bob:h", "@bob:h", "join"),
				member("$12", "!b:h", "@carol:h", "@carol:h", "leave"))); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			dispatch()
			if got, _ := JoinedUsers(ctx, p.db, "h"); strings.Join(got, ",") != "@alice:h,@bob:h" {
				t.Fatalf("after the second batch: %v", got)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM room_member WHERE room_id = '!a:h' AND user_id = '@bob:h' AND membership = 'leave'`); n != 1 {
				t.Fatalf("bob's leave from !a:h not recorded")
			}
		})
	}
}
