package expiry

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// procMB reads one memory figure of this process from /proc, in MB:
// VmRSS (all resident pages), RssAnon (its own memory) or RssFile (mapped
// files: SQLite's memory-mapped database, which is the kernel's page cache).
func procMB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return -1
}

// BenchmarkExpiryScale schedules 1,000,000 expiries (in dispatcher-sized
// transactions of 100), then lets them all come due and pumps them into
// jobs a page at a time, reporting both rates and the process's peak RSS:
// go test -tags goolm -run XXX -bench ExpiryScale -benchtime 1x ./appservice
func BenchmarkExpiryScale(b *testing.B) {
	const total = 1_000_000
	for _, dbType := range storetest.Dialects {
		b.Run(dbType, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				p := apptest.New(b, dbType)
				ctx := context.Background()
				t0 := p.Clock.Now().UnixMilli()
				var peak, peakAnon float64
				sample := func() {
					runtime.GC()
					peak, peakAnon = max(peak, procMB("VmRSS")), max(peakAnon, procMB("RssAnon"))
				}
				start := time.Now()
				batch := make([]Expiry, 100)
				for n := 0; n < total; n += len(batch) {
					for j := range batch {
						k := n + j
						batch[j] = Expiry{EventID: fmt.Sprintf("$%043d", k), RoomID: fmt.Sprintf("!room%d:h", k%500), Sender: fmt.Sprintf("@u%d:h", k%3000),
							ReceivedAt: t0 + int64(k), DueAt: t0 + int64(k) + 3_600_000}
					}
					if err := p.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error { return scheduleExpiries(ctx, p.DB, tx, batch) }); err != nil {
						b.Fatal(err)
					}
					if n%100_000 == 0 {
						sample()
					}
				}
				sched := time.Since(start)
				p.Clock.Advance(2 * time.Hour)
				pump := &Pump{DB: p.DB, Now: p.Clock.Now}
				start = time.Now()
				moved := 0
				for pages := 0; ; pages++ {
					n, err := pump.Once(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if n == 0 {
						break
					}
					moved += n
					if pages%200 == 0 {
						sample()
					}
				}
				fetch := time.Since(start)
				if moved != total {
					b.Fatalf("pumped %d of %d", moved, total)
				}
				sample()
				b.ReportMetric(float64(total)/sched.Seconds(), "scheduled/s")
				b.ReportMetric(float64(total)/fetch.Seconds(), "queued/s")
				b.ReportMetric(peak, "peakRSS-MB")
				b.ReportMetric(peakAnon, "peakAnon-MB")
			}
		})
	}
}
