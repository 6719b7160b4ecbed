package appservice

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// PolicyHolder keeps the policy in force and replaces it, atomically, when the
// file changes or on SIGHUP. An invalid file is refused with every error
// logged, and the last good policy stays in force. Every load and every
// refusal is audited with the file's hash, never its text.
type PolicyHolder struct {
	path    string
	db      *store.DB
	chain   *audit.Chain
	log     zerolog.Logger
	current atomic.Pointer[policy.Policy]
	// stamp is what the file looked like when last read, to notice edits.
	stamp fileStamp
	// OnChange, if set, runs after a new policy comes into force.
	OnChange func(context.Context, *policy.Policy)
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) fileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{st.ModTime(), st.Size()}
}

// builtinPolicy applies when no policy file is configured: the strict built-in
// value of every knob.
var builtinPolicy = &policy.Policy{Version: 1, Hash: "builtin"}

// NewPolicyHolder loads the policy at path ("" for the built-in one). A
// service must not start on a policy it cannot read, so errors are returned.
func NewPolicyHolder(ctx context.Context, path string, db *store.DB, chain *audit.Chain, log zerolog.Logger) (*PolicyHolder, error) {
	h := &PolicyHolder{path: path, db: db, chain: chain, log: log}
	if path == "" {
		h.current.Store(builtinPolicy)
		return h, h.audit(ctx, builtinPolicy.Hash, audit.OutcomeSuccess, "builtin")
	}
	h.stamp = stampOf(path)
	p, err := policy.Load(path)
	if err != nil {
		return nil, err
	}
	h.current.Store(p)
	return h, h.audit(ctx, p.Hash, audit.OutcomeSuccess, "start")
}

// Current is the policy in force.
func (h *PolicyHolder) Current() *policy.Policy { return h.current.Load() }

// Reload reads the file again. It reports whether a new policy is in force.
func (h *PolicyHolder) Reload(ctx context.Context, why string) (bool, error) {
	if h.path == "" {
		return false, nil
	}
	h.stamp = stampOf(h.path)
	data, err := os.ReadFile(h.path)
	if err != nil {
		h.log.Error().Err(err).Msg("cannot read the policy file; the last good policy stays in force")
		return false, errors.Join(err, h.audit(ctx, "", audit.OutcomeFailure, why))
	}
	p, err := policy.Parse(h.path, data)
	if err != nil {
		// The messages are file:line:col and key names; they carry no PHI.
		h.log.Error().Str("errors", err.Error()).Msg("policy file refused; the last good policy stays in force")
		return false, errors.Join(err, h.audit(ctx, policy.HashOf(data), audit.OutcomeFailure, why))
	}
	if old := h.Current(); old != nil && old.Hash == p.Hash {
		return false, nil
	}
	if err := h.audit(ctx, p.Hash, audit.OutcomeSuccess, why); err != nil {
		// Not in force until its adoption is on the record.
		return false, err
	}
	h.current.Store(p)
	h.log.Info().Str("policy_version", p.Hash).Str("trigger", why).Msg("new policy in force")
	if h.OnChange != nil {
		h.OnChange(ctx, p)
	}
	return true, nil
}

func (h *PolicyHolder) audit(ctx context.Context, hash, outcome, why string) error {
	return h.chain.AppendTx(ctx, h.db, &audit.Record{Type: audit.TypePolicyLoad, Outcome: outcome, PolicyVersion: hash, Detail: why})
}

// Watch reloads on SIGHUP and when the file's size or time changes, until ctx ends.
func (h *PolicyHolder) Watch(ctx context.Context, poll time.Duration) {
	if h.path == "" {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			h.Reload(ctx, "sighup")
		case <-t.C:
			if s := stampOf(h.path); s != h.stamp {
				h.Reload(ctx, "file-changed")
			}
		}
	}
}
