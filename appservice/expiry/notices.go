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
	links, err := appservice.LoadRoomLinks(ctx, db)
	if err != nil {
		return 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT room_id, creator, aliases, spaces, max_lifetime_ms FROM room_state WHERE creator <> ''`)
	if err != nil {
		return 0, err
	}
	type change struct {
		room string
		a    policy.Action
		dry  bool
	}
	var todo []change
	for rows.Next() {
		var id, creator, aliases, spaces string
		var roomMax int64
		if err := rows.Scan(&id, &creator, &aliases, &spaces, &roomMax); err != nil {
			rows.Close()
			return 0, err
		}
		r := appservice.StoredRoom(id, aliases, spaces, links)
		before, after := old.For(r), pol.For(r)
		if l := after.Lifetime(roomMax); l != before.Lifetime(roomMax) {
			todo = append(todo, change{id, policy.Action{Kind: policy.ActNotice, Rule: "retention", ActAs: creator, Reason: lifetimeText(l)}, after.DryRun})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(todo) == 0 {
		return 0, err
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
