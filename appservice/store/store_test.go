package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func TestMigrationsApplyOnceOnBothDatabases(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			db, uri := storetest.Open(t, dbType)
			var v int
			if err := db.R.QueryRow(`SELECT MAX(version) FROM schema_version`).Scan(&v); err != nil {
				t.Fatal(err)
			}
			if v != store.LatestVersion() {
				t.Fatalf("schema version %d, want %d", v, store.LatestVersion())
			}
			db.Close()
			// Re-opening must not re-apply anything.
			db2, err := store.Open(context.Background(), dbType, uri, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer db2.Close()
			var n int
			if err := db2.R.QueryRow(`SELECT COUNT(*) FROM schema_version`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != store.LatestVersion() {
				t.Fatalf("%d schema_version rows after reopen, want %d", n, store.LatestVersion())
			}
		})
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			db, uri := storetest.Open(t, dbType)
			if _, err := db.W.Exec(`INSERT INTO schema_version (version, applied_at) VALUES (999, 0)`); err != nil {
				t.Fatal(err)
			}
			db.Close()
			if db2, err := store.Open(context.Background(), dbType, uri, 0); err == nil {
				db2.Close()
				t.Fatal("opening a database with a newer schema succeeded")
			}
		})
	}
}

func TestSQLiteIsDurable(t *testing.T) {
	db, _ := storetest.Open(t, "sqlite3")
	for pragma, want := range map[string]string{"journal_mode": "wal", "synchronous": "2", "foreign_keys": "1"} {
		var got string
		if err := db.W.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
}

// A deferred commit must leave the writer connection durable for the next one.
func TestDeferredTxRestoresFullSync(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			db, _ := storetest.Open(t, dbType)
			ctx := context.Background()
			err := db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
				_, err := tx.Exec(`UPDATE dispatch_cursor SET seq = 5 WHERE id = 1`)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			failing := db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error { return errors.New("rolled back") })
			if failing == nil {
				t.Fatal("error from fn was lost")
			}
			var seq int
			db.R.QueryRow(`SELECT seq FROM dispatch_cursor`).Scan(&seq)
			if seq != 5 {
				t.Fatalf("deferred commit not visible: seq %d", seq)
			}
			if dbType == "sqlite3" {
				var sync int
				if err := db.W.QueryRow(`PRAGMA synchronous`).Scan(&sync); err != nil || sync != 2 {
					t.Fatalf("synchronous = %d after a deferred commit, want 2 (FULL): %v", sync, err)
				}
			}
		})
	}
}

// A database path with characters that mean something in a file: URI
// ("#", "?", "%") opens that very file, not a truncated name.
func TestSQLitePathWithURICharacters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ward#3?x=1%20")
	path := filepath.Join(dir, "hipaa.db")
	db, err := store.Open(context.Background(), "sqlite3", path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var file string
	if err := db.R.QueryRow(`SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
		t.Fatal(err)
	}
	if file != path {
		t.Fatalf("opened %q, want %q", file, path)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

// Under steady durable commits the checkpointer keeps making the writer start
// the WAL over, so the WAL stays near the rewind length instead of growing to
// the writer's own checkpoint backstop (20,000 pages).
func TestCheckpointerRewindsTheWAL(t *testing.T) {
	defer store.SetRewindFrames(100)()
	db, path := storetest.Open(t, "sqlite3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db.StartCheckpointer(ctx, 5*time.Millisecond, func(err error) { t.Error(err) })
	if _, err := db.W.Exec(`CREATE TABLE filler (b BLOB)`); err != nil {
		t.Fatal(err)
	}
	blob := make([]byte, 3000)
	const commits = 3000
	for i := 0; i < commits; i++ {
		// Each commit writes at least two pages: ~6,000 frames in all.
		err := db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO filler (b) VALUES ($1)`, blob)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	// The WAL file never shrinks, so its size is the longest it has been.
	if frames := st.Size() / 4120; frames > 1500 {
		t.Fatalf("WAL grew to %d frames over %d commits; the checkpointer did not rewind it", frames, commits)
	}
	var n int
	if err := db.R.QueryRow(`SELECT COUNT(*) FROM filler`).Scan(&n); err != nil || n != commits {
		t.Fatalf("%d rows, want %d: %v", n, commits, err)
	}
}

