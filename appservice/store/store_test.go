package store_test

import (
	"context"
	"testing"

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
