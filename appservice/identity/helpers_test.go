package identity

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// pipeline is the engine on a test database (apptest), under the names
// these tests use.
type pipeline struct {
	*apptest.Pipeline
	db     *store.DB
	chain  *audit.Chain
	runner *appservice.Runner
	disp   *appservice.Dispatcher
	clock  *apptest.Clock
}

func newPipeline(t testing.TB, dbType string) *pipeline {
	p := apptest.New(t, dbType)
	return &pipeline{Pipeline: p, db: p.DB, chain: p.Chain, runner: p.Runner, disp: p.Disp, clock: p.Clock}
}

func (p *pipeline) put(t testing.TB, txnID string, events []map[string]any) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	rec.Code = p.Put(t, txnID, events...)
	return rec
}

func (p *pipeline) runDue(t testing.TB) int                       { return p.RunDue(t) }
func (p *pipeline) count(t testing.TB, q string, args ...any) int { return p.Count(t, q, args...) }
func (p *pipeline) exported(t testing.TB) []map[string]any        { return p.Records(t) }
func (p *pipeline) ctx() context.Context                          { return context.Background() }

var (
	msgEvent   = apptest.Message
	stateEvent = apptest.State
)

func txnBodyOf(events ...map[string]any) []map[string]any { return events }

func member(id, room, sender, target, membership string) map[string]any {
	return stateEvent(id, room, sender, "m.room.member", target, map[string]any{"membership": membership})
}

func (p *pipeline) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := p.db.W.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatal(err)
	}
}
