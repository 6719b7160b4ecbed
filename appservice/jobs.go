package appservice

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobSpec is an action to take, as decided by policy. DedupeKey makes
// enqueueing idempotent: the same decision made twice is one job.
type JobSpec struct {
	Kind      string
	DedupeKey string
	Payload   json.RawMessage
	DueAt     time.Time
	// Delay, if DueAt is unset, is how long after enqueueing the job is due.
	Delay  time.Duration
	DryRun bool
}

// Job is a stored job as a handler sees it.
type Job struct {
	ID       int64
	Kind     string
	Key      string
	Payload  json.RawMessage
	Attempts int
	DryRun   bool
	Priority int
	// Created is when the job was queued.
	Created time.Time
	mac     string
}

// Handler applies one job. It must be idempotent: after a crash a job that
// had in fact been applied runs again. Return Permanent(err) for failures
// that retrying cannot fix.
type Handler func(ctx context.Context, job *Job) error

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks an error as not worth retrying.
func Permanent(err error) error { return permanentError{err} }

// DecodePayload reads a job's JSON payload into a T. A payload that does not
// decode will not decode on a retry either: the error is Permanent.
func DecodePayload[T any](j *Job) (T, error) {
	var p T
	if err := json.Unmarshal(j.Payload, &p); err != nil {
		return p, Permanent(fmt.Errorf("bad job payload: %w", err))
	}
	return p, nil
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool { return errors.As(err, new(permanentError)) }

type laterError struct {
	err   error
	after time.Duration
}

func (l laterError) Error() string { return l.err.Error() }
func (l laterError) Unwrap() error { return l.err }

// invalidError is a request refused for what it asks (a missing reason, no
// such hold), as opposed to a failure to carry it out.
type invalidError struct{ msg string }

func (e invalidError) Error() string { return e.msg }

// Invalid returns a request-refused error (see IsInvalid).
func Invalid(format string, args ...any) error { return invalidError{fmt.Sprintf(format, args...)} }

// IsInvalid reports whether err refuses the request itself, so the one asking
// should be told why rather than the operation retried.
func IsInvalid(err error) bool { return errors.As(err, new(invalidError)) }

// RecordRefusal: when err refuses a request for what it asked (IsInvalid),
// it records rec, outcome denied, in a transaction of its own (the one that
// would have done the work rolled back), so that an administrator's refused
// attempt is in the audit trail with who tried. It returns err.
func RecordRefusal(ctx context.Context, db *store.DB, chain *audit.Chain, rec *audit.Record, err error) error {
	if !IsInvalid(err) {
		return err
	}
	rec.Outcome = audit.OutcomeDenied
	return RecordCommand(ctx, db, chain, rec, err)
}

// RecordCommand puts an administrator's command in the audit trail, in a
// transaction of its own, whichever surface it came through (the CLI, the
// admin API, the management room): rec says who and what (type
// admin.command unless set); its outcome, unless set, is err's: success
// when nil, denied when it refused the request (IsInvalid), failure
// otherwise. It returns err joined with any failure to record, so a
// command that is not on the record is not answered as done.
func RecordCommand(ctx context.Context, db *store.DB, chain *audit.Chain, rec *audit.Record, err error) error {
	if rec.Type == "" {
		rec.Type = audit.TypeAdminCommand
	}
	if rec.Outcome == "" {
		switch {
		case err == nil:
			rec.Outcome = audit.OutcomeSuccess
		case IsInvalid(err):
			rec.Outcome = audit.OutcomeDenied
		default:
			rec.Outcome = audit.OutcomeFailure
		}
	}
	if aerr := chain.AppendTx(ctx, db, rec); aerr != nil {
		return errors.Join(err, fmt.Errorf("could not record this command in the audit trail: %w", aerr))
	}
	return err
}

// RetryLater asks for the job to run again after d without counting an
// attempt: for waiting on something that is on its way (the E2EE bot
// logging in), not for failures.
func RetryLater(d time.Duration, err error) error { return laterError{err, d} }

// jobMAC authenticates what a job will do: its kind, dedupe key, payload
// and dry-run flag, under the job key. The runner runs only jobs whose MAC
// matches, exactly as stored.
func jobMAC(key []byte, kind, dedupeKey string, payload []byte, dryRun bool) string {
	m := hmac.New(sha256.New, key)
	for _, part := range [][]byte{[]byte(kind), []byte(dedupeKey), payload} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		m.Write(n[:])
		m.Write(part)
	}
	if dryRun {
		m.Write([]byte{1})
	} else {
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// signLegacyJobs MACs, once, the jobs queued before jobs carried MACs (schema
// 20): the first process to open the upgraded database with the key does it,
// in the same start-up that migrated it. After that an unsigned job is one
// written into the database, and is refused.
func signLegacyJobs(ctx context.Context, db *store.DB) error {
	return db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var done int
		if err := tx.QueryRowContext(ctx, `SELECT done FROM job_mac_legacy`).Scan(&done); err != nil || done != 0 {
			return err
		}
		if _, err := macJobs(ctx, tx, `mac = ''`, db.JobKey(), func(macRow) bool { return true }); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE job_mac_legacy SET done = 1`)
		return err
	})
}

// macJobs MACs again under key each job matching where (SQL) that take
// accepts, and returns how many it did.
func macJobs(ctx context.Context, tx *sql.Tx, where string, key []byte, take func(row macRow) bool) (int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, kind, dedupe_key, payload, dry_run, mac FROM job WHERE `+where)
	if err != nil {
		return 0, err
	}
	var sign []macRow
	for rows.Next() {
		var r macRow
		if err := rows.Scan(&r.id, &r.kind, &r.key, &r.payload, &r.dry, &r.mac); err != nil {
			rows.Close()
			return 0, err
		}
		if take(r) {
			sign = append(sign, r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, r := range sign {
		if _, err := tx.ExecContext(ctx, `UPDATE job SET mac = $1 WHERE id = $2`, jobMAC(key, r.kind, r.key, r.payload, r.dry), r.id); err != nil {
			return 0, err
		}
	}
	return int64(len(sign)), nil
}

// macRow is what a job's MAC covers, and the MAC.
type macRow struct {
	id             int64
	kind, key, mac string
	payload        []byte
	dry            bool
}

// errNoJobKey: jobs are queued only by a process holding the service's keys.
var errNoJobKey = errors.New("no job key: open the store through the service's keys (audit.NewChain)")

// Enqueue inserts jobs inside tx; a job whose dedupe key exists is skipped.
// Each is MACed with db's job key. Rows go in 100 to a statement (the expiry
// pump queues hundreds at once).
func Enqueue(ctx context.Context, db *store.DB, tx *sql.Tx, now time.Time, jobs ...JobSpec) error {
	key := db.JobKey()
	if len(jobs) > 0 && len(key) == 0 {
		return errNoJobKey
	}
	const per = 100
	for start := 0; start < len(jobs); start += per {
		chunk := jobs[start:min(start+per, len(jobs))]
		args := make([]any, 0, 10*len(chunk))
		for _, j := range chunk {
			due := j.DueAt
			if due.IsZero() {
				due = now.Add(j.Delay)
			}
			payload := j.Payload
			if payload == nil {
				payload = json.RawMessage("{}")
			}
			args = append(args, j.Kind, j.DedupeKey, []byte(payload), "pending", due.UnixMilli(), now.UnixMilli(), now.UnixMilli(), j.DryRun, PriorityOf(j.Kind),
				jobMAC(key, j.Kind, j.DedupeKey, payload, j.DryRun))
		}
		q := store.ValuesQuery(`INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at, dry_run, priority, mac) VALUES `, 10, len(chunk),
			` ON CONFLICT (dedupe_key) DO NOTHING`)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("enqueue %s job: %w", chunk[0].Kind, err)
		}
	}
	return nil
}

// Job priorities: the runner starts every due job of a higher priority
// before any of a lower one, and keeps one worker for urgent jobs alone, so
// a flood of routine work (a remote server's users sending plaintext, a
// policy change rescheduling thousands of expiries) cannot delay a wipe.
const (
	PriorityRoutine = 0
	PriorityNormal  = 1
	PriorityUrgent  = 2
)

// priorities are the job kinds that are not normal.
var priorities = map[string]int{
	// What an administrator asked for, and what stops PHI from staying
	// where it must not. (Features' kinds by their stored strings: wipe is
	// sessions', device_sign_out, check_member and device_warn identity's,
	// purge_history expiry's, the policy actions enforce's; each feature
	// tests that its kinds are here.)
	"wipe": PriorityUrgent, JobAdminCommand: PriorityUrgent, "device_sign_out": PriorityUrgent, "check_member": PriorityUrgent,
	string(policy.ActRedact): PriorityUrgent, string(policy.ActEnableEncryption): PriorityUrgent,
	string(policy.ActSetJoinRule): PriorityUrgent, string(policy.ActSetGuestAccess): PriorityUrgent,
	string(policy.ActQuarantineMedia): PriorityUrgent,
	// A page (the pager bridge's): someone is waiting on a clinician.
	"page": PriorityUrgent,
	// Telling people, and housekeeping.
	string(policy.ActNotice): PriorityRoutine, "device_warn": PriorityRoutine, "purge_history": PriorityRoutine, "page_notice": PriorityRoutine,
}

// PriorityOf is the priority a job of this kind is queued with.
func PriorityOf(kind string) int {
	if p, ok := priorities[kind]; ok {
		return p
	}
	return PriorityNormal
}

// Runner applies due jobs with bounded concurrency, retrying failures with
// exponential backoff (or the homeserver's retry_after_ms), and records each
// final outcome in the audit chain in the same transaction as the job's state.
type Runner struct {
	db          *store.DB
	chain       *audit.Chain
	metrics     *Metrics
	log         zerolog.Logger
	now         Clock
	handlers    map[string]Handler
	workers     int
	maxAttempts int
	backoff     time.Duration
	maxBackoff  time.Duration

	wake     chan struct{}
	mu       sync.Mutex
	inFlight map[int64]bool // job ID → urgent
	// gen counts looks at the job table; finished notes, per job, the
	// generation current when it last finished. A look that began before
	// a job finished may still list it as pending: it must not run again.
	gen      int64
	finished map[int64]int64

	// onOutcome run, in order, inside the transaction that records a job as
	// done or failed for good, so what they keep can never disagree with
	// the job table.
	onOutcome []OutcomeHook
}

// OutcomeHook sees a job's final state ("done" or "failed") in the
// transaction that records it; an error rolls that transaction back.
type OutcomeHook func(ctx context.Context, tx *sql.Tx, j *Job, state, errText string, now time.Time) error

// OnOutcome adds a hook that runs in the transaction recording each job's
// final state ("done" or "failed"), after those added before it.
func (r *Runner) OnOutcome(f OutcomeHook) {
	r.onOutcome = append(r.onOutcome, f)
}

type RunnerOptions struct {
	Workers     int
	MaxAttempts int
	Backoff     time.Duration
	MaxBackoff  time.Duration
}

func NewRunner(db *store.DB, chain *audit.Chain, m *Metrics, log zerolog.Logger, now Clock, opt RunnerOptions) *Runner {
	return &Runner{
		db: db, chain: chain, metrics: m, log: log, now: now,
		handlers: map[string]Handler{}, workers: max(opt.Workers, 1), maxAttempts: max(opt.MaxAttempts, 1),
		backoff: opt.Backoff, maxBackoff: opt.MaxBackoff,
		wake: make(chan struct{}, 1), inFlight: map[int64]bool{}, finished: map[int64]int64{},
	}
}

// Handle registers the handler for a job kind.
func (r *Runner) Handle(kind string, h Handler) { r.handlers[kind] = h }

// Handles reports whether a handler for kind is registered.
func (r *Runner) Handles(kind string) bool { _, ok := r.handlers[kind]; return ok }

// Wake makes the runner look for due jobs now.
func (r *Runner) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// externalPoll is the longest the runner sleeps without looking for jobs.
const externalPoll = time.Second

// Run processes jobs until ctx ends, sleeping until the next due job or a Wake.
func (r *Runner) Run(ctx context.Context) {
	sem := make(chan struct{}, r.workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		n, err := r.startDue(ctx, sem, &wg)
		if err != nil && ctx.Err() == nil {
			r.log.Error().Err(err).Msg("reading due jobs failed; retrying shortly")
		}
		// Jobs also come from other processes (the wipe and hold commands),
		// which cannot wake this one: look again at least every second.
		wait := externalPoll
		if err != nil {
			wait = time.Second
		} else if n == 0 {
			if next, ok, err := r.nextDue(ctx); err == nil && ok {
				wait = min(max(next.Sub(r.now()), 0), externalPoll)
			}
		} else {
			wait = 0
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-r.wake:
			case <-t.C:
			}
			t.Stop()
		} else {
			// Let running jobs finish or free a slot before polling again.
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// RunDue applies every job due now and waits for them; tests drive it with a fake clock.
func (r *Runner) RunDue(ctx context.Context) (int, error) {
	sem := make(chan struct{}, r.workers)
	total := 0
	for {
		var wg sync.WaitGroup
		n, err := r.startDue(ctx, sem, &wg)
		wg.Wait()
		total += n
		if err != nil || n == 0 {
			return total, err
		}
	}
}

func (r *Runner) nextDue(ctx context.Context) (time.Time, bool, error) {
	var due sql.NullInt64
	// One lookup per priority, each the first entry of its part of the index.
	err := r.db.R.QueryRowContext(ctx, `SELECT MIN(d) FROM (
		SELECT MIN(due_at) AS d FROM job WHERE state = 'pending' AND priority = 2
		UNION ALL SELECT MIN(due_at) FROM job WHERE state = 'pending' AND priority = 1
		UNION ALL SELECT MIN(due_at) FROM job WHERE state = 'pending' AND priority = 0) m`).Scan(&due)
	if err != nil || !due.Valid {
		return time.Time{}, false, err
	}
	return time.UnixMilli(due.Int64), true, nil
}

func (r *Runner) startDue(ctx context.Context, sem chan struct{}, wg *sync.WaitGroup) (int, error) {
	r.mu.Lock()
	r.gen++
	gen := r.gen
	for id, g := range r.finished {
		if g < gen-1 {
			delete(r.finished, id)
		}
	}
	r.mu.Unlock()
	// Highest priority first; each priority's due jobs are one range of
	// the (state, priority, due_at) index, however many lower ones wait.
	var due []*Job
	for prio := PriorityUrgent; prio >= PriorityRoutine && len(due) < dueBatch; prio-- {
		page, err := r.dueJobs(ctx, prio, dueBatch-len(due))
		if err != nil {
			return 0, err
		}
		due = append(due, page...)
	}
	started := 0
	for _, j := range due {
		r.mu.Lock()
		_, busy := r.inFlight[j.ID]
		if g, ok := r.finished[j.ID]; ok && g >= gen {
			busy = true // finished since this look began: its row is stale
		}
		r.mu.Unlock()
		if busy {
			continue
		}
		if j.Priority < PriorityUrgent && r.workers > 1 && r.running(false) >= r.workers-1 {
			// The last worker is kept for urgent jobs.
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return started, ctx.Err()
		}
		r.mu.Lock()
		r.inFlight[j.ID] = j.Priority >= PriorityUrgent
		r.mu.Unlock()
		started++
		wg.Add(1)
		go func(j *Job) {
			defer wg.Done()
			defer func() { <-sem }()
			defer func() {
				r.mu.Lock()
				delete(r.inFlight, j.ID)
				r.finished[j.ID] = r.gen
				r.mu.Unlock()
			}()
			r.apply(ctx, j)
		}(j)
	}
	return started, nil
}

// dueBatch is how many due jobs one look at the table takes.
const dueBatch = 256

// running counts jobs in flight, urgent ones or the others.
func (r *Runner) running(urgent bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, u := range r.inFlight {
		if u == urgent {
			n++
		}
	}
	return n
}

func (r *Runner) dueJobs(ctx context.Context, prio, limit int) ([]*Job, error) {
	rows, err := r.db.R.QueryContext(ctx, `SELECT id, kind, dedupe_key, payload, attempts, dry_run, created_at, mac FROM job
		WHERE state = 'pending' AND priority = $1 AND due_at <= $2 ORDER BY due_at, id LIMIT $3`, prio, r.now().UnixMilli(), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var due []*Job
	for rows.Next() {
		j := &Job{Priority: prio}
		var payload []byte
		var created int64
		if err := rows.Scan(&j.ID, &j.Kind, &j.Key, &payload, &j.Attempts, &j.DryRun, &created, &j.mac); err != nil {
			return nil, err
		}
		j.Created = time.UnixMilli(created)
		j.Payload = payload
		due = append(due, j)
	}
	return due, rows.Err()
}

func (r *Runner) apply(ctx context.Context, j *Job) {
	log := r.log.With().Int64("job_id", j.ID).Str("job_kind", j.Kind).Int("attempt", j.Attempts+1).Logger()
	if want := jobMAC(r.db.JobKey(), j.Kind, j.Key, j.Payload, j.DryRun); len(r.db.JobKey()) == 0 || !hmac.Equal([]byte(want), []byte(j.mac)) {
		// Not queued by the service as it stands: written or edited in the
		// database. Refused, audited and counted (an alert fires).
		log.Error().Msg("job refused: its MAC does not match what is stored (queued or edited outside the service)")
		r.metrics.JobsTampered.Inc()
		r.finishAs(ctx, log, j, "failed", j.Attempts, r.now(), "refused: MAC mismatch", &audit.Record{Type: audit.TypeJobFailed, Outcome: audit.OutcomeDenied,
			Action: j.Kind, JobID: j.ID, Detail: "mac-mismatch"})
		r.metrics.JobRuns.WithLabelValues(j.Kind, "refused").Inc()
		return
	}
	var err error
	outcome := audit.OutcomeSuccess
	if j.DryRun {
		outcome = audit.OutcomeWould
	} else if h := r.handlers[j.Kind]; h == nil {
		err = Permanent(fmt.Errorf("no handler for job kind %q", j.Kind))
	} else {
		err = safeRun(ctx, h, j)
	}
	if ctx.Err() != nil {
		return // shutting down: the job stays pending and runs after restart
	}
	attempts := j.Attempts + 1
	var delay time.Duration
	now := r.now()
	if err == nil {
		r.finish(ctx, log, j, "done", attempts, now, "", audit.TypeJobApplied, outcome)
		r.metrics.JobRuns.WithLabelValues(j.Kind, outcome).Inc()
		return
	}
	var later laterError
	if errors.As(err, &later) {
		log.Debug().Str("error", SafeError(err)).Dur("retry_in", later.after).Msg("job waits")
		attempts, delay = j.Attempts, later.after
	} else if Unreachable(err) {
		// Waiting for a homeserver that is down or restarting is not a
		// failed attempt: a long outage must not fail every pending action.
		attempts, delay = j.Attempts, min(r.maxBackoff, unreachableRetry)
		later.err = err
		log.Warn().Str("error", SafeError(err)).Dur("retry_in", delay).Msg("homeserver unreachable; job waits for it")
		r.metrics.JobRuns.WithLabelValues(j.Kind, "unreachable").Inc()
	} else {
		delay = r.delay(attempts, err)
	}
	var perm permanentError
	if errors.As(err, &perm) || attempts >= r.maxAttempts {
		log.Error().Str("error", SafeError(err)).Msg("job failed for good")
		r.finish(ctx, log, j, "failed", attempts, now, SafeError(err), audit.TypeJobFailed, audit.OutcomeFailure)
		r.metrics.JobRuns.WithLabelValues(j.Kind, "failure").Inc()
		return
	}
	if later.err == nil {
		log.Warn().Str("error", SafeError(err)).Dur("retry_in", delay).Msg("job failed; will retry")
		r.metrics.JobRuns.WithLabelValues(j.Kind, "retry").Inc()
	}
	if dbErr := r.db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE job SET attempts = $1, due_at = $2, updated_at = $3, last_error = $4 WHERE id = $5`,
			attempts, now.Add(delay).UnixMilli(), now.UnixMilli(), SafeError(err), j.ID)
		return err
	}); dbErr != nil {
		log.Error().Err(dbErr).Msg("could not record job retry")
	}
}

func safeRun(ctx context.Context, h Handler, j *Job) (err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = Permanent(fmt.Errorf("handler panicked: %T", rec))
		}
	}()
	return h(ctx, j)
}

func (r *Runner) finish(ctx context.Context, log zerolog.Logger, j *Job, state string, attempts int, now time.Time, errText, recType, outcome string) {
	r.finishAs(ctx, log, j, state, attempts, now, errText, &audit.Record{Type: recType, Outcome: outcome, Action: j.Kind, JobID: j.ID,
		EventID: eventOf(j), Count: int64(attempts)})
}

// eventOf is the event a job acts on, where its payload names one: it ties
// the action's record to the event's (how long a redaction took, say).
func eventOf(j *Job) string {
	var p struct {
		EventID string `json:"event_id"`
	}
	if json.Unmarshal(j.Payload, &p) != nil || !strings.HasPrefix(p.EventID, "$") || len(p.EventID) > 255 {
		return ""
	}
	return p.EventID
}

// finishAs records a job's final state with rec in one transaction.
func (r *Runner) finishAs(ctx context.Context, log zerolog.Logger, j *Job, state string, attempts int, now time.Time, errText string, rec *audit.Record) {
	err := r.db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE job SET state = $1, attempts = $2, updated_at = $3, last_error = $4 WHERE id = $5 AND state = 'pending'`,
			state, attempts, now.UnixMilli(), errText, j.ID); err != nil {
			return err
		}
		for _, hook := range r.onOutcome {
			if err := hook(ctx, tx, j, state, errText, now); err != nil {
				return err
			}
		}
		if err := r.chain.Append(ctx, tx, rec); err != nil {
			r.metrics.AuditFailures.Inc()
			return err
		}
		return nil
	})
	if err != nil {
		log.Error().Err(err).Msg("could not record job outcome; the job stays pending and runs again")
		return
	}
	r.metrics.AuditRecords.Inc()
}

// delay is the wait before retry n (1-based): backoff·2^(n-1), capped, or
// longer when the homeserver asked for it.
func (r *Runner) delay(attempt int, err error) time.Duration {
	d := r.backoff
	for i := 1; i < attempt && d < r.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.maxBackoff)
	if ra, ok := RetryAfter(err); ok && ra > d {
		d = ra
	}
	return d
}

// unreachableRetry is how often a job retries while the homeserver is down.
const unreachableRetry = 30 * time.Second

// Unreachable reports whether err says the homeserver could not be reached
// or is restarting: connection refused or reset, a timeout, or a 502, 503 or
// 504 from a proxy in front of it.
func Unreachable(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var he mautrix.HTTPError
	var hep *mautrix.HTTPError
	if errors.As(err, &hep) && hep != nil {
		he = *hep
	} else if !errors.As(err, &he) {
		return false
	}
	if he.Response == nil {
		return false
	}
	switch he.Response.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// RetryAfter extracts how long a homeserver asked us to wait: retry_after_ms
// of M_LIMIT_EXCEEDED, or a Retry-After header in seconds.
func RetryAfter(err error) (time.Duration, bool) {
	var he mautrix.HTTPError
	var hep *mautrix.HTTPError
	switch {
	case errors.As(err, &he):
	case errors.As(err, &hep) && hep != nil:
		he = *hep
	default:
		return 0, false
	}
	if he.RespError != nil && he.RespError.ErrCode == "M_LIMIT_EXCEEDED" {
		if v, ok := he.RespError.ExtraData["retry_after_ms"].(float64); ok && v > 0 {
			return time.Duration(v) * time.Millisecond, true
		}
	}
	if he.Response != nil && he.Response.StatusCode == http.StatusTooManyRequests {
		if s, err := strconv.Atoi(he.Response.Header.Get("Retry-After")); err == nil && s > 0 {
			return time.Duration(s) * time.Second, true
		}
	}
	return 0, false
}

// SafeError renders an error for logs and the job table. Homeserver errors
// are reduced to status and errcode, whose text could echo content back.
func SafeError(err error) string {
	var he mautrix.HTTPError
	var hep *mautrix.HTTPError
	if errors.As(err, &hep) && hep != nil {
		he = *hep
	} else if !errors.As(err, &he) {
		s := err.Error()
		if len(s) > 300 {
			s = s[:300]
		}
		return s
	}
	status := 0
	if he.Response != nil {
		status = he.Response.StatusCode
	}
	code := ""
	if he.RespError != nil {
		code = he.RespError.ErrCode
	}
	if status == 0 && code == "" {
		return "homeserver request failed"
	}
	return fmt.Sprintf("homeserver answered HTTP %d %s", status, code)
}