// Migration 14 moves the inbox's dedupe key from event_id to (origin_ts,
// event_id). Rows already stored keep their order and contents, the next
// seq follows on, and the new key refuses a repeat.
func TestInboxDedupeKeyMigration(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db := upgradedFrom(t, dbType, 13, func(old *store.DB) error {
				for _, id := range []string{"$a", "$b"} {
					if _, err := old.W.ExecContext(ctx, `INSERT INTO inbox (event_id, txn_id, room_id, event_type, sender, received_at, content) VALUES ($1, 't1', '!r:hs', 'm.room.message', '@u:hs', 5, $2)`, id, []byte(`{}`)); err != nil {
						return err
					}
				}
				return nil
			})
			rows, err := db.R.Query(`SELECT seq, event_id, origin_ts, txn_id, received_at, content FROM inbox ORDER BY seq`)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var seq, ots, recv int64
				var id, txn string
				var content []byte
				if err := rows.Scan(&seq, &id, &ots, &txn, &recv, &content); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintln(seq, id, ots, txn, recv, string(content)))
			}
			rows.Close()
			if want := []string{"1 $a 0 t1 5 {}\n", "2 $b 0 t1 5 {}\n"}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("rows after migration %q, want %q", got, want)
			}
			insert := func(id string, ots int64) (int64, error) {
				var seq int64
				err := db.W.QueryRowContext(ctx, `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at) VALUES ($1, $2, 't2', '!r:hs', 'm.room.message', '@u:hs', 6)
					ON CONFLICT (origin_ts, event_id) DO NOTHING RETURNING seq`, id, ots).Scan(&seq)
				return seq, err
			}
			if seq, err := insert("$c", 1700000000000); err != nil || seq != 3 {
				t.Fatalf("new event stored at seq %d (%v), want 3", seq, err)
			}
			for _, repeat := range []struct {
				id  string
				ots int64
			}{{"$c", 1700000000000}, {"$a", 0}} {
				if _, err := insert(repeat.id, repeat.ots); !errors.Is(err, sql.ErrNoRows) {
					t.Fatalf("repeat of %s stored again (err %v)", repeat.id, err)
				}
			}
		})
	}
}

// Migration 15 re-keys expiry rows by (received_at, event_id): rows kept,
// a repeat refused, the same ID at another receipt time a different row.
func TestExpiryKeyMigration(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db := upgradedFrom(t, dbType, 14, func(old *store.DB) error {
				for i, id := range []string{"$b", "$a"} {
					if _, err := old.W.ExecContext(ctx, `INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state) VALUES ($1, '!r:hs', '@u:hs', $2, $3, 'pending')`, id, 10+i, 100+i); err != nil {
						return err
					}
				}
				return nil
			})
			var n int
			if err := db.R.QueryRow(`SELECT COUNT(*) FROM expiry WHERE state = 'pending' AND due_at IN (100, 101)`).Scan(&n); err != nil || n != 2 {
				t.Fatalf("%d rows kept (%v), want 2", n, err)
			}
			insert := func(id string, received int64) (int64, error) {
				res, err := db.W.ExecContext(ctx, `INSERT INTO expiry (event_id, room_id, sender, received_at, due_at, state) VALUES ($1, '!r:hs', '@u:hs', $2, 0, 'pending')
					ON CONFLICT (received_at, event_id) DO NOTHING`, id, received)
				if err != nil {
					return 0, err
				}
				return res.RowsAffected()
			}
			if n, err := insert("$b", 10); err != nil || n != 0 {
				t.Fatalf("repeat stored %d rows (%v), want 0", n, err)
			}
			if n, err := insert("$c", 12); err != nil || n != 1 {
				t.Fatalf("new expiry stored %d rows (%v), want 1", n, err)
			}
		})
	}
}

