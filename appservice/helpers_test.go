package appservice

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

const testHSToken = "hs_token_for_tests_0123456789abcdefghijklmnopqrstuvwxyz"

// fakeClock is a settable clock for tests.
type fakeClock = testkit.Clock

func newFakeClock() *fakeClock { return testkit.NewClock() }

type pipeline struct {
	db     *store.DB
	chain  *audit.Chain
	m      *Metrics
	inbox  *Inbox
	server *Server
	disp   *Dispatcher
	runner *Runner
	clock  *fakeClock
	logs   *bytes.Buffer
}

func newPipeline(t testing.TB, dbType string) *pipeline {
	t.Helper()
	db, _ := storetest.Open(t, dbType)
	return newPipelineOn(t, db)
}

func newPipelineOn(t testing.TB, db *store.DB) *pipeline {
	keys, err := audit.NewKeys(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	chain := audit.NewChain(keys, db, clock.Now)
	m := NewMetrics(prometheus.NewRegistry())
	logs := &bytes.Buffer{}
	log := zerolog.New(&lockedWriter{w: logs})
	inbox := NewInbox(db, chain, m, "@hipaa:hs")
	runner := NewRunner(db, chain, m, log, clock.Now, RunnerOptions{Workers: 2, MaxAttempts: 4, Backoff: time.Second, MaxBackoff: 10 * time.Second})
	return &pipeline{
		db: db, chain: chain, m: m, inbox: inbox, clock: clock, logs: logs,
		server: NewServer(inbox, testHSToken, 1<<20, m, log),
		disp:   NewDispatcher(db, chain, NoPolicy{}, m, log, runner.Wake),
		runner: runner,
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var msgEvent = testkit.Message

func txnBodyOf(events ...map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"events": events})
	return b
}

// put sends a transaction through the HTTP handler as a homeserver would.
func (p *pipeline) put(t testing.TB, txnID string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	rec := httptest.NewRecorder()
	p.server.ServeHTTP(rec, req)
	return rec
}

func (p *pipeline) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	testkit.Exec(t, p.db, q, args...)
}

func (p *pipeline) count(t testing.TB, q string, args ...any) int {
	t.Helper()
	return testkit.Count(t, p.db, q, args...)
}

func (p *pipeline) exported(t testing.TB) []map[string]any {
	t.Helper()
	return testkit.Records(t, p.db)
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("$%s%d", prefix, i)
	}
	return out
}

func ioPipe() (*io.PipeReader, *io.PipeWriter) { return io.Pipe() }
