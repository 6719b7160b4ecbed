// Package storetest opens real databases for tests: a temp-file SQLite and a
// fresh schema in the PostgreSQL at MATRIX_HIPAA_TEST_POSTGRES (default: the
// local server on 127.0.0.1:5432, database test). PostgreSQL being absent is a
// test failure, not a skip.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// PostgresURL is the server tests use.
func PostgresURL() string {
	if u := os.Getenv("MATRIX_HIPAA_TEST_POSTGRES"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// Dialects lists the databases every store test runs against.
var Dialects = []string{"sqlite3", "postgres"}

// Open returns a migrated, empty database of the given type, closed at cleanup,
// and the URI that reopens it.
func Open(t testing.TB, dbType string) (*store.DB, string) {
	t.Helper()
	uri := NewURI(t, dbType)
	db, err := store.Open(context.Background(), dbType, uri, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dbType, err)
	}
	t.Cleanup(func() { db.Close() })
	return db, uri
}

// NewURI makes an empty database and returns its URI without opening it.
func NewURI(t testing.TB, dbType string) string {
	t.Helper()
	if dbType == "sqlite3" {
		return filepath.Join(t.TempDir(), "test.db")
	}
	b := make([]byte, 6)
	rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	admin, err := sql.Open("pgx", PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("PostgreSQL at %s is needed for this test (set MATRIX_HIPAA_TEST_POSTGRES): %v", PostgresURL(), err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("pgx", PostgresURL())
		if err == nil {
			a.Exec("DROP SCHEMA " + schema + " CASCADE")
			a.Close()
		}
	})
	u, err := url.Parse(PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
