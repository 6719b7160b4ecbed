package appservice

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Env is what the engine gives every feature: the database, audit chain,
// clock and homeserver the engine itself uses. A feature keeps what it
// needs of it; it never reaches into the engine's own types.
type Env struct {
	Config  *config.Config
	DB      *store.DB
	Chain   *audit.Chain
	Now     Clock
	Log     zerolog.Logger
	Metrics *Metrics
	// Policy is the policy in force (it changes: call it each time).
	Policy func() *policy.Policy
	// Wake tells the job runner that jobs were queued outside the
	// dispatcher (a feature's own loop, say).
	Wake func()
	HS   *homeserver.Client
	// Bot is the E2EE bot (nil in tests without one).
	Bot *bot.Bot
	// Links are the rooms' confirmed aliases and spaces.
	Links *Links
	// Caps is how the homeserver lets the service end sessions.
	Caps WipeCaps
	// BotUser is the bot's Matrix ID.
	BotUser string
}

// Feature is one capability on the engine (enforcement, expiry, sessions,
// identity, ...). What every feature has: a name, and the job kinds it
// handles (none is allowed). What some features have, the engine finds by
// type assertion: EventDecider, CiphertextDecider, RowSaver, Starter,
// Looper, Enroller, PolicyWatcher, OutcomeWatcher.
type Feature interface {
	Name() string
	Jobs() map[string]Handler
}

// EventDecider is a feature's say on each event the dispatcher walks, given
// the room's state as of it and the settings policy gives the room. It adds
// jobs, audit records and its own rows to dec, all committed in the
// dispatcher's one transaction with its cursor. It must be pure (no I/O):
// a crash before the commit simply decides again. It is asked about
// ciphertext only where it is a CiphertextDecider that says so.
type EventDecider interface {
	DecideEvent(ev *Event, room *RoomInfo, pol *policy.Policy, settings policy.Effective, dec *Decision)
}

// CiphertextDecider is an EventDecider that also decides on ciphertext
// (most traffic, which no rule reads) where Sees says so for the policy and
// room. When no feature does, the engine skips resolving the room's
// settings for it.
type CiphertextDecider interface {
	SeesCiphertext(pol *policy.Policy, room *RoomInfo) bool
}

// RowSaver writes the rows a feature added to decisions (Decision.Row) in
// the dispatcher's transaction, once per batch, in the order added.
type RowSaver interface {
	SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error
}

// Starter runs once when the service starts, after service.start is on the
// record and before any Looper starts (loading a file, say).
type Starter interface {
	Start(ctx context.Context)
}

// Looper is background work: each function returns when its context ends,
// and the service waits for all of them before it writes service.stop.
type Looper interface {
	Loops() []func(context.Context)
}

// Enroller brings the rooms the service already knows under the policy:
// when the service starts, when a new policy comes into force (before any
// PolicyWatcher), and when a room's alias or space is confirmed (which can
// change the override that applies to it).
type Enroller interface {
	Enrol(ctx context.Context, pol *policy.Policy) error
}

// PolicyWatcher reacts to a new policy coming into force, after the
// Enrollers, in the order the features were added.
type PolicyWatcher interface {
	PolicyChanged(ctx context.Context, old, p *policy.Policy)
}

// OutcomeWatcher reacts to each job's final outcome, in the transaction
// that records it (see OutcomeHook).
type OutcomeWatcher interface {
	JobOutcome(ctx context.Context, tx *sql.Tx, j *Job, state, errText string, now time.Time) error
}

// Router is a feature's own HTTP endpoints beside the application service
// API (a pager gateway's pushes, say), by path, each under /_hipaa/. The
// handler does its own authentication: the homeserver's token is not for
// them.
type Router interface {
	Routes() map[string]http.Handler
}

// ReceiptKeeper says which rooms' read receipts are kept: read tracking
// is a policy choice per room, and the rest are never stored.
type ReceiptKeeper interface {
	KeepsReceipts(room string) bool
}

// CiphertextKeeper has the inbox keep encrypted events' JSON, in the rooms
// it names, until they are decided on, for a feature that decrypts them
// itself later (the archive). It is asked for every encrypted event
// stored: it must answer from memory.
type CiphertextKeeper interface {
	KeepsCiphertext(room string) bool
}

// Add puts features on the service, in order: their job handlers on the
// runner, their deciders on the dispatcher, their hooks on the policy
// holder and the runner, and their loops beside the engine's. Two features
// handling one job kind is a mistake, reported here.
func (s *Service) Add(features ...Feature) error {
	for _, f := range features {
		for kind, h := range f.Jobs() {
			if s.Runner.Handles(kind) {
				return fmt.Errorf("feature %s: job kind %q is already handled", f.Name(), kind)
			}
			s.Runner.Handle(kind, h)
		}
		if d, ok := f.(EventDecider); ok {
			if s.Decider == nil {
				return fmt.Errorf("feature %s decides on events, and the service has no policy decider", f.Name())
			}
			s.Decider.Use(d)
		}
		if st, ok := f.(Starter); ok {
			s.starts = append(s.starts, st.Start)
		}
		if l, ok := f.(Looper); ok {
			s.loops = append(s.loops, l.Loops()...)
		}
		if w, ok := f.(PolicyWatcher); ok {
			if s.Policy == nil {
				return fmt.Errorf("feature %s watches the policy, and the service has none", f.Name())
			}
			s.Policy.OnChange(w.PolicyChanged)
		}
		if e, ok := f.(Enroller); ok {
			s.enrollers = append(s.enrollers, e)
		}
		if w, ok := f.(OutcomeWatcher); ok {
			s.Runner.OnOutcome(w.JobOutcome)
		}
		if k, ok := f.(ReceiptKeeper); ok && s.Inbox != nil {
			if s.Inbox.keepReceipt != nil {
				return fmt.Errorf("feature %s: another feature already decides which receipts are kept", f.Name())
			}
			s.Inbox.keepReceipt = k.KeepsReceipts
		}
		if k, ok := f.(CiphertextKeeper); ok && s.Inbox != nil {
			if s.Inbox.keepCiphertext != nil {
				return fmt.Errorf("feature %s: another feature already keeps ciphertext", f.Name())
			}
			s.Inbox.keepCiphertext = k.KeepsCiphertext
		}
		if r, ok := f.(Router); ok {
			for path, h := range r.Routes() {
				if err := s.Server.Mount(path, h); err != nil {
					return fmt.Errorf("feature %s: %w", f.Name(), err)
				}
			}
		}
		s.features = append(s.features, f.Name())
	}
	return nil
}

// enrol runs the features' Enrollers with pol, the first error stopping it.
func (s *Service) enrol(ctx context.Context, pol *policy.Policy) error {
	for _, e := range s.enrollers {
		if err := e.Enrol(ctx, pol); err != nil {
			return err
		}
	}
	return nil
}

// Features are the names of the features added, in order.
func (s *Service) Features() []string { return s.features }
