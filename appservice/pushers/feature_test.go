package pushers

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

// fakeClientAPI answers GET /pushers as each user.
type fakeClientAPI struct {
	pushers map[string][]homeserver.Pusher
	asked   []string
}

func (f *fakeClientAPI) OwnPushers(_ context.Context, user string) ([]homeserver.Pusher, error) {
	f.asked = append(f.asked, user)
	return f.pushers[user], nil
}

// Without an admin API (Dendrite): the local users seen joined to a room
// are asked, as themselves; other servers' users, people only invited and
// people who left are not. A pusher sent whole events is
// reported and audited by pseudonym only.
func TestPushersOfSeenUsers(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			if code := p.Put(t, "t1",
				testkit.Member("$1", "!r:hs", "@alice:hs", "@alice:hs", "join"),
				testkit.Member("$2", "!r:hs", "@bob:hs", "@bob:hs", "join"),
				testkit.Member("$6", "!r:hs", "@alice:hs", "@dave:hs", "invite"),
				testkit.Member("$3", "!r:hs", "@carol:hs", "@carol:hs", "leave"),
				testkit.Member("$4", "!r:hs", "@eve:other.org", "@eve:other.org", "join"),
			); code != 200 {
				t.Fatal(code)
			}
			p.Dispatch(t)
			env := p.Env()
			env.Config.Homeserver.Domain = "hs"
			hs := &fakeClientAPI{pushers: map[string][]homeserver.Pusher{
				"@alice:hs": {{Kind: "http", AppID: "phone"}},
				"@bob:hs":   {{Kind: "http", AppID: "phone", EventIDOnly: true}},
			}}
			f := &Feature{env: env, HS: SeenUsers{DB: p.DB, Domain: "hs", HS: hs}}
			if err := f.Check(context.Background()); err != nil {
				t.Fatal(err)
			}
			sort.Strings(hs.asked)
			if strings.Join(hs.asked, " ") != "@alice:hs @bob:hs" {
				t.Fatalf("asked %v", hs.asked)
			}
			users, checked, at, err := Flagged(context.Background(), p.DB)
			if err != nil || strings.Join(users, " ") != "@alice:hs" || checked != 2 || at == 0 {
				t.Fatalf("flagged %v of %d at %d: %v", users, checked, at, err)
			}
			n := 0
			for _, r := range p.Records(t) {
				if r["detail"] == "pusher-sends-content" {
					n++
					if r["actor"] != p.Chain.Keys().User("@alice:hs") {
						t.Fatalf("record %v", r)
					}
				}
			}
			if n != 1 {
				t.Fatalf("%d pusher records", n)
			}
		})
	}
}
