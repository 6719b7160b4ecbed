package expiry

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// NoticeLifetimeChanges tells the members of every known room whose message
// lifetime a new policy changed: one notice job per room (dry-run aware,
// audited as a policy.decision), at most once per room and policy version.
func NoticeLifetimeChanges(ctx context.Context, db *store.DB, chain *audit.Chain, old, pol *policy.Policy) (int, error) {
	known, err := appservice.LoadKnownRooms(ctx, db)
	if err != nil {
		return 0, err
	}
	type change struct {
		room string
		a    policy.Action
		dry  bool
	}
	var todo []change
	for _, r := range known.All() {
		if r.Creator == "" {
			continue
		}
		before, after := old.For(r.Policy), pol.For(r.Policy)
		if l := after.Lifetime(r.MaxLifetime); l != before.Lifetime(r.MaxLifetime) {
			todo = append(todo, change{r.ID, policy.Action{Kind: policy.ActNotice, Rule: "retention", ActAs: r.Creator, Reason: lifetimeText(l)}, after.DryRun})
		}
	}
	if len(todo) == 0 {
		return 0, nil
	}
	keys := chain.Keys()
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var jobs []appservice.JobSpec
		var recs []*audit.Record
		for _, c := range todo {
			job, rec := appservice.ActionJob(c.a, c.room, fmt.Sprintf("notice:retention:policy:%s:%s", pol.Hash, c.room), "", c.dry, pol.Hash, keys)
			jobs = append(jobs, job)
			recs = append(recs, rec)
		}
		if err := appservice.Enqueue(ctx, db, tx, chain.Now(), jobs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	return len(todo), err
}
