// Package apptest runs the engine (inbox, HTTP server, dispatcher, job
// runner) on a test database with a settable clock, for the tests of
// feature packages, which see the engine only through its exported API.
package apptest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// HSToken is the homeserver token Put authenticates with.
const HSToken = "hs_token_for_tests_0123456789abcdefghijklmnopqrstuvwxyz"

// Clock is a settable clock.
type Clock = testkit.Clock

// Pipeline is the engine on one test database, with no policy until
// UsePolicy.
type Pipeline struct {
	DB      *store.DB
	Chain   *audit.Chain
	Inbox   *appservice.Inbox
	Server  *appservice.Server
	Disp    *appservice.Dispatcher
	Runner  *appservice.Runner
	Clock   *Clock
	Metrics *appservice.Metrics
	// Bot is the bot's Matrix ID the decider and features are given.
	Bot string
	// Svc is the service features are added to (Add): the pipeline's
	// engine parts, without a homeserver, bot or HTTP listener.
	Svc *appservice.Service
}

// New is a Pipeline on a fresh database of dbType.
func New(t testing.TB, dbType string) *Pipeline {
	t.Helper()
	db, _ := storetest.Open(t, dbType)
	keys, err := audit.NewKeys(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	clock := testkit.NewClock()
	chain := audit.NewChain(keys, db, clock.Now)
	m := appservice.NewMetrics(prometheus.NewRegistry())
	log := zerolog.New(io.Discard)
	inbox := appservice.NewInbox(db, chain, m, "@hipaa:hs")
	runner := appservice.NewRunner(db, chain, m, log, clock.Now, appservice.RunnerOptions{Workers: 2, MaxAttempts: 4, Backoff: time.Second, MaxBackoff: 10 * time.Second})
	p := &Pipeline{
		DB: db, Chain: chain, Inbox: inbox, Clock: clock, Runner: runner, Metrics: m, Bot: "@hipaa:h",
		Server: appservice.NewServer(inbox, HSToken, 1<<20, m, log),
		Disp:   appservice.NewDispatcher(db, chain, appservice.NoPolicy{}, m, log, runner.Wake),
	}
	p.Svc = &appservice.Service{DB: db, Chain: chain, Metrics: m, Inbox: inbox, Server: p.Server, Dispatcher: p.Disp, Runner: runner, Log: log}
	return p
}

// UsePolicy puts the policy yaml in force: the dispatcher now asks a
// PolicyDecider, which features added later (Add) join. The holder reloads
// the policy from its file (Reload runs the features' PolicyWatchers).
func (p *Pipeline) UsePolicy(t testing.TB, yaml string) *appservice.PolicyHolder {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	holder, err := appservice.NewPolicyHolder(context.Background(), path, p.DB, p.Chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	p.Svc.Policy = holder
	p.Svc.Decider = &appservice.PolicyDecider{Policy: holder, Bot: p.Bot, Keys: p.Chain.Keys()}
	p.Disp = appservice.NewDispatcher(p.DB, p.Chain, p.Svc.Decider, p.Metrics, zerolog.Nop(), p.Runner.Wake)
	p.Svc.Dispatcher = p.Disp
	return holder
}

// SetPolicy replaces the policy file's text and reloads it, as an edit
// would, running the features' PolicyWatchers.
func (p *Pipeline) SetPolicy(t testing.TB, holder *appservice.PolicyHolder, path, yaml string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Reload(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
}

// Env is what the features of a test are given: the pipeline's database,
// chain, clock and runner, the policy in force (the built-in one before
// UsePolicy), no homeserver and no bot.
func (p *Pipeline) Env() appservice.Env {
	pol := func() *policy.Policy { return appservice.BuiltinPolicy() }
	if p.Svc.Policy != nil {
		pol = p.Svc.Policy.Current
	}
	return appservice.Env{DB: p.DB, Chain: p.Chain, Now: p.Clock.Now, Log: zerolog.Nop(), Metrics: p.Metrics,
		Policy: pol, Wake: p.Runner.Wake, BotUser: p.Bot, Config: &config.Config{}}
}

// Add puts features on the pipeline (appservice.Service.Add).
func (p *Pipeline) Add(t testing.TB, features ...appservice.Feature) {
	t.Helper()
	if err := p.Svc.Add(features...); err != nil {
		t.Fatal(err)
	}
}

// Handle registers job handlers on the runner.
func (p *Pipeline) Handle(jobs map[string]appservice.Handler) {
	for kind, h := range jobs {
		p.Runner.Handle(kind, h)
	}
}

// Put sends a transaction through the HTTP handler as a homeserver would.
func (p *Pipeline) Put(t testing.TB, txnID string, events ...map[string]any) int {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"events": events})
	req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+HSToken)
	rec := httptest.NewRecorder()
	p.Server.ServeHTTP(rec, req)
	return rec.Code
}

// Dispatch decides every stored event.
func (p *Pipeline) Dispatch(t testing.TB) {
	t.Helper()
	for {
		n, err := p.Disp.DispatchBatch(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// RunDue runs the jobs that are due.
func (p *Pipeline) RunDue(t testing.TB) int {
	t.Helper()
	n, err := p.Runner.RunDue(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Exec runs a statement on the writer.
func (p *Pipeline) Exec(t testing.TB, q string, args ...any) {
	t.Helper()
	testkit.Exec(t, p.DB, q, args...)
}

// Count runs a COUNT query.
func (p *Pipeline) Count(t testing.TB, q string, args ...any) int {
	t.Helper()
	return testkit.Count(t, p.DB, q, args...)
}

// Records is the audit trail as exported JSON lines, decoded.
func (p *Pipeline) Records(t testing.TB) []map[string]any {
	t.Helper()
	return testkit.Records(t, p.DB)
}

// Events as a homeserver sends them.
var (
	Message = testkit.Message
	State   = testkit.State
	Member  = testkit.Member
)

// Enqueue queues jobs, as the dispatcher or a command would.
func (p *Pipeline) Enqueue(t testing.TB, specs ...appservice.JobSpec) {
	t.Helper()
	err := p.DB.Tx(context.Background(), store.Deferred, func(tx *sql.Tx) error {
		return appservice.Enqueue(context.Background(), p.DB, tx, p.Clock.Now(), specs...)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// JobState is a job's state and last error, by its dedupe key.
func (p *Pipeline) JobState(t testing.TB, key string) (state, lastErr string) {
	t.Helper()
	if err := p.DB.R.QueryRow(`SELECT state, last_error FROM job WHERE dedupe_key = $1`, key).Scan(&state, &lastErr); err != nil {
		t.Fatal(err)
	}
	return state, lastErr
}
