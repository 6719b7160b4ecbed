package appservice

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// SweepRooms enrols rooms the service already knows (from earlier events)
// that the policy in force wants encrypted but are not: at start-up, and
// whenever a new policy comes into force. Each gets an enable_encryption job
// as its creator and a policy.decision record. It returns how many it enrolled.
func SweepRooms(ctx context.Context, db *store.DB, chain *audit.Chain, pol *policy.Policy) (int, error) {
	links, err := LoadRoomLinks(ctx, db)
	if err != nil {
		return 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT room_id, creator, aliases, spaces FROM room_state WHERE NOT encrypted AND creator <> ''`)
	if err != nil {
		return 0, err
	}
	type candidate struct {
		room, creator string
		eff           policy.Effective
	}
	var todo []candidate
	for rows.Next() {
		var id, creator, aliases, spaces string
		if err := rows.Scan(&id, &creator, &aliases, &spaces); err != nil {
			rows.Close()
			return 0, err
		}
		eff := pol.For(StoredRoom(id, aliases, spaces, links))
		if eff.Encryption == policy.EncryptionRequired {
			todo = append(todo, candidate{id, creator, eff})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(todo) == 0 {
		return 0, nil
	}
	keys := chain.Keys()
	enrolled := 0
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var jobs []JobSpec
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
				job, rec := jobFor(a, c.room, fmt.Sprintf("%s:%s", kind, key), "", c.eff.DryRun, pol.Hash, keys)
				jobs = append(jobs, job)
				recs = append(recs, rec)
			}
			enrolled++
		}
		if err := Enqueue(ctx, db, tx, chain.Now(), jobs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	if err != nil {
		return 0, err
	}
	return enrolled, nil
}

// NoticeLifetimeChanges tells the members of every known room whose message
// lifetime a new policy changed: one notice job per room (dry-run aware,
// audited as a policy.decision), at most once per room and policy version.
func NoticeLifetimeChanges(ctx context.Context, db *store.DB, chain *audit.Chain, old, pol *policy.Policy) (int, error) {
	links, err := LoadRoomLinks(ctx, db)
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
		r := StoredRoom(id, aliases, spaces, links)
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
		var jobs []JobSpec
		var recs []*audit.Record
		for _, c := range todo {
			job, rec := jobFor(c.a, c.room, fmt.Sprintf("notice:retention:policy:%s:%s", pol.Hash, c.room), "", c.dry, pol.Hash, keys)
			jobs = append(jobs, job)
			recs = append(recs, rec)
		}
		if err := Enqueue(ctx, db, tx, chain.Now(), jobs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	return len(todo), err
}
