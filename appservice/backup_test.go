package appservice

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// A backup taken while transactions keep arriving is one consistent moment:
// every transaction in it is whole (its events and their audit records), its
// chain verifies, and it holds nothing the live database does not.
func TestBackupWhileIngesting(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ctx := context.Background()
	const perTxn = 10
	var stored atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			evs := make([]*Event, perTxn)
			for j := range evs {
				evs[j] = &Event{ID: fmt.Sprintf("$e%d_%d", i, j), OriginTS: int64(i), RoomID: "!r:hs", Type: "m.room.encrypted", Sender: "@u:hs"}
			}
			if _, err := p.inbox.Store(ctx, fmt.Sprint("t", i), evs); err != nil {
				t.Error(err)
				return
			}
			stored.Add(perTxn)
		}
	}()
	for stored.Load() < 2000 && !t.Failed() {
		time.Sleep(time.Millisecond)
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := p.db.Backup(ctx, path); err != nil {
		t.Fatal(err)
	}
	for n := stored.Load(); stored.Load() < n+500 && !t.Failed(); {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()

	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v", err, st.Mode().Perm())
	}
	b, err := store.Open(ctx, "sqlite3", path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var events, received, live int64
	b.R.QueryRow(`SELECT COUNT(*) FROM inbox`).Scan(&events)
	b.R.QueryRow(`SELECT COUNT(*) FROM audit WHERE rec LIKE '%"event.received"%'`).Scan(&received)
	p.db.R.QueryRow(`SELECT COUNT(*) FROM inbox`).Scan(&live)
	if events < 2000 || events%perTxn != 0 || received != events || events >= live {
		t.Fatalf("backup holds %d events and %d event.received records (live: %d): want whole transactions, each event audited, fewer than live", events, received, live)
	}
	res, err := audit.Verify(ctx, b, p.chain.Keys())
	if err != nil || res.Bad != nil || res.Records != res.HeadSeq || res.HeadSeq < received {
		t.Fatalf("backup's chain: %+v, %v", res, err)
	}
	// Its last event is the live database's event at the same place.
	var lastB, lastLive string
	b.R.QueryRow(`SELECT event_id FROM inbox ORDER BY seq DESC LIMIT 1`).Scan(&lastB)
	p.db.R.QueryRow(`SELECT event_id FROM inbox ORDER BY seq LIMIT 1 OFFSET $1`, events-1).Scan(&lastLive)
	if lastB == "" || lastB != lastLive {
		t.Fatalf("backup ends at %q, live has %q there", lastB, lastLive)
	}

	// It never overwrites a file, and leaves nothing behind when it fails.
	if err := p.db.Backup(ctx, path); !errors.Is(err, os.ErrExist) {
		t.Fatalf("backup over an existing file: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "no-such-dir", "b.db")
	if err := p.db.Backup(ctx, missing); err == nil {
		t.Fatal("backup into a missing folder succeeded")
	}
	if pg := newPipeline(t, "postgres"); !errors.Is(pg.db.Backup(ctx, filepath.Join(t.TempDir(), "pg.db")), store.ErrBackupPostgres) {
		t.Fatal("PostgreSQL backup did not point to pg_dump")
	}
}

func TestPruneBackups(t *testing.T) {
	dir := t.TempDir()
	var names []string
	for i := range 5 {
		n := BackupName(time.Date(2026, 11, 20+i, 3, 0, 0, 0, time.UTC))
		names = append(names, n)
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Files that are not copies are never touched.
	for _, other := range []string{"notes.txt", "matrix-hipaa.db", "matrix-hipaa-20260101T000000Z.db-wal"} {
		os.WriteFile(filepath.Join(dir, other), []byte("x"), 0o600)
	}
	removed, err := PruneBackups(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 3 || filepath.Base(removed[0]) != names[0] || filepath.Base(removed[2]) != names[2] {
		t.Fatalf("removed %v, want the three oldest of %v", removed, names)
	}
	left, _ := os.ReadDir(dir)
	var got []string
	for _, e := range left {
		got = append(got, e.Name())
	}
	want := []string{"matrix-hipaa-20260101T000000Z.db-wal", "matrix-hipaa-20261123T030000Z.db", "matrix-hipaa-20261124T030000Z.db", "matrix-hipaa.db", "notes.txt"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("left %v, want %v", got, want)
	}
	if removed, err := PruneBackups(dir, 2); err != nil || len(removed) != 0 {
		t.Fatalf("second prune removed %v, %v", removed, err)
	}
}

// A restore checks the copy before touching anything, keeps what it replaces,
// and records itself as the first new record of the restored chain.
func TestRestore(t *testing.T) {
	ctx := context.Background()
	live, uri := storetest.Open(t, "sqlite3")
	p := newPipelineOn(t, live)
	store3 := func(from int) {
		for i := from; i < from+3; i++ {
			evs := make([]*Event, 10)
			for j := range evs {
				evs[j] = &Event{ID: fmt.Sprintf("$r%d_%d", i, j), OriginTS: int64(i), RoomID: "!r:hs", Type: "m.room.encrypted", Sender: "@u:hs"}
			}
			if _, err := p.inbox.Store(ctx, fmt.Sprint("t", i), evs); err != nil {
				t.Fatal(err)
			}
		}
	}
	store3(0)
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "copy.db")
	if err := live.Backup(ctx, copyPath); err != nil {
		t.Fatal(err)
	}
	store3(3)
	var liveHead int64
	live.R.QueryRow(`SELECT seq FROM audit_head`).Scan(&liveHead)
	cpFile := filepath.Join(dir, "audit-checkpoints.jsonl")
	os.WriteFile(cpFile, []byte("{}\n"), 0o600)
	live.Close()

	// A copy that does not verify changes nothing.
	bad := filepath.Join(dir, "bad.db")
	if err := copyNew(copyPath, bad); err != nil {
		t.Fatal(err)
	}
	b, err := store.Open(ctx, "sqlite3", bad, 1)
	if err != nil {
		t.Fatal(err)
	}
	b.W.Exec(`UPDATE audit SET ts = ts + 1 WHERE seq = 2`)
	b.Close()
	if _, err := Restore(ctx, uri, cpFile, bad, p.chain.Keys(), "os:tester", ".replaced-1", p.clock.Now); err == nil || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("restore of a tampered copy: %v", err)
	}
	for _, f := range []string{uri, cpFile} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s after a refused restore: %v", f, err)
		}
	}
	if _, err := os.Stat(uri + ".restoring"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("staging file left behind: %v", err)
	}

	res, err := Restore(ctx, uri, cpFile, copyPath, p.chain.Keys(), "os:tester", ".replaced-2", p.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if res.ReplacedHead != liveHead || res.Head >= liveHead || !slices.Contains(res.Kept, uri+".replaced-2") || !slices.Contains(res.Kept, cpFile+".replaced-2") {
		t.Fatalf("restore: %+v (live head was %d)", res, liveHead)
	}
	if _, err := os.Stat(cpFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("checkpoint file still in place: %v", err)
	}
	r, err := store.Open(ctx, "sqlite3", uri, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var events int64
	var last []byte
	r.R.QueryRow(`SELECT COUNT(*) FROM inbox`).Scan(&events)
	r.R.QueryRow(`SELECT rec FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&last)
	if events != 30 || !strings.Contains(string(last), fmt.Sprintf(`"type":"admin.command","outcome":"success","actor":"os:tester","action":"restore","count":%d`, liveHead)) {
		t.Fatalf("restored: %d events, last record %s", events, last)
	}
	if v, err := audit.Verify(ctx, r, p.chain.Keys()); err != nil || v.Bad != nil || v.HeadSeq != res.Head+1 {
		t.Fatalf("restored chain: %+v %v", v, err)
	}
}
