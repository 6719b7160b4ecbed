package enforce

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// SweepRooms enrols rooms the service already knows (from earlier events)
// that the policy in force wants encrypted but are not: at start-up, and
// whenever a new policy comes into force. Each gets an enable_encryption job
// as its creator and a policy.decision record. It returns how many it enrolled.
func SweepRooms(ctx context.Context, db *store.DB, chain *audit.Chain, pol *policy.Policy) (int, error) {
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return 0, err
	}
	type candidate struct {
		room, creator string
		eff           policy.Effective
	}
	var todo []candidate
	for _, r := range known.All() {
		if r.Encrypted || r.Creator == "" {
			continue
		}
		if eff := pol.For(r.Policy); eff.Encryption == policy.EncryptionRequired {
			todo = append(todo, candidate{r.ID, r.Creator, eff})
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	keys := chain.Keys()
	enrolled := 0
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var jobs []appservice.JobSpec
		var recs []*audit.Record
		for _, c := range todo {
			key := fmt.Sprintf("sweep:%s:%s", c.room, pol.Hash)
			var exists int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM job WHERE dedupe_key = $1`, "enable_encryption:"+key).Scan(&exists); err != nil {
				return err
			}
			if exists > 0 {
				continue // already swept under this policy
			}
			for _, kind := range []policy.ActionKind{policy.ActEnableEncryption, policy.ActBotJoin} {
				a := policy.Action{Kind: kind, Rule: "encryption-sweep", ActAs: c.creator, Reason: policy.ReasonEncryptionRequired}
				job, rec := appservice.ActionJob(a, c.room, fmt.Sprintf("%s:%s", kind, key), "", c.eff.DryRun, pol.Hash, keys)
				jobs = append(jobs, job)
				recs = append(recs, rec)
			}
			enrolled++
		}
		if err := appservice.Enqueue(ctx, db, tx, chain.Now(), jobs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	if err != nil {
		return 0, err
	}
	return enrolled, nil
}

// Enrol enrols the known rooms pol wants encrypted (SweepRooms).
func (f *Feature) Enrol(ctx context.Context, pol *policy.Policy) error {
	n, err := SweepRooms(ctx, f.env.DB, f.env.Chain, pol)
	if n > 0 {
		f.env.Log.Info().Int("rooms", n).Msg("enrolling known rooms that policy requires to be encrypted")
		f.env.Wake()
	}
	return err
}
