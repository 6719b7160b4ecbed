package appservice

import (
	"context"
	"database/sql"
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
	stamp FileStamp
	// refused: the file's last reading was refused (so the next good one,
	// even the policy already in force, is news).
	refused bool
	// onChange run, in order, after a new policy comes into force.
	onChange []func(ctx context.Context, old, p *policy.Policy)
}

// FileStamp identifies a file's version (modification time and size): a
// file watched for edits is reloaded when its stamp changes. A missing
// file's stamp is the zero value.
type FileStamp struct {
	mod  time.Time
	size int64
}

// StampOf is path's stamp now.
func StampOf(path string) FileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return FileStamp{}
	}
	return FileStamp{st.ModTime(), st.Size()}
}

// builtinPolicy applies when no policy file is configured: the strict built-in
// value of every knob.
var builtinPolicy = &policy.Policy{Version: 1, Hash: "builtin"}

// BuiltinPolicy is the policy in force when none is configured.
func BuiltinPolicy() *policy.Policy { return builtinPolicy }

// NewPolicyHolder loads the policy at path ("" for the built-in one). A
// service must not start on a policy it cannot read, so errors are returned.
func NewPolicyHolder(ctx context.Context, path string, db *store.DB, chain *audit.Chain, log zerolog.Logger) (*PolicyHolder, error) {
	h := &PolicyHolder{path: path, db: db, chain: chain, log: log}
	if path == "" {
		h.current.Store(builtinPolicy)
		return h, h.adopt(ctx, builtinPolicy, []byte{}, "builtin")
	}
	h.stamp = StampOf(path)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := policy.Parse(path, data)
	if err != nil {
		return nil, err
	}
	h.current.Store(p)
	return h, h.adopt(ctx, p, data, "start")
}

// OnChange adds f to what runs after a new policy, p, comes into force in
// place of old, after those added before it.
func (h *PolicyHolder) OnChange(f func(ctx context.Context, old, p *policy.Policy)) {
	h.onChange = append(h.onChange, f)
}

// Current is the policy in force.
func (h *PolicyHolder) Current() *policy.Policy { return h.current.Load() }

// Reload reads the file again. It reports whether a new policy is in force.
func (h *PolicyHolder) Reload(ctx context.Context, why string) (bool, error) {
	if h.path == "" {
		return false, nil
	}
	h.stamp = StampOf(h.path)
	data, err := os.ReadFile(h.path)
	if err != nil {
		h.log.Error().Err(err).Msg("cannot read the policy file; the last good policy stays in force")
		h.refused = true
		return false, errors.Join(err, h.audit(ctx, "", audit.OutcomeFailure, why))
	}
	p, err := policy.Parse(h.path, data)
	if err != nil {
		// The messages are file:line:col and key names; they carry no PHI.
		h.log.Error().Str("errors", err.Error()).Msg("policy file refused; the last good policy stays in force")
		h.refused = true
		return false, errors.Join(err, h.audit(ctx, policy.HashOf(data), audit.OutcomeFailure, why))
	}
	if old := h.Current(); old != nil && old.Hash == p.Hash {
		if h.refused {
			// The edit was undone: say so, or the admin never knows.
			h.refused = false
			var since int64
			h.db.R.QueryRowContext(ctx, `SELECT since FROM policy_in_force WHERE id = 1`).Scan(&since)
			h.log.Info().Str("policy_version", p.Hash).Time("in_force_since", time.UnixMilli(since)).
				Msg("policy file accepted again; the policy in force is unchanged")
			return false, h.audit(ctx, p.Hash, audit.OutcomeSuccess, "accepted-again")
		}
		return false, nil
	}
	if err := h.adopt(ctx, p, data, why); err != nil {
		// Not in force until its adoption is on the record.
		return false, err
	}
	h.refused = false
	old := h.current.Swap(p)
	h.log.Info().Str("policy_version", p.Hash).Str("trigger", why).Msg("new policy in force")
	for _, f := range h.onChange {
		f(ctx, old, p)
	}
	return true, nil
}

// adopt records p (its text, data) as the policy in force, with its
// policy.load record, in one transaction. A start with the policy already
// in force keeps its since.
func (h *PolicyHolder) adopt(ctx context.Context, p *policy.Policy, data []byte, why string) error {
	return h.db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var hash string
		err := tx.QueryRowContext(ctx, `SELECT hash FROM policy_in_force WHERE id = 1`).Scan(&hash)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO policy_in_force (id, hash, body, since) VALUES (1, $1, $2, $3)`, p.Hash, data, h.chain.Now().UnixMilli())
		case err == nil && hash != p.Hash:
			_, err = tx.ExecContext(ctx, `UPDATE policy_in_force SET hash = $1, body = $2, since = $3 WHERE id = 1`, p.Hash, data, h.chain.Now().UnixMilli())
		}
		if err != nil {
			return err
		}
		return h.chain.Append(ctx, tx, &audit.Record{Type: audit.TypePolicyLoad, Outcome: audit.OutcomeSuccess, PolicyVersion: p.Hash, Detail: why})
	})
}

// PolicyInForce is the policy the running service last adopted, from the
// database: what `status` and `rooms` report on while the file on disk is
// refused. since is when it came into force (zero if none is recorded).
func PolicyInForce(ctx context.Context, db *store.DB) (*policy.Policy, time.Time, error) {
	var hash string
	var body []byte
	var since int64
	err := db.R.QueryRowContext(ctx, `SELECT hash, body, since FROM policy_in_force WHERE id = 1`).Scan(&hash, &body, &since)
	if err != nil {
		return nil, time.Time{}, err
	}
	if hash == builtinPolicy.Hash {
		return builtinPolicy, time.UnixMilli(since), nil
	}
	p, err := policy.Parse("(policy in force)", body)
	return p, time.UnixMilli(since), err
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
			if s := StampOf(h.path); s != h.stamp {
				h.Reload(ctx, "file-changed")
			}
		}
	}
}
