package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

type countingStats struct {
	mu        sync.Mutex
	delivered int
	failed    int
	lag       int64
}

func (c *countingStats) Delivered(_ string, n int) { c.mu.Lock(); c.delivered += n; c.mu.Unlock() }
func (c *countingStats) Failed(string)             { c.mu.Lock(); c.failed++; c.mu.Unlock() }
func (c *countingStats) Lag(_ string, n int64)     { c.mu.Lock(); c.lag = n; c.mu.Unlock() }

// flakySink fails every third delivery and, like a stream that broke, says
// the last batch it took may be lost.
type flakySink struct {
	mu      sync.Mutex
	calls   int
	got     []int64
	lastOK  int64 // first seq of the last batch it accepted
	rewinds int
}

func (f *flakySink) Deliver(ctx context.Context, recs []Stored) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls%3 == 0 {
		return errors.New("connection reset")
	}
	for _, r := range recs {
		f.got = append(f.got, r.Seq)
	}
	f.lastOK = recs[0].Seq
	return nil
}

func (f *flakySink) Rewind() (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rewinds++
	return f.lastOK, f.lastOK > 0
}

func (f *flakySink) Close() error { return nil }

func (f *flakySink) seqs() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.got...)
}

// Every record reaches the sink, in order, however often it fails; records
// are repeated only from a rewind point; a restarted exporter resumes from
// its cursor.
func TestExporterAtLeastOnceInOrder(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			sink := &flakySink{}
			stats := &countingStats{}
			runFor := func(until func() bool) {
				ectx, cancel := context.WithCancel(ctx)
				e := &Exporter{Name: "test", Sink: sink, DB: db, Stats: stats, Batch: 7, Poll: time.Millisecond, MaxWait: time.Millisecond}
				done := make(chan struct{})
				go func() { e.Run(ectx); close(done) }()
				deadline := time.Now().Add(20 * time.Second)
				for !until() && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
				<-done
			}
			for i := 0; i < 10; i++ {
				appendN(t, ctx, c, db, 10)
			}
			runFor(func() bool {
				s := sink.seqs()
				cur, _ := Cursor(ctx, db, "test")
				return len(s) > 0 && s[len(s)-1] == 100 && cur == 100
			})
			appendN(t, ctx, c, db, 20) // while no exporter runs
			before := len(sink.seqs())
			// Until the last batch is both delivered and its cursor saved:
			// stopping in between would (rightly) deliver it again next time.
			runFor(func() bool {
				s := sink.seqs()
				cur, _ := Cursor(ctx, db, "test")
				return s[len(s)-1] == 120 && cur == 120
			})
			got := sink.seqs()
			checkAtLeastOnce(t, got, 120)
			// Its cursor says 100; a failed first delivery may rewind one batch.
			if got[before] < 101-7 || got[before] > 101 {
				t.Fatalf("restarted exporter began at %d, want 101 (its cursor)", got[before])
			}
			if sink.rewinds == 0 || stats.failed == 0 {
				t.Fatalf("no failures exercised (%d rewinds, %d failures)", sink.rewinds, stats.failed)
			}
			if cur, _ := Cursor(ctx, db, "test"); cur != 120 {
				t.Fatalf("cursor %d", cur)
			}
		})
	}
}

// checkAtLeastOnce: every seq 1..n appears; the sequence only steps back to
// repeat, never skips ahead.
func checkAtLeastOnce(t *testing.T, got []int64, n int64) {
	t.Helper()
	seen := map[int64]bool{}
	var high int64
	for i, s := range got {
		if s > high+1 {
			t.Fatalf("at %d: %d follows %d (skipped)", i, s, high)
		}
		high = max(high, s)
		seen[s] = true
	}
	for s := int64(1); s <= n; s++ {
		if !seen[s] {
			t.Fatalf("record %d never delivered", s)
		}
	}
}

// The JSON lines file rotates by size and by age; the files together hold
// every record once, in order, and re-check as a chain.
func TestJSONLFileRotation(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	dir := t.TempDir()
	now := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	sink := &JSONLFile{Path: filepath.Join(dir, "audit.jsonl"), MaxSize: 4000, MaxAge: time.Hour, Now: func() time.Time { return now }}
	deliver := func(n int) {
		appendN(t, ctx, c, db, n)
		cur, _ := Cursor(ctx, db, "x")
		recs, err := ReadAfter(ctx, db, cur, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if err := sink.Deliver(ctx, recs); err != nil {
			t.Fatal(err)
		}
		if err := setCursor(ctx, db, "x", recs[len(recs)-1].Seq, now); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 6; i++ {
		deliver(5) // ~1 KB a batch: rotates by size every few batches
	}
	now = now.Add(2 * time.Hour)
	deliver(1) // rotates by age
	sink.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.jsonl"))
	if len(files) < 3 {
		t.Fatalf("files %v: expected size and age rotation", files)
	}
	// Rotated names sort by first record; the live file comes last.
	sort.Slice(files, func(i, j int) bool {
		if filepath.Base(files[i]) == "audit.jsonl" || filepath.Base(files[j]) == "audit.jsonl" {
			return filepath.Base(files[j]) == "audit.jsonl"
		}
		return firstSeqOf(t, files[i]) < firstSeqOf(t, files[j])
	})
	var prev string = hex.EncodeToString(zeroMAC)
	var want int64 = 1
	for _, f := range files {
		data, _ := os.ReadFile(f)
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			var l struct {
				Seq     int64  `json:"seq"`
				PrevMAC string `json:"prev_mac"`
				MAC     string `json:"mac"`
			}
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if l.Seq != want || l.PrevMAC != prev {
				t.Fatalf("%s: record %d (want %d), prev_mac links: %v", f, l.Seq, want, l.PrevMAC == prev)
			}
			prev, want = l.MAC, want+1
		}
	}
	if want != 32 {
		t.Fatalf("files hold %d records, want 31", want-1)
	}
}

func firstSeqOf(t *testing.T, path string) int64 {
	data, _ := os.ReadFile(path)
	var l struct {
		Seq int64 `json:"seq"`
	}
	json.Unmarshal(bytes.SplitN(data, []byte("\n"), 2)[0], &l)
	return l.Seq
}