// upgradedFrom builds a database at schema version v, lets seed write to it,
// then opens it with this build (migrating it to the latest version).
func upgradedFrom(t *testing.T, dbType string, v int, seed func(*store.DB) error) *store.DB {
	t.Helper()
	ctx := context.Background()
	uri := storetest.NewURI(t, dbType)
	restore := store.MigrateTo(v)
	old, err := store.Open(ctx, dbType, uri, 0)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	err = seed(old)
	old.Close()
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, dbType, uri, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// PHI residue: a message body cleared from the inbox leaves no copy in the
// database file or its WAL (secure_delete zeroes the freed bytes; the WAL
// is empty once checkpointed and truncated), and the three files are
// private to the service's user whatever the process umask.
func TestClearedContentLeavesNoResidue(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "residue.db")
	db, err := store.Open(ctx, "sqlite3", path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	canary := "CANARY-PHI-" + fmt.Sprint(time.Now().UnixNano())
	for i := range 200 {
		body := fmt.Sprintf(`{"content":{"body":"%s patient %d in bed 4"}}`, canary, i)
		if _, err := db.W.ExecContext(ctx, `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content) VALUES ($1, $2, 't', '!r:h', 'm.room.message', '@u:h', 1, $3)`,
			fmt.Sprintf("$e%d", i), i, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %o, want 600", filepath.Base(f), st.Mode().Perm())
		}
	}
	if _, err := db.W.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); !bytes.Contains(raw, []byte(canary)) {
		t.Fatal("the canary never reached the database file: the test shows nothing")
	}
	if _, err := db.W.ExecContext(ctx, `UPDATE inbox SET content = NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{path, path + "-wal"} {
		raw, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if n := bytes.Count(raw, []byte(canary)); n > 0 {
			t.Fatalf("%d copies of a cleared body left in %s", n, filepath.Base(f))
		}
	}
}

// PHI residue on PostgreSQL, as it is: a cleared body's bytes stay in the
// table's pages as a dead tuple, and plain VACUUM frees that space without
// zeroing it; only a rewrite of the table (VACUUM FULL, pg_repack) removes
// them. docs/deploy.md tells operators what to run. Read with pageinspect.
func TestPostgresClearedContentResidue(t *testing.T) {
	// A database of its own: VACUUM keeps dead rows that a transaction still
	// open in the same database may see, and the other tests' schemas share
	// the test database (run beside them, VACUUM FULL kept 7 pages).
	ctx := context.Background()
	admin, err := sql.Open("pgx", storetest.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := fmt.Sprintf("residue_%d", time.Now().UnixNano())
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create a database for the test: %v", err)
	}
	t.Cleanup(func() { admin.ExecContext(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)") })
	u, err := url.Parse(storetest.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	db, err := store.Open(ctx, "postgres", u.String(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.W.ExecContext(ctx, `CREATE EXTENSION IF NOT EXISTS pageinspect WITH SCHEMA public`); err != nil {
		t.Fatalf("pageinspect (part of Debian's postgresql package): %v", err)
	}
	canary := fmt.Sprintf("CANARY-PG-%d", time.Now().UnixNano())
	for i := range 200 {
		if _, err := db.W.ExecContext(ctx, `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content) VALUES ($1, $2, 't', '!r:h', 'm.room.message', '@u:h', 1, $3)`,
			fmt.Sprintf("$e%d", i), i, []byte(fmt.Sprintf(`{"content":{"body":"%s patient %d"}}`, canary, i))); err != nil {
			t.Fatal(err)
		}
	}
	pages := func() int {
		t.Helper()
		var n int
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM generate_series(0, pg_relation_size('inbox') / 8192 - 1) AS b
			WHERE position(convert_to($1, 'UTF8') IN public.get_raw_page('inbox', b::int)) > 0`, canary).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := db.W.ExecContext(ctx, `UPDATE inbox SET content = NULL`); err != nil {
		t.Fatal(err)
	}
	if pages() == 0 {
		t.Fatal("no dead tuple found: the test shows nothing")
	}
	if _, err := db.W.ExecContext(ctx, `VACUUM inbox`); err != nil {
		t.Fatal(err)
	}
	after := pages()
	t.Logf("pages holding a cleared body after VACUUM: %d", after)
	if _, err := db.W.ExecContext(ctx, `VACUUM FULL inbox`); err != nil {
		t.Fatal(err)
	}
	if n := pages(); n != 0 {
		t.Fatalf("%d pages still hold a cleared body after VACUUM FULL", n)
	}
}
