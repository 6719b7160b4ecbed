package appservice

import (
	"context"
	"crypto/hmac"
	"database/sql"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// Rotation is what RotateKey did.
type Rotation struct {
	Retired  string // where the old key now is (for the key vault)
	Resigned int64  // jobs MACed again under the new job key
}

// RotateKey replaces the pseudonym, job or archive key with a new random one, with
// the service stopped (it holds its keys in memory). The job key's rotation
// MACs every job not yet done again, in one transaction, under the new key;
// a job whose MAC matches neither key stays refused. Either rotation is
// recorded in the audit trail (admin.key, action rotate). Interrupted, it is
// run again: the new key waiting in its .new file is used, and jobs already
// MACed under it are taken as they are.
func RotateKey(ctx context.Context, cfg *config.Config, which, actor, stamp string, now Clock) (Rotation, error) {
	files := KeyFiles(cfg)
	// The archive key's retired keys stay beside it: each still opens the
	// archive records it sealed (appservice/archive).
	path := map[string]string{"pseudonym": files.Pseudonym, "job": files.Job, "archive": cfg.Keys.ArchiveFile}[which]
	if path == "" {
		return Rotation{}, fmt.Errorf("the %s key does not rotate in place (see docs/keys.md)", which)
	}
	db, chain, err := OpenStore(ctx, cfg, now)
	if err != nil {
		return Rotation{}, err
	}
	defer db.Close()
	fresh, err := audit.PrepareRotation(path, which)
	if err != nil {
		return Rotation{}, err
	}
	var rot Rotation
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if which == "job" {
			if rot.Resigned, err = resignJobs(ctx, tx, db.JobKey(), fresh); err != nil {
				return err
			}
		}
		return chain.Append(ctx, tx, &audit.Record{Type: audit.TypeAdminKey, Outcome: audit.OutcomeSuccess, Actor: actor, Action: "rotate",
			Detail: which, Count: rot.Resigned})
	})
	if err != nil {
		return rot, err
	}
	rot.Retired, err = audit.FinishRotation(path, stamp)
	return rot, err
}

// resignJobs MACs again under fresh every job not yet done whose MAC
// matches the old key.
func resignJobs(ctx context.Context, tx *sql.Tx, old, fresh []byte) (int64, error) {
	return macJobs(ctx, tx, `state <> 'done'`, fresh, func(r macRow) bool {
		return hmac.Equal([]byte(r.mac), []byte(jobMAC(old, r.kind, r.key, r.payload, r.dry)))
	})
}
