package appservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

// BenchmarkInboxStore measures the durable store of one transaction (no HTTP).
func BenchmarkInboxStore(b *testing.B) {
	for _, dbType := range []string{"sqlite3", "postgres"} {
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

// BenchmarkInboxStoreBySize measures durable 100-event transactions with
// hashed event IDs (as room versions 4 and later have) on SQLite, with the
// background checkpointer running, when the inbox is empty and again after
// it holds 0.2 M, 0.5 M and 1 M events: the database-size effect without
// HTTP or a load generator sharing the cores. Run with -benchtime 1x.
func BenchmarkInboxStoreBySize(b *testing.B) {
	p := newPipeline(b, "sqlite3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.db.StartCheckpointer(ctx, 100*time.Millisecond, func(err error) { b.Error(err) })
	txn := 0
	store := func(n int) {
		evs := make([]*Event, n)
		for j := range evs {
			id := make([]byte, 32)
			rand.Read(id)
			evs[j] = &Event{ID: "$" + base64.RawURLEncoding.EncodeToString(id), RoomID: fmt.Sprintf("!room%d:hs", j%37),
				Type: "m.room.encrypted", Sender: fmt.Sprintf("@user%d:hs", j%311), OriginTS: time.Now().UnixMilli()}
		}
		txn++
		if _, err := p.inbox.Store(ctx, fmt.Sprint("t", txn), evs); err != nil {
			b.Fatal(err)
		}
	}
	const measured = 600
	stored := 0
	for i := 0; i < b.N; i++ {
		for _, size := range []int{0, 200_000, 500_000, 1_000_000} {
			for stored < size {
				store(1000)
				stored += 1000
			}
			start := time.Now()
			for j := 0; j < measured; j++ {
				store(100)
			}
			stored += 100 * measured
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/measured, fmt.Sprintf("ms/txn@%dk", size/1000))
		}
	}
}
