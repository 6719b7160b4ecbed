package appservice

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// Pruning old metadata loses no guarantee: every message that still exists
// keeps its inbox row, so a wipe still finds it (in rooms where nothing
// expires, under a hold, or whose expiry failed: a wipe after pruning is
// run in package sessions), held expiries stay held, events still in the dedupe window
// or not yet dispatched stay, and the dedupe markers of decisions that are
// not about one event (encryption sweeps, per-policy notices, device
// warnings) stay. What goes: non-message events, messages redacted on
// expiry, and done jobs that mark one event or one window.
func TestPruneKeepsEveryGuarantee(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			p := newPipeline(t, dbType)
			cut := time.UnixMilli(1_800_000_000_000)
			old, recent := cut.Add(-48*time.Hour).UnixMilli(), cut.Add(time.Hour).UnixMilli()
			inbox := func(id, typ string, at int64) {
				p.exec(t, `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at) VALUES ($1, $2, 't', '!r:hs', $3, '@u:hs', $4)`,
					id, at, typ, at)
			}
			expiry := func(id, state string) {
				p.exec(t, `INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state, origin_ts) VALUES ($1, '!r:hs', '@u:hs', $2, $3, $4, $2)`,
					id, old, old+1, state)
			}
			job := func(kind, key, state string, at int64) {
				p.exec(t, `INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5, $5)`,
					kind, key, []byte(`{}`), state, at)
			}
			inbox("$member", "m.room.member", old)     // a state event: only dedupe needs it
			inbox("$lives", "m.room.encrypted", old)   // no expiry in its room: a wipe may redact it
			inbox("$expired", "m.room.encrypted", old) // redacted on expiry
			expiry("$expired", "queued")
			job("expire", "expire:$expired", "done", old)
			inbox("$held", "m.room.encrypted", old) // under a legal hold
			expiry("$held", "held")
			inbox("$failed", "m.room.encrypted", old) // its expiry could not redact it
			expiry("$failed", "queued")
			job("expire", "expire:$failed", "failed", old)
			p.exec(t, `UPDATE dispatch_cursor SET seq = (SELECT MAX(seq) FROM inbox) WHERE id = 1`)
			inbox("$undispatched", "m.reaction", old) // the dispatcher has not reached it
			inbox("$fresh", "m.room.member", recent)  // inside the window

			job("redact", "redact:plaintext:$lives", "done", old)
			job("notice", "notice:plaintext:!r:hs:@u:hs:3000000", "done", old)
			job("purge_history", "purge:!r:hs:1799000000", "done", old)
			job("notice", "notice:retention:policy:sha256:ab:!r:hs", "done", old)
			job("enable_encryption", "enable_encryption:sweep:!r:hs:sha256:ab", "done", old)
			job("device_warn", "devwarn:@u:hs:PHONE", "done", old)
			job("redact", "redact:plaintext:$fresh", "done", recent)
			job("redact", "redact:plaintext:$pending", "pending", old)

			pr, err := PruneMetadata(ctx, p.db, p.chain, cut)
			if err != nil {
				t.Fatal(err)
			}
			if pr != (Pruned{Inbox: 1, Expiry: 1, Jobs: 4}) {
				t.Fatalf("pruned %+v", pr)
			}
			ids := func(q string) string {
				rows, err := p.db.R.QueryContext(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				var out []string
				for rows.Next() {
					var s string
					rows.Scan(&s)
					out = append(out, s)
				}
				slices.Sort(out)
				return strings.Join(out, ",")
			}
			if got := ids(`SELECT event_id FROM inbox`); got != "$failed,$fresh,$held,$lives,$undispatched" {
				t.Fatalf("inbox kept %s", got)
			}
			if got := ids(`SELECT event_id || ':' || state FROM expiry`); got != "$failed:queued,$held:held" {
				t.Fatalf("expiry kept %s", got)
			}
			if got := ids(`SELECT dedupe_key FROM job`); got != "devwarn:@u:hs:PHONE,enable_encryption:sweep:!r:hs:sha256:ab,expire:$failed,notice:retention:policy:sha256:ab:!r:hs,redact:plaintext:$fresh,redact:plaintext:$pending" {
				t.Fatalf("jobs kept %s", got)
			}

			// A second pass finds nothing, and records nothing.
			before := p.count(t, `SELECT COUNT(*) FROM audit`)
			if pr, err := PruneMetadata(ctx, p.db, p.chain, cut); err != nil || pr != (Pruned{}) {
				t.Fatalf("second pass %+v %v", pr, err)
			}
			if after := p.count(t, `SELECT COUNT(*) FROM audit`); after != before {
				t.Fatalf("an empty pass wrote %d audit records", after-before)
			}
			recs, _ := audit.ReadAfter(ctx, p.db, 0, 100)
			last, _ := recs[len(recs)-1].Fields()
			if last.Type != audit.TypeMaintenance || last.Action != "prune" || last.Count != 6 {
				t.Fatalf("the pass was recorded as %+v", last)
			}
			// The rows beyond the dispatcher are walked once dispatched; the
			// walk stops at the first row inside the window.
			p.exec(t, `UPDATE dispatch_cursor SET seq = (SELECT MAX(seq) FROM inbox) WHERE id = 1`)
			if pr, err := PruneMetadata(ctx, p.db, p.chain, cut); err != nil || pr.Inbox != 1 {
				t.Fatalf("after dispatch %+v %v", pr, err)
			}
			if got := ids(`SELECT event_id FROM inbox`); got != "$failed,$fresh,$held,$lives" {
				t.Fatalf("inbox kept %s", got)
			}
		})
	}
}
