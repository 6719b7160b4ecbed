package appservice

import (
	"strconv"
	"sync"
)

// TxnGaps finds transactions a homeserver skipped. Synapse numbers each
// application service's transactions 1, 2, 3, … and sends them in order,
// one at a time, the oldest unsent first after an outage. But a
// transaction created in the moment its recovery ends (the recoverer has
// found nothing left to send, the service is not yet marked up) is stored
// and never sent: no recoverer is left to send it, and later ones go out
// as usual (seen in the crash test: 313, 314, then 316; 315 never came).
// Only a failed transaction starts a recoverer, which sends the oldest
// unsent first. So when a transaction arrives with a number past the next
// one expected, it is refused, once: Synapse then recovers, and sends the
// skipped one first. A skipped number that never comes costs one refusal.
type TxnGaps struct {
	mu      sync.Mutex
	last    int64 // the highest transaction number stored, 0 before the first
	refused map[int64]bool
}

// NewTxnGaps tracks a homeserver that numbers its transactions (Synapse).
func NewTxnGaps() *TxnGaps { return &TxnGaps{refused: map[int64]bool{}} }

// Refuse says whether the transaction txnID should be refused because an
// earlier number is missing; it returns the first missing number.
func (g *TxnGaps) Refuse(txnID string) (missing int64, refuse bool) {
	n, err := strconv.ParseInt(txnID, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == 0 || n <= g.last+1 || g.refused[n] {
		return 0, false
	}
	g.refused[n] = true
	return g.last + 1, true
}

// Stored notes that transaction txnID was stored.
func (g *TxnGaps) Stored(txnID string) {
	n, err := strconv.ParseInt(txnID, 10, 64)
	if err != nil || n <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if n > g.last {
		g.last = n
		for k := range g.refused {
			if k <= n {
				delete(g.refused, k)
			}
		}
	}
}
