package appservice

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkInboxStore measures the durable store of one transaction (no HTTP).
func BenchmarkInboxStore(b *testing.B) {
	for _, dbType := range []string{"sqlite3"} {
		for _, n := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/%d-events", dbType, n), func(b *testing.B) {
				p := newPipeline(b, dbType)
				ctx := context.Background()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					evs := make([]*Event, n)
					for j := range evs {
						evs[j] = &Event{ID: fmt.Sprintf("$ev%d_%d", i, j), RoomID: "!r:hs", Type: "m.room.encrypted", Sender: "@u:hs", Raw: []byte(`{"content":{"ciphertext":"abc"}}`)}
					}
					if _, err := p.inbox.Store(ctx, fmt.Sprint("t", i), evs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}
