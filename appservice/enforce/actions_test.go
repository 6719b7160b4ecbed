package enforce

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// problemsOnly is enforcement's outcome hook without its job handlers, so
// a test can give the runner its own.
type problemsOnly struct{ f *Feature }

func (problemsOnly) Name() string                        { return "problems" }
func (problemsOnly) Jobs() map[string]appservice.Handler { return nil }
func (p problemsOnly) JobOutcome(ctx context.Context, tx *sql.Tx, j *appservice.Job, state, errText string, now time.Time) error {
	return p.f.JobOutcome(ctx, tx, j, state, errText, now)
}

// An action that fails for good in a room is listed as that room's problem
// (with the homeserver's status, not its text) until the same action later
// succeeds there; dry-run and other rooms leave the list alone.
func TestProblemsFollowJobOutcomes(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := apptest.New(t, dbType)
			p.Add(t, problemsOnly{New(p.Env())})
			ctx := context.Background()
			fail := atomic.Bool{}
			fail.Store(true)
			p.Runner.Handle("set_join_rule", func(ctx context.Context, j *appservice.Job) error {
				if fail.Load() {
					return appservice.Permanent(&mautrix.HTTPError{Response: &http.Response{StatusCode: 403},
						RespError: &mautrix.RespError{ErrCode: "M_FORBIDDEN", Err: "Ward 7 name leaks here"}})
				}
				return nil
			})
			payload := func(room string) json.RawMessage {
				return json.RawMessage(`{"room":"` + room + `","event_id":"$e","reason":"r"}`)
			}
			problems := func() []RoomReport {
				var out []RoomReport
				pol, err := policy.Parse("p.yaml", []byte("version: 1\n"))
				if err != nil {
					t.Fatal(err)
				}
				rooms, err := ListRooms(ctx, p.DB, pol)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rooms {
					if len(r.Problems) > 0 {
						out = append(out, r)
					}
				}
				return out
			}
			p.Enqueue(t, appservice.JobSpec{Kind: "set_join_rule", DedupeKey: "a1", Payload: payload("!a:h")})
			p.Enqueue(t, appservice.JobSpec{Kind: "set_join_rule", DedupeKey: "b1", Payload: payload("!b:h"), DryRun: true})
			p.RunDue(t)
			got := problems()
			if len(got) != 1 || got[0].ID != "!a:h" || got[0].Problems[0].Action != "set_join_rule" ||
				got[0].Problems[0].Detail != "homeserver answered HTTP 403 M_FORBIDDEN" {
				t.Fatalf("problems after a failure: %+v", got)
			}
			fail.Store(false)
			p.Enqueue(t, appservice.JobSpec{Kind: "set_join_rule", DedupeKey: "a2", Payload: payload("!a:h")})
			p.RunDue(t)
			if got := problems(); len(got) != 0 {
				t.Fatalf("problem not cleared by a later success: %+v", got)
			}
		})
	}
}

func TestRoomFixesSetOnlySafeValues(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	p.Handle(New(p.Env()).Jobs())
	p.Enqueue(t, appservice.JobSpec{Kind: "set_join_rule", DedupeKey: "open", Payload: json.RawMessage(`{"room":"!r:h","act_as":"@doc:h","value":"public"}`)},
		appservice.JobSpec{Kind: "set_guest_access", DedupeKey: "guests", Payload: json.RawMessage(`{"room":"!r:h","act_as":"@doc:h","value":"can_join"}`)})
	p.RunDue(t)
	for _, k := range []string{"open", "guests"} {
		if state, lastErr := p.JobState(t, k); state != "failed" || !strings.Contains(lastErr, "refused") {
			t.Fatalf("%s: %s %s", k, state, lastErr)
		}
	}
}
