package sessions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobIdleLogoff signs a user out everywhere because every one of their
// sessions has been idle longer than the policy's session_idle_timeout.
const JobIdleLogoff = "idle_logoff"

// SessionHomeserver is what idle logoff needs from the homeserver.
type SessionHomeserver interface {
	appservice.SessionEnder
	Sessions(ctx context.Context, user string) ([]homeserver.Device, error)
}

var _ SessionHomeserver = (*homeserver.Client)(nil)

// allIdle reports whether user's sessions are all idle past timeout at now,
// and the latest last-seen time among them. A user with no sessions, or with
// one the homeserver reports no last-seen time for, is not idle: the service
// only signs out what it knows to be unused.
func allIdle(sessions []homeserver.Device, timeout time.Duration, now time.Time) (bool, int64) {
	idle, latest := idleSessions(sessions, timeout, now)
	return len(sessions) > 0 && len(idle) == len(sessions), latest
}

// idleSessions lists the sessions idle past timeout at now (a session with
// no last-seen time is never idle), and the latest last-seen among them.
func idleSessions(sessions []homeserver.Device, timeout time.Duration, now time.Time) ([]string, int64) {
	var idle []string
	var latest int64
	for _, d := range sessions {
		if d.LastSeen > 0 && now.Sub(time.UnixMilli(d.LastSeen)) >= timeout {
			idle = append(idle, d.ID)
			latest = max(latest, d.LastSeen)
		}
	}
	return idle, latest
}

// IdleSweeper looks for users whose sessions are all idle, periodically, and
// queues an idle_logoff job for each. The users it checks are those joined
// to a room it knows, on the homeserver's own domain.
type IdleSweeper struct {
	// Caps: with Synapse's admin API, idle devices of a user who still
	// uses others are deleted one by one.
	Caps   appservice.WipeCaps
	DB     *store.DB
	Policy func() *policy.Policy
	HS     SessionHomeserver
	Domain string
	Exempt func(user string) bool
	Now    appservice.Clock
	Wake   func()
	Log    zerolog.Logger
}

// sweepEvery is how often the sweeper runs for a timeout: a quarter of it,
// between 10 s and 5 min, so a session ends at most a quarter late.
func sweepEvery(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 10*time.Second), 5*time.Minute)
}

// Run sweeps until ctx ends.
func (s *IdleSweeper) Run(ctx context.Context) {
	for {
		wait := 10 * time.Second // policy off: look again soon for a change
		if timeout := s.Policy().SessionIdleTimeout.D(); timeout > 0 {
			if n, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.Log.Warn().Str("error", appservice.SafeError(err)).Msg("idle session sweep failed")
			} else if n > 0 {
				s.Log.Info().Int("users", n).Msg("idle users queued for sign-out")
			}
			wait = sweepEvery(timeout)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Sweep checks every known user once and queues the idle ones; it returns
// how many were queued.
func (s *IdleSweeper) Sweep(ctx context.Context) (int, error) {
	timeout := s.Policy().SessionIdleTimeout.D()
	if timeout <= 0 {
		return 0, nil
	}
	users, err := appservice.JoinedUsers(ctx, s.DB, s.Domain)
	if err != nil {
		return 0, err
	}
	queued := 0
	for _, u := range users {
		if ctx.Err() != nil {
			return queued, ctx.Err()
		}
		if s.Exempt != nil && s.Exempt(u) {
			continue
		}
		sessions, err := s.HS.Sessions(ctx, u)
		if err != nil {
			if appservice.Unreachable(err) {
				return queued, err
			}
			s.Log.Debug().Str("error", appservice.SafeError(err)).Msg("could not list a user's sessions")
			continue
		}
		idle, latest := idleSessions(sessions, s.Caps.IdleAfter(timeout), s.Now())
		if len(idle) == 0 || (len(idle) < len(sessions) && !s.Caps.AdminAPI) {
			continue
		}
		payload, _ := json.Marshal(idlePayload{User: u})
		err = s.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			// One job per idle spell: the key changes when the user is seen again.
			return appservice.Enqueue(ctx, s.DB, tx, s.Now(), appservice.JobSpec{Kind: JobIdleLogoff, DedupeKey: fmt.Sprintf("idle:%s:%d", u, latest), Payload: payload})
		})
		if err != nil {
			return queued, err
		}
		queued++
	}
	if queued > 0 && s.Wake != nil {
		s.Wake()
	}
	return queued, nil
}

// idlePayload names the user an idle_logoff job signs out.
type idlePayload struct {
	User string `json:"user"`
}

// idleJobs handle idle_logoff jobs: the user's sessions are
// checked again (one may have been used since the sweep, or the policy
// changed), signed out everywhere, and the sign-out confirmed and audited.
func idleJobs(env appservice.Env, hs SessionHomeserver, pol func() *policy.Policy, caps appservice.WipeCaps) map[string]appservice.Handler {
	return map[string]appservice.Handler{JobIdleLogoff: func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[idlePayload](j)
		if err == nil && p.User == "" {
			err = appservice.Permanent(errors.New("bad job payload: no user"))
		}
		if err != nil {
			return err
		}
		timeout := pol().SessionIdleTimeout.D()
		if timeout <= 0 {
			return nil
		}
		sessions, err := hs.Sessions(ctx, p.User)
		if err != nil {
			return err
		}
		idle, _ := idleSessions(sessions, caps.IdleAfter(timeout), env.Now())
		all, _ := allIdle(sessions, caps.IdleAfter(timeout), env.Now())
		if len(idle) == 0 || (!all && !caps.AdminAPI) {
			return nil // used again since the sweep
		}
		if err := caps.EndSessions(ctx, hs, p.User, idle); err != nil {
			return err
		}
		after, err := hs.Sessions(ctx, p.User)
		if err != nil {
			return err
		}
		left := 0
		for _, d := range after {
			if slices.Contains(idle, d.ID) {
				left++
			}
		}
		if left > 0 {
			return fmt.Errorf("%d idle sessions remain after signing out", left)
		}
		action := "idle_logoff"
		if !all {
			action = "idle_device_logoff"
		}
		return env.Chain.AppendTx(ctx, env.DB, &audit.Record{Type: audit.TypeSession, Outcome: audit.OutcomeSuccess, Action: action,
			Detail: env.Chain.Keys().User(p.User), JobID: j.ID, Count: int64(len(idle))})
	}}
}
