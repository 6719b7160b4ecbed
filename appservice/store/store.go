// Package store opens the service's database (SQLite or PostgreSQL) and keeps
// its schema current with numbered migrations shared by both.
package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/mattn/go-sqlite3"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

type Dialect int

const (
	SQLite Dialect = iota
	Postgres
)

// DB is the database. For SQLite, writes go through one connection (W), so
// writers queue in Go instead of sleeping in SQLite's busy handler, and reads
// use a pool (R) that WAL lets run beside the writer. For PostgreSQL both are
// the same pool.
type DB struct {
	W, R    *sql.DB
	Dialect Dialect
}

// Open connects, applies pending migrations and returns the database.
// For sqlite3, uri is a file path.
func Open(ctx context.Context, dbType, uri string, maxConns int) (*DB, error) {
	var db *DB
	switch dbType {
	case "sqlite3":
		if dir := filepath.Dir(uri); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, err
			}
		}
		// synchronous=FULL: the WAL is fsynced at every commit, so an
		// acknowledged transaction survives power loss, not only a crash.
		dsn := "file:" + uri + "?_journal_mode=WAL&_synchronous=FULL&_foreign_keys=on&_busy_timeout=10000&_txlock=immediate"
		w, err := sql.Open("sqlite3", dsn)
		if err != nil {
			return nil, err
		}
		w.SetMaxOpenConns(1)
		w.SetConnMaxIdleTime(0)
		r, err := sql.Open("sqlite3", dsn+"&mode=ro")
		if err != nil {
			w.Close()
			return nil, err
		}
		if maxConns <= 0 {
			maxConns = 4
		}
		r.SetMaxOpenConns(maxConns)
		db = &DB{W: w, R: r, Dialect: SQLite}
		// Create the file (and WAL) before the read-only pool touches it.
		if err := w.PingContext(ctx); err != nil {
			db.Close()
			return nil, fmt.Errorf("open sqlite %s: %w", uri, err)
		}
		os.Chmod(uri, 0o600)
	case "postgres":
		p, err := sql.Open("pgx", uri)
		if err != nil {
			return nil, err
		}
		if maxConns <= 0 {
			maxConns = 8
		}
		p.SetMaxOpenConns(maxConns)
		p.SetMaxIdleConns(maxConns)
		db = &DB{W: p, R: p, Dialect: Postgres}
		if err := p.PingContext(ctx); err != nil {
			p.Close()
			return nil, fmt.Errorf("connect to postgres: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown database type %q", dbType)
	}
	if err := db.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) Close() error {
	err := db.W.Close()
	if db.R != db.W {
		if e := db.R.Close(); err == nil {
			err = e
		}
	}
	return err
}

// translate turns the shared migration SQL into this dialect's.
func (db *DB) translate(q string) string {
	if db.Dialect == SQLite {
		return strings.NewReplacer("AUTOINCREMENT_PK", "INTEGER PRIMARY KEY AUTOINCREMENT", "BYTES", "BLOB").Replace(q)
	}
	return strings.NewReplacer("AUTOINCREMENT_PK", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTES", "BYTEA").Replace(q)
}

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s is not named NNN_name.sql", e.Name())
		}
		body, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{v, e.Name(), string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migrations must be numbered 1, 2, 3…; %s is out of place", m.name)
		}
	}
	return out, nil
}

// LatestVersion is the schema version this build expects.
func LatestVersion() int {
	m, _ := migrations()
	return len(m)
}

func (db *DB) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	tx, err := db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if db.Dialect == Postgres {
		// Two processes starting at once must not both migrate.
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(7262427)"); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return err
	}
	if current > len(ms) {
		return fmt.Errorf("database schema is version %d, newer than this build knows (%d): refusing to run an older matrix-hipaa on it", current, len(ms))
	}
	for _, m := range ms[current:] {
		for _, stmt := range splitStatements(db.translate(m.sql)) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)`, m.version, time.Now().UnixMilli()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// splitStatements splits on semicolons at line ends; migrations keep to that.
func splitStatements(s string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(s, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") || trimmed == "" {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if strings.TrimSpace(cur.String()) != "" {
		out = append(out, strings.TrimSpace(cur.String()))
	}
	return out
}
