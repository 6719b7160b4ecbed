package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func (p *pipeline) enqueue(t testing.TB, specs ...JobSpec) {
	t.Helper()
	tx, err := p.db.W.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := Enqueue(context.Background(), p.db, tx, p.clock.Now(), specs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

type jobRow struct {
	state    string
	attempts int
	due      int64
	lastErr  string
}

func (p *pipeline) job(t testing.TB, key string) jobRow {
	t.Helper()
	var r jobRow
	if err := p.db.R.QueryRow(`SELECT state, attempts, due_at, last_error FROM job WHERE dedupe_key = $1`, key).Scan(&r.state, &r.attempts, &r.due, &r.lastErr); err != nil {
		t.Fatal(err)
	}
	return r
}

func (p *pipeline) runDue(t testing.TB) int {
	t.Helper()
	n, err := p.runner.RunDue(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func limitExceeded(ms float64) error {
	return mautrix.HTTPError{
		Response:  &http.Response{StatusCode: 429, Header: http.Header{}},
		RespError: &mautrix.RespError{ErrCode: "M_LIMIT_EXCEEDED", Err: "slow down", ExtraData: map[string]any{"retry_after_ms": ms}},
	}
}

func TestRunnerOutcomes(t *testing.T) {
	errTransient := errors.New("connection refused")
	// What mautrix returns when nothing listens, and when a proxy says the
	// homeserver behind it is restarting.
	refused := mautrix.HTTPError{Message: "request error", WrappedError: &url.Error{Op: "Put", URL: "http://hs",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}}
	unavailable := mautrix.HTTPError{Response: &http.Response{StatusCode: http.StatusServiceUnavailable}}
	cases := []struct {
		name      string
		failures  []error // returned by successive attempts; nil after
		dryRun    bool
		wantState string
		wantRuns  int
		// Delays the runner must wait between attempts.
		wantDelays  []time.Duration
		wantAudit   string
		wantOutcome string
	}{
		{name: "succeeds first time", wantState: "done", wantRuns: 1, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "retries with exponential backoff", failures: []error{errTransient, errTransient}, wantState: "done", wantRuns: 3,
			wantDelays: []time.Duration{time.Second, 2 * time.Second}, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "honours retry_after_ms", failures: []error{limitExceeded(7000)}, wantState: "done", wantRuns: 2,
			wantDelays: []time.Duration{7 * time.Second}, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "short retry_after_ms keeps backoff", failures: []error{limitExceeded(10)}, wantState: "done", wantRuns: 2,
			wantDelays: []time.Duration{time.Second}, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "permanent failure stops at once", failures: []error{Permanent(errors.New("forbidden"))}, wantState: "failed", wantRuns: 1,
			wantAudit: audit.TypeJobFailed, wantOutcome: audit.OutcomeFailure},
		{name: "gives up after max attempts", failures: []error{errTransient, errTransient, errTransient, errTransient, errTransient}, wantState: "failed", wantRuns: 4,
			wantDelays: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, wantAudit: audit.TypeJobFailed, wantOutcome: audit.OutcomeFailure},
		{name: "waiting does not count as an attempt", failures: []error{RetryLater(time.Second, errTransient), RetryLater(time.Second, errTransient),
			RetryLater(time.Second, errTransient), RetryLater(time.Second, errTransient), RetryLater(time.Second, errTransient)}, wantState: "done", wantRuns: 6,
			wantDelays: []time.Duration{time.Second, time.Second, time.Second, time.Second, time.Second}, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "a homeserver that is down does not use up attempts", failures: []error{refused, refused, refused, unavailable, refused, refused}, wantState: "done", wantRuns: 7,
			wantDelays: []time.Duration{10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeSuccess},
		{name: "dry run is audited, not applied", dryRun: true, wantState: "done", wantRuns: 0, wantAudit: audit.TypeJobApplied, wantOutcome: audit.OutcomeWould},
	}
	for _, dbType := range storetest.Dialects {
		for _, tc := range cases {
			t.Run(dbType+"/"+tc.name, func(t *testing.T) {
				p := newPipeline(t, dbType)
				var runs atomic.Int32
				p.runner.Handle("redact", func(ctx context.Context, j *Job) error {
					n := int(runs.Add(1))
					if n <= len(tc.failures) {
						return tc.failures[n-1]
					}
					return nil
				})
				p.enqueue(t, JobSpec{Kind: "redact", DedupeKey: "k", Payload: json.RawMessage(`{"x":1}`), DryRun: tc.dryRun})
				p.runDue(t)
				for i, d := range tc.wantDelays {
					// Just before the delay nothing runs; at it, the next attempt does.
					p.clock.Advance(d - time.Millisecond)
					if n := p.runDue(t); n != 0 {
						t.Fatalf("attempt %d ran %s early", i+2, time.Millisecond)
					}
					p.clock.Advance(time.Millisecond)
					if n := p.runDue(t); n != 1 {
						t.Fatalf("attempt %d did not run after %s", i+2, d)
					}
				}
				got := p.job(t, "k")
				if got.state != tc.wantState || int(runs.Load()) != tc.wantRuns {
					t.Fatalf("state %s after %d runs, want %s after %d", got.state, runs.Load(), tc.wantState, tc.wantRuns)
				}
				// Nothing more happens however long we wait.
				p.clock.Advance(time.Hour)
				if n := p.runDue(t); n != 0 {
					t.Fatalf("finished job ran again")
				}
				var last map[string]any
				for _, r := range p.exported(t) {
					last = r
				}
				if last["type"] != tc.wantAudit || last["outcome"] != tc.wantOutcome || last["action"] != "redact" {
					t.Fatalf("last audit record %v", last)
				}
			})
		}
	}
}

func TestJobsAreIdempotentAndSurviveRestart(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.enqueue(t, JobSpec{Kind: "notice", DedupeKey: "notice:$e1"})
			p.enqueue(t, JobSpec{Kind: "notice", DedupeKey: "notice:$e1"}) // same decision again
			p.enqueue(t, JobSpec{Kind: "notice", DedupeKey: "notice:$e2", DueAt: p.clock.Now().Add(time.Minute)})
			if n := p.count(t, `SELECT COUNT(*) FROM job`); n != 2 {
				t.Fatalf("%d jobs, want 2", n)
			}
			// The first runner dies before it runs anything; a new one on the
			// same database (a restart) picks the work up.
			p2 := newPipelineOn(t, p.db)
			p2.clock = p.clock
			p2.runner.now = p.clock.Now
			var runs atomic.Int32
			p2.runner.Handle("notice", func(ctx context.Context, j *Job) error { runs.Add(1); return nil })
			p2.runDue(t)
			if runs.Load() != 1 {
				t.Fatalf("%d runs, want 1 (only $e1 is due)", runs.Load())
			}
			p.clock.Advance(time.Minute)
			p2.runDue(t)
			if runs.Load() != 2 || p.count(t, `SELECT COUNT(*) FROM job WHERE state = 'done'`) != 2 {
				t.Fatalf("runs %d", runs.Load())
			}
		})
	}
}

func TestRunnerLoopWakesAndStops(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	p.runner.now = time.Now
	done := make(chan string, 1)
	p.runner.Handle("ping", func(ctx context.Context, j *Job) error { done <- j.Key; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { p.runner.Run(ctx); close(stopped) }()
	tx, _ := p.db.W.Begin()
	Enqueue(ctx, p.db, tx, time.Now(), JobSpec{Kind: "ping", DedupeKey: "p1"})
	tx.Commit()
	p.runner.Wake()
	select {
	case k := <-done:
		if k != "p1" {
			t.Fatal(k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runner did not pick up a woken job")
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("runner did not stop")
	}
}

func TestSafeErrorKeepsHomeserverTextOut(t *testing.T) {
	err := mautrix.HTTPError{Response: &http.Response{StatusCode: 403}, RespError: &mautrix.RespError{ErrCode: "M_FORBIDDEN", Err: "You cannot redact 'CANARY patient text'"}}
	if s := SafeError(err); s != "homeserver answered HTTP 403 M_FORBIDDEN" {
		t.Fatalf("SafeError = %q", s)
	}
	if d, ok := RetryAfter(limitExceeded(1500)); !ok || d != 1500*time.Millisecond {
		t.Fatalf("RetryAfter = %v %v", d, ok)
	}
	if _, ok := RetryAfter(errors.New("x")); ok {
		t.Fatal("RetryAfter on a plain error")
	}
}

// A flood of routine work (notices to a remote server's users, thousands of
// them, each stuck on a slow homeserver) fills every worker but the one kept
// for urgent jobs; a wipe queued afterwards, from another process as the
// wipe command does, still starts within a second. Before priorities the
// wipe waited behind every notice due before it.
func TestHostileFloodCannotDelayAWipe(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.runner.workers = 4
			release := make(chan struct{})
			defer close(release)
			var notices atomic.Int64
			p.runner.Handle(string(policy.ActNotice), func(ctx context.Context, j *Job) error {
				notices.Add(1)
				select { // the homeserver never answers
				case <-release:
				case <-ctx.Done():
				}
				return nil
			})
			wipeStarted := make(chan time.Time, 1)
			p.runner.Handle("wipe", func(ctx context.Context, j *Job) error {
				wipeStarted <- time.Now()
				return nil
			})
			flood := make([]JobSpec, 5000)
			for i := range flood {
				flood[i] = JobSpec{Kind: string(policy.ActNotice), DedupeKey: fmt.Sprintf("notice:%d", i), Payload: json.RawMessage(`{}`)}
			}
			p.enqueue(t, flood...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go p.runner.Run(ctx)
			for deadline := time.Now().Add(10 * time.Second); notices.Load() < 3; {
				if time.Now().After(deadline) {
					t.Fatalf("the flood never occupied the workers (%d running)", notices.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
			queued := time.Now()
			p.enqueue(t, JobSpec{Kind: "wipe", DedupeKey: "wipe:1", Payload: json.RawMessage(`{}`)})
			select {
			case at := <-wipeStarted:
				t.Logf("wipe started %s after it was queued, behind %d routine jobs", at.Sub(queued).Round(time.Millisecond), len(flood))
				if at.Sub(queued) > time.Second {
					t.Fatalf("the wipe started %s after it was queued", at.Sub(queued))
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the wipe never started behind the flood")
			}
			if n := notices.Load(); n != 3 {
				t.Fatalf("%d routine jobs running, want 3 (one worker of 4 kept for urgent work)", n)
			}
		})
	}
}

// Every kind the service queues has the priority its purpose asks.
func TestJobPriorities(t *testing.T) {
	for kind, want := range map[string]int{
		"wipe": PriorityUrgent, JobAdminCommand: PriorityUrgent, "redact": PriorityUrgent, "enable_encryption": PriorityUrgent,
		"check_member": PriorityUrgent, "device_sign_out": PriorityUrgent,
		"expire": PriorityNormal, JobDiscoverRoom: PriorityNormal, "bot_join": PriorityNormal, "idle_logoff": PriorityNormal,
		"notice": PriorityRoutine, "device_warn": PriorityRoutine, "purge_history": PriorityRoutine,
	} {
		if got := PriorityOf(kind); got != want {
			t.Errorf("%s: priority %d, want %d", kind, got, want)
		}
	}
}

// A look at the job table that began before a job finished still lists it
// as pending; the runner must not start it again (the flood e2e test saw
// 514 outcomes recorded for 300 notices). Every job runs once.
func TestJobsRunOnceUnderConcurrentLooks(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.runner.workers = 4
			var mu sync.Mutex
			runs := map[int64]int{}
			p.runner.Handle(string(policy.ActNotice), func(ctx context.Context, j *Job) error {
				mu.Lock()
				runs[j.ID]++
				mu.Unlock()
				time.Sleep(time.Duration(10+j.ID%20) * time.Millisecond) // a homeserver round trip
				return nil
			})
			const n = 200
			specs := make([]JobSpec, n)
			for i := range specs {
				specs[i] = JobSpec{Kind: string(policy.ActNotice), DedupeKey: fmt.Sprintf("n:%d", i), Payload: json.RawMessage(`{}`)}
			}
			p.enqueue(t, specs...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go p.runner.Run(ctx)
			for deadline := time.Now().Add(30 * time.Second); p.count(t, `SELECT COUNT(*) FROM job WHERE state = 'done'`) < n; {
				if time.Now().After(deadline) {
					t.Fatal("jobs not done")
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			cancel()
			mu.Lock()
			defer mu.Unlock()
			for id, c := range runs {
				if c != 1 {
					t.Fatalf("job %d ran %d times", id, c)
				}
			}
			applied := 0
			for _, r := range p.exported(t) {
				if r["type"] == "job.applied" {
					applied++
				}
			}
			if len(runs) != n || applied != n {
				t.Fatalf("%d jobs ran, %d outcomes audited, want %d", len(runs), applied, n)
			}
		})
	}
}

// A database writer (a stolen backup restored with edits, an operator with
// SQL access, an attacker on the database host) cannot make the service act:
// a job inserted without the service's key, or a real job whose kind,
// payload or dry-run flag is edited, is refused, audited (job.failed,
// denied, mac-mismatch) and counted for the alert; jobs queued by the
// service run as before. Room fixes set only their safe values.
func TestHostileJobWrittenIntoTheDatabaseIsRefused(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			var ran []string
			for _, kind := range []string{"redact", "notice"} {
				p.runner.Handle(kind, func(ctx context.Context, j *Job) error { ran = append(ran, j.Key); return nil })
			}
			p.enqueue(t,
				JobSpec{Kind: "redact", DedupeKey: "legit", Payload: json.RawMessage(`{"room":"!r:h","event_id":"$e","act_as":"@doc:h"}`)},
				JobSpec{Kind: "redact", DedupeKey: "edited-payload", Payload: json.RawMessage(`{"room":"!r:h","event_id":"$e2","act_as":"@doc:h"}`)},
				JobSpec{Kind: "notice", DedupeKey: "edited-kind", Payload: json.RawMessage(`{}`)},
				JobSpec{Kind: "redact", DedupeKey: "edited-dry-run", Payload: json.RawMessage(`{}`), DryRun: true},
			)
			p.exec(t, `UPDATE job SET payload = $1 WHERE dedupe_key = 'edited-payload'`, []byte(`{"room":"!r:h","event_id":"$ceo","act_as":"@ceo:h"}`))
			p.exec(t, `UPDATE job SET kind = 'redact' WHERE dedupe_key = 'edited-kind'`)
			p.exec(t, `UPDATE job SET dry_run = FALSE WHERE dedupe_key = 'edited-dry-run'`)
			for i, mac := range []string{"", "00", strings.Repeat("a", 64)} {
				p.exec(t, `INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at, mac) VALUES ('redact', $1, $2, 'pending', 0, 0, 0, $3)`,
					fmt.Sprintf("inserted-%d", i), []byte(`{"room":"!r:h","event_id":"$x","act_as":"@ceo:h"}`), mac)
			}
			p.runDue(t)
			if fmt.Sprint(ran) != "[legit]" {
				t.Fatalf("jobs run: %v, want only the one the service queued", ran)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM job WHERE state = 'failed' AND last_error = 'refused: MAC mismatch'`); n != 6 {
				t.Fatalf("%d jobs refused, want 6", n)
			}
			refused := 0
			for _, r := range p.exported(t) {
				if r["type"] == "job.failed" && r["outcome"] == "denied" && r["detail"] == "mac-mismatch" {
					refused++
				}
			}
			var m dto.Metric
			p.m.JobsTampered.Write(&m)
			if refused != 6 || m.GetCounter().GetValue() != 6 {
				t.Fatalf("%d refusals audited, metric %v; want 6", refused, m.GetCounter().GetValue())
			}
		})
	}
}

// Jobs queued before jobs carried MACs are signed once, by the first start
// after the upgrade; a job written unsigned after that is refused.
func TestLegacyJobsSignedOnce(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	var ran []string
	p.runner.Handle("notice", func(ctx context.Context, j *Job) error { ran = append(ran, j.Key); return nil })
	insert := func(key string) {
		p.exec(t, `INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at) VALUES ('notice', $1, $2, 'pending', 0, 0, 0)`, key, []byte(`{}`))
	}
	insert("before-upgrade")
	if err := signLegacyJobs(context.Background(), p.db); err != nil {
		t.Fatal(err)
	}
	insert("after-upgrade")
	if err := signLegacyJobs(context.Background(), p.db); err != nil {
		t.Fatal(err)
	}
	p.runDue(t)
	if fmt.Sprint(ran) != "[before-upgrade]" {
		t.Fatalf("ran %v, want only the job from before the upgrade", ran)
	}
}

// Outcome hooks are a list: each runs, in the order added, in the
// transaction that records the job's final state.
func TestOutcomeHooksRunInOrder(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	var ran []string
	for _, name := range []string{"problems", "archive"} {
		p.runner.OnOutcome(func(ctx context.Context, tx *sql.Tx, j *Job, state, errText string, now time.Time) error {
			ran = append(ran, name+":"+state)
			return nil
		})
	}
	p.runner.Handle("notice", func(context.Context, *Job) error { return nil })
	p.enqueue(t, JobSpec{Kind: "notice", DedupeKey: "n1", Payload: []byte(`{}`)})
	p.runDue(t)
	if strings.Join(ran, ",") != "problems:done,archive:done" {
		t.Fatalf("hooks ran %v", ran)
	}
}
