// Package apptest runs the engine (inbox, HTTP server, dispatcher, job
// runner) on a test database with a settable clock, for the tests of
// feature packages, which see the engine only through its exported API.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// HSToken is the homeserver token Put authenticates with.
const HSToken = "hs_token_for_tests_0123456789abcdefghijklmnopqrstuvwxyz"

// Clock is a settable clock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Pipeline is the engine on one test database, with no policy.
type Pipeline struct {
	DB      *store.DB
	Chain   *audit.Chain
	Inbox   *appservice.Inbox
	Server  *appservice.Server
	Disp    *appservice.Dispatcher
	Runner  *appservice.Runner
	Clock   *Clock
	Metrics *appservice.Metrics
}

// New is a Pipeline on a fresh database of dbType.
func New(t testing.TB, dbType string) *Pipeline {
	t.Helper()
	db, _ := storetest.Open(t, dbType)
	keys, err := audit.NewKeys(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	clock := &Clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	chain := audit.NewChain(keys, db, clock.Now)
	m := appservice.NewMetrics(prometheus.NewRegistry())
	log := zerolog.New(io.Discard)
	inbox := appservice.NewInbox(db, chain, m, "@hipaa:hs")
	runner := appservice.NewRunner(db, chain, m, log, clock.Now, appservice.RunnerOptions{Workers: 2, MaxAttempts: 4, Backoff: time.Second, MaxBackoff: 10 * time.Second})
	return &Pipeline{
		DB: db, Chain: chain, Inbox: inbox, Clock: clock, Runner: runner, Metrics: m,
		Server: appservice.NewServer(inbox, HSToken, 1<<20, m, log),
		Disp:   appservice.NewDispatcher(db, chain, appservice.NoPolicy{}, m, log, runner.Wake),
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
	if _, err := p.DB.W.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatal(err)
	}
}

// Count runs a COUNT query.
func (p *Pipeline) Count(t testing.TB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := p.DB.R.QueryRowContext(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Records is the audit trail as exported JSON lines, decoded.
func (p *Pipeline) Records(t testing.TB) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	if _, err := audit.ExportJSONL(context.Background(), p.DB, audit.Range{}, &buf); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// Message is an m.room.message event.
func Message(id, room, sender, body string) map[string]any {
	return map[string]any{
		"event_id": id, "room_id": room, "sender": sender, "type": "m.room.message",
		"origin_server_ts": 1, "content": map[string]any{"msgtype": "m.text", "body": body},
	}
}

// State is a state event.
func State(id, room, sender, typ, stateKey string, content map[string]any) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": typ, "state_key": stateKey, "content": content}
}

// Member is an m.room.member event.
func Member(id, room, sender, target, membership string) map[string]any {
	return State(id, room, sender, "m.room.member", target, map[string]any{"membership": membership})
}
