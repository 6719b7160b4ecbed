package appservice

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// Synapse strands a transaction created as a recovery ends (313, 314, then
// 316: 315 never comes on its own). The one past the gap is refused once,
// so Synapse recovers and sends the skipped one first; then both are
// stored. A number that never comes costs one refusal, not a livelock.
func TestSkippedTransactionIsAskedFor(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.server.Gaps = NewTxnGaps()
			kicks := 0
			p.server.Recover = func() { kicks++ }
			put := func(txn string, want int) {
				t.Helper()
				ev := msgEvent("$e"+txn, "!r:hs", "@u:hs", "x")
				if rec := p.put(t, txn, txnBodyOf(ev)); rec.Code != want {
					t.Fatalf("txn %s: %d %s, want %d", txn, rec.Code, rec.Body, want)
				}
			}
			put("313", http.StatusOK)
			put("314", http.StatusOK)
			put("316", http.StatusServiceUnavailable) // 315 skipped
			if kicks != 1 {
				t.Fatalf("%d pings asked for, want 1", kicks)
			}
			put("315", http.StatusOK) // Synapse's recoverer: the oldest unsent first
			put("316", http.StatusOK)
			// A number that never comes: refused once, then taken.
			put("318", http.StatusServiceUnavailable)
			put("318", http.StatusOK)
			put("319", http.StatusOK)
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 6 {
				t.Fatalf("%d events stored, want 6", n)
			}
			// Transaction IDs that are not numbers (other homeservers) are
			// never refused.
			put("abc", http.StatusOK)
			put(fmt.Sprint(1<<40), http.StatusServiceUnavailable)
		})
	}
}
