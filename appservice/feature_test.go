package appservice

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// rowFeature decides, on every message, a job, an audit record and a row of
// its own; its RowSaver fails while fail is set.
type rowFeature struct{ fail bool }

func (*rowFeature) Name() string             { return "rows" }
func (*rowFeature) Jobs() map[string]Handler { return nil }

func (f *rowFeature) DecideEvent(ev *Event, room *RoomInfo, pol *policy.Policy, s policy.Effective, dec *Decision) {
	if ev.Type != "m.room.message" {
		return
	}
	dec.AddRecorded(JobSpec{Kind: "row_test", DedupeKey: "row_test:" + ev.ID, Payload: []byte(`{}`)},
		&audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, EventID: ev.ID, Action: "row_test"})
	dec.Row(f, ev.ID)
}

func (f *rowFeature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	for _, r := range rows {
		if _, err := db.Exec(ctx, tx, `INSERT INTO room_problem (room_id, action, detail, since) VALUES ($1, 'row_test', '', 0)`, r.(string)); err != nil {
			return err
		}
	}
	if f.fail {
		return errors.New("the feature's rows could not be written")
	}
	return nil
}

// A feature's rows commit in the dispatcher's one transaction with the
// jobs, the audit records and the cursor: when they cannot be written,
// none of it is, and the batch is decided again; once written, exactly once.
func TestDispatchCommitsFeatureRowsWithEverything(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "policy.yaml")
			os.WriteFile(path, []byte("version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\n"), 0o600)
			holder, err := NewPolicyHolder(ctx, path, p.db, p.chain, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			f := &rowFeature{fail: true}
			svc := &Service{DB: p.db, Chain: p.chain, Runner: p.runner, Policy: holder,
				Decider: &PolicyDecider{Policy: holder, Bot: "@hipaa:h", Keys: p.chain.Keys()}}
			if err := svc.Add(f); err != nil {
				t.Fatal(err)
			}
			p.disp = NewDispatcher(p.db, p.chain, svc.Decider, p.m, zerolog.Nop(), p.runner.Wake)
			if rec := p.put(t, "t1", txnBodyOf(msgEvent("$a", "!r:h", "@u:h", "x"), msgEvent("$b", "!r:h", "@u:h", "y"))); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			state := func() [4]int {
				records := 0
				for _, r := range p.exported(t) {
					if r["action"] == "row_test" {
						records++
					}
				}
				return [4]int{
					p.count(t, `SELECT COUNT(*) FROM job WHERE kind = 'row_test'`),
					records,
					p.count(t, `SELECT COUNT(*) FROM room_problem WHERE action = 'row_test'`),
					p.count(t, `SELECT seq FROM dispatch_cursor WHERE id = 1`),
				}
			}
			if _, err := p.disp.DispatchBatch(ctx); err == nil {
				t.Fatal("the batch committed though its rows failed")
			}
			if got := state(); got != [4]int{0, 0, 0, 0} {
				t.Fatalf("after the failed commit: jobs, records, rows, cursor = %v, want nothing", got)
			}
			f.fail = false
			for range 2 {
				if _, err := p.disp.DispatchBatch(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got := state(); got != [4]int{2, 2, 2, 2} {
				t.Fatalf("after the commit: jobs, records, rows, cursor = %v, want 2 each", got)
			}
		})
	}
}

type kindFeature struct{ name string }

func (k kindFeature) Name() string { return k.name }
func (kindFeature) Jobs() map[string]Handler {
	return map[string]Handler{"shared_kind": func(context.Context, *Job) error { return nil }}
}

// Two features handling one job kind is a mistake, found when they are
// added, not when a job of that kind runs the wrong handler.
func TestAddRefusesAJobKindTwice(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	svc := &Service{DB: p.db, Chain: p.chain, Runner: p.runner}
	if err := svc.Add(kindFeature{"first"}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Add(kindFeature{"second"}); err == nil || !strings.Contains(err.Error(), `feature second: job kind "shared_kind" is already handled`) {
		t.Fatalf("adding a second handler of a kind: %v", err)
	}
	if got := svc.Features(); len(got) != 1 || got[0] != "first" {
		t.Fatalf("features added: %v", got)
	}
}
