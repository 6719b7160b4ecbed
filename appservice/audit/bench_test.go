package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// fillChain appends size real-shaped event.received records, with a signed
// checkpoint after every 10,000 (as audit.checkpoint_every's default); it
// returns the checkpointer.
func fillChain(b *testing.B, ctx context.Context, db *store.DB, c *Chain, size int) *Checkpointer {
	cp := &Checkpointer{Chain: c, DB: db, Every: 10_000, Interval: time.Hour, File: filepath.Join(b.TempDir(), "checkpoints.jsonl")}
	var err error
	if cp.Key, err = LoadOrCreateSigningKey(filepath.Join(b.TempDir(), "signing.key")); err != nil {
		b.Fatal(err)
	}
	recs := make([]*Record, 10_000)
	for done := 0; done < size; done += len(recs) {
		for i := range recs {
			recs[i] = &Record{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: c.keys.User(fmt.Sprintf("@user%d:hs", i%300)),
				Room: c.keys.Room(fmt.Sprintf("!room%d:hs", i%40)), EventID: fmt.Sprintf("$%043d", done+i), EventType: "m.room.encrypted"}
		}
		if err := c.AppendTx(ctx, db, recs...); err != nil {
			b.Fatal(err)
		}
		if _, err := cp.Once(ctx, true); err != nil {
			b.Fatal(err)
		}
	}
	return cp
}

// BenchmarkVerify reports audit verify's rate, chain and signed checkpoints
// both, over real-shaped records: go test -bench Verify -benchtime 3x ./appservice/audit
func BenchmarkVerify(b *testing.B) {
	for _, size := range []int{1_000_000} {
		for _, dbType := range storetest.Dialects {
			b.Run(fmt.Sprintf("%s/%d", dbType, size), func(b *testing.B) {
				ctx := context.Background()
				db, _ := storetest.Open(b, dbType)
				c := newChain(b, db)
				cp := fillChain(b, ctx, db, c, size)
				file, err := ReadCheckpointFile(cp.File)
				if err != nil {
					b.Fatal(err)
				}
				total := int64(size + size/10_000) // records and checkpoint records
				if dbType == "sqlite3" {
					// As the running service's background checkpointer leaves it:
					// the write-ahead log copied back into the database file.
					if _, err := db.W.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					res, err := Verify(ctx, db, c.keys)
					if err != nil || res.Bad != nil || res.Records != total {
						b.Fatalf("%+v %v", res, err)
					}
					cps, err := VerifyCheckpoints(ctx, db, cp.Key.Pub, file)
					if err != nil || cps.Bad != nil || cps.Checked != size/10_000 {
						b.Fatalf("%+v %v", cps, err)
					}
				}
				b.ReportMetric(float64(total*int64(b.N))/time.Since(start).Seconds(), "records/s")
			})
		}
	}
}

type nopStats struct{}

func (nopStats) Delivered(string, int) {}
func (nopStats) Failed(string)         {}
func (nopStats) Lag(string, int64)     {}

// BenchmarkExport reports each exporter's rate from a standing start over
// 200,000 records: jsonl to a file (fsynced per 500-record batch), and
// syslog over TLS to Debian's rsyslog on loopback, counted when rsyslog has
// written the last record: go test -bench Export -benchtime 1x ./appservice/audit
func BenchmarkExport(b *testing.B) {
	const size = 200_000
	ctx := context.Background()
	db, _ := storetest.Open(b, "sqlite3")
	c := newChain(b, db)
	fillChain(b, ctx, db, c, size)
	total := int64(size + size/10_000)
	run := func(b *testing.B, name string, sink Sink, done func() bool) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			execSQL(b, db, `DELETE FROM audit_export_cursor`)
			ectx, cancel := context.WithCancel(ctx)
			e := &Exporter{Name: name, Sink: sink, DB: db, Stats: nopStats{}, Batch: 500, Poll: time.Millisecond}
			finished := make(chan struct{})
			go func() { e.Run(ectx); close(finished) }()
			for {
				if cur, _ := Cursor(ctx, db, name); cur == total && done() {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			cancel()
			<-finished
		}
		b.ReportMetric(float64(total*int64(b.N))/time.Since(start).Seconds(), "records/s")
	}
	b.Run("jsonl", func(b *testing.B) {
		run(b, "jsonl", &JSONLFile{Path: filepath.Join(b.TempDir(), "audit.jsonl")}, func() bool { return true })
	})
	b.Run("syslog-tls-rsyslog", func(b *testing.B) {
		pki := audittest.NewPKI(b, b.TempDir())
		port := audittest.FreePort(b)
		rs := audittest.StartRsyslog(b, pki, port)
		want := []byte(fmt.Sprintf(`seq="%d"`, total))
		run(b, "syslog", syslogSink(pki, port), func() bool {
			f, err := os.Open(rs.Out)
			if err != nil {
				return false
			}
			defer f.Close()
			st, _ := f.Stat()
			tail := make([]byte, min(st.Size(), 4096))
			f.ReadAt(tail, st.Size()-int64(len(tail)))
			return bytes.Contains(tail, want)
		})
	})
}
