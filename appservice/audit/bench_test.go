package audit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// BenchmarkVerify reports audit verify's rate over a chain of real-shaped
// event.received records: go test -bench Verify -benchtime 3x ./appservice/audit
func BenchmarkVerify(b *testing.B) {
	for _, size := range []int{1_000_000} {
		for _, dbType := range storetest.Dialects {
			b.Run(fmt.Sprintf("%s/%d", dbType, size), func(b *testing.B) {
				ctx := context.Background()
				db, _ := storetest.Open(b, dbType)
				c := newChain(b, db)
				recs := make([]*Record, 10_000)
				for done := 0; done < size; done += len(recs) {
					for i := range recs {
						recs[i] = &Record{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: c.keys.User(fmt.Sprintf("@user%d:hs", i%300)),
							Room: c.keys.Room(fmt.Sprintf("!room%d:hs", i%40)), EventID: fmt.Sprintf("$%043d", done+i), EventType: "m.room.encrypted"}
					}
					if err := c.AppendTx(ctx, db, recs...); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					res, err := Verify(ctx, db, c.keys)
					if err != nil || res.Bad != nil || res.Records != int64(size) {
						b.Fatalf("%+v %v", res, err)
					}
				}
				b.ReportMetric(float64(size*b.N)/time.Since(start).Seconds(), "records/s")
			})
		}
	}
}
