// Package store opens the service's database (SQLite or PostgreSQL) and keeps
// its schema current with numbered migrations shared by both.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/mattn/go-sqlite3"
	"golang.org/x/sys/unix"
)

// writerDriver is SQLite for the one writer connection. Its WAL checkpoints
// are left to a background checkpointer (StartCheckpointer), so that copying
// pages back into the database file, and the fsync that goes with it, never
// lands on a transaction the homeserver is waiting for. The writer still
// checkpoints by itself if the WAL grows past walBackstop pages.
const writerDriver = "sqlite3_matrix_hipaa_writer"

const walBackstop = 20000

// readerDriver is SQLite for the read pool and the checkpointer.
const readerDriver = "sqlite3_matrix_hipaa_reader"

// uriPath escapes a file path for SQLite's file: URIs, where "?" starts the
// parameters, "#" a fragment and "%" an escape: a data directory named
// "ward#3" must not become a database file named "ward".
func uriPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
}

// ScanMmapBytes is the memory map a long sequential scan (audit verify)
// gives its own connection: reading ~1 GB of chain through read() per page
// costs about 13% more. The service's own connections use none: mapped
// pages count in its resident set, and ingest measured no faster with them
// (76% vs 77% of the empty rate at 1.5 M events, same run).
const ScanMmapBytes = 1 << 30

func init() {
	sql.Register(writerDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		_, err := c.Exec(fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", walBackstop), nil)
		return err
	}})
	sql.Register(readerDriver, &sqlite3.SQLiteDriver{})
}

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
	stmts   sync.Map // query → *sql.Stmt on W
	dsn     string   // SQLite only, for the checkpointer
	jobKey  []byte   // MACs jobs (SetJobKey)
	// preparing counts the statements being prepared in the background
	// (Prepared); Close waits for them, so none uses the writer after it.
	preparing sync.WaitGroup
}

// SetJobKey sets the key that MACs the jobs queued and run through this
// database. It comes from the service's key material, never the database.
func (db *DB) SetJobKey(k []byte) { db.jobKey = k }

// JobKey is the key set by SetJobKey (nil if none).
func (db *DB) JobKey() []byte { return db.jobKey }

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
		// The file exists, private, before SQLite opens it: SQLite gives
		// the -wal and -shm files it creates the database file's mode, so
		// none is ever readable by others, whatever the umask.
		if f, err := os.OpenFile(uri, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
			f.Close()
		}
		// synchronous=FULL: the WAL is fsynced at every commit, so an
		// acknowledged transaction survives power loss, not only a crash.
		// secure_delete: content cleared or deleted (message bodies once
		// policy has seen them) is overwritten with zeros in the page, not
		// left in its free space.
		dsn := "file:" + uriPath(uri) + "?_journal_mode=WAL&_synchronous=FULL&_foreign_keys=on&_busy_timeout=10000&_txlock=immediate&_secure_delete=on"
		w, err := sql.Open(writerDriver, dsn)
		if err != nil {
			return nil, err
		}
		w.SetMaxOpenConns(1)
		w.SetConnMaxIdleTime(0)
		r, err := sql.Open(readerDriver, dsn+"&mode=ro")
		if err != nil {
			w.Close()
			return nil, err
		}
		if maxConns <= 0 {
			maxConns = 4
		}
		r.SetMaxOpenConns(maxConns)
		db = &DB{W: w, R: r, Dialect: SQLite, dsn: dsn}
		// Create the file (and WAL) before the read-only pool touches it.
		if err := w.PingContext(ctx); err != nil {
			db.Close()
			return nil, fmt.Errorf("open sqlite %s: %w", uri, err)
		}
		for _, f := range []string{uri, uri + "-wal", uri + "-shm"} {
			if err := os.Chmod(f, 0o600); err != nil && !os.IsNotExist(err) {
				db.Close()
				return nil, err
			}
		}
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
	// A statement still being prepared would hold the writer connection
	// past Close (SQLite then closed its files after the caller had moved
	// on: seen as a test's temporary folder changing while it was removed).
	db.preparing.Wait()
	db.stmts.Range(func(_, v any) bool {
		if st, ok := v.(*sql.Stmt); ok {
			st.Close()
		}
		return true
	})
	err := db.W.Close()
	if db.R != db.W {
		if e := db.R.Close(); err == nil {
			err = e
		}
	}
	return err
}

// TruncateWAL checkpoints the whole SQLite WAL into the database and empties
// it: the WAL holds the pages of recent writes, message bodies before they
// were cleared among them, and SQLite deletes it only when the last
// connection to close may write. The service calls it as it stops (not every
// command that opens the database: it waits for and holds off writers).
// Best effort; a no-op on PostgreSQL.
func (db *DB) TruncateWAL() {
	if db.Dialect == SQLite {
		db.W.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
	}
}

// translate turns the shared migration SQL into this dialect's.
func (db *DB) translate(q string) string {
	if db.Dialect == SQLite {
		// INTEGER PRIMARY KEY is SQLite's rowid itself: no separate index to
		// write, and without AUTOINCREMENT no sqlite_sequence row either.
		return strings.NewReplacer("IDENTITY_PK", "INTEGER PRIMARY KEY", "INT64_PK", "INTEGER PRIMARY KEY", "BYTES", "BLOB").Replace(q)
	}
	return strings.NewReplacer("IDENTITY_PK", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "INT64_PK", "BIGINT PRIMARY KEY", "BYTES", "BYTEA").Replace(q)
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

// migrateTo, when non-zero, stops migrations at that version (tests of an
// upgrade build the old schema with it).
var migrateTo int

func (db *DB) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	if migrateTo > 0 && migrateTo < len(ms) {
		ms = ms[:migrateTo]
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
		for _, stmt := range splitStatements(db.translate(m.sql), db.Dialect) {
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
// A line "-- only sqlite" or "-- only postgres" starts statements for that
// dialect alone (where the two cannot share SQL, such as dropping a column's
// UNIQUE constraint); "-- only end" returns to shared statements.
func splitStatements(s string, d Dialect) []string {
	var out []string
	var cur strings.Builder
	keep := true
	for _, line := range strings.Split(s, "\n") {
		trimmed := strings.TrimSpace(line)
		// A directive is exactly "-- only sqlite|postgres|end": a comment
		// that happens to begin "-- only ..." must not drop what follows.
		if which, ok := strings.CutPrefix(trimmed, "-- only "); ok && (which == "sqlite" || which == "postgres" || which == "end") {
			keep = which == "end" || which == map[Dialect]string{SQLite: "sqlite", Postgres: "postgres"}[d]
			continue
		}
		if strings.HasPrefix(trimmed, "--") || trimmed == "" || !keep {
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

// Durability says whether a commit must be on disk before it returns.
type Durability int

const (
	// Durable commits are fsynced before returning: anything acknowledged to
	// the homeserver or a person is written this way.
	Durable Durability = iota
	// Deferred commits are atomic and ordered but reach the disk with the next
	// durable commit (or checkpoint). Used for work that is re-derived from
	// durable state if a power cut loses it: dispatch progress, job outcomes.
	// It keeps the ingest path at one fsync per transaction.
	Deferred
)

// Tx runs fn in a write transaction and commits it with the given durability.
func (db *DB) Tx(ctx context.Context, d Durability, fn func(*sql.Tx) error) error {
	if d == Durable || db.Dialect == Postgres {
		tx, err := db.W.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if d == Deferred {
			if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
				return err
			}
		}
		if err := fn(tx); err != nil {
			return err
		}
		return tx.Commit()
	}
	// SQLite: synchronous is per connection, so hold the (single) writer
	// connection for the whole switch-commit-restore sequence.
	conn, err := db.W.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `PRAGMA synchronous = NORMAL`); err != nil {
		return err
	}
	defer func() {
		// Must run even if ctx is done, or the next durable commit would not be.
		if _, err := conn.ExecContext(context.Background(), `PRAGMA synchronous = FULL`); err != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Pipelined runs fn on the writer's own pgx connection (PostgreSQL only), for
// a transaction sent as pipelined batches: fn begins it in its first batch
// and commits it in its last, so no statement waits for a round trip of its
// own. If fn fails, whatever transaction it left open is rolled back; if
// even that fails, the connection is dropped rather than reused.
func (db *DB) Pipelined(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := db.W.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("pipelined transaction: driver %T is not pgx", dc)
		}
		c := sc.Conn()
		err := fn(c)
		if err != nil {
			if _, rbErr := c.Exec(context.Background(), "ROLLBACK"); rbErr != nil {
				return errors.Join(err, driver.ErrBadConn)
			}
		}
		return err
	})
}

// Prepared returns tx's handle on a statement prepared once per database.
// SQLite spends much of a small transaction parsing SQL, and the service
// repeats the same few statements on its one writer connection; PostgreSQL's
// driver caches statements itself.
func (db *DB) Prepared(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	v, loaded := db.stmts.LoadOrStore(query, nil)
	if st, ok := v.(*sql.Stmt); loaded && ok {
		return tx.StmtContext(ctx, st), nil
	}
	if !loaded {
		// tx holds the only writer connection, so prepare for later use once
		// it is free; this time, prepare inside tx.
		db.preparing.Go(func() {
			st, err := db.W.PrepareContext(context.Background(), query)
			if err != nil {
				db.stmts.Delete(query)
				return
			}
			db.stmts.Store(query, st)
		})
	}
	return tx.PrepareContext(ctx, query)
}

// Exec runs a write statement in tx, prepared once.
func (db *DB) Exec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	if db.Dialect == Postgres {
		return tx.ExecContext(ctx, query, args...)
	}
	st, err := db.Prepared(ctx, tx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// Query runs a statement that returns rows in tx, prepared once.
func (db *DB) Query(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	if db.Dialect == Postgres {
		return tx.QueryContext(ctx, query, args...)
	}
	st, err := db.Prepared(ctx, tx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// QueryRow is Query for a single row.
func (db *DB) QueryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) *sql.Row {
	if db.Dialect == Postgres {
		return tx.QueryRowContext(ctx, query, args...)
	}
	st, err := db.Prepared(ctx, tx, query)
	if err != nil {
		// Surface the prepare error through the row, as database/sql does.
		return tx.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// StartCheckpointer copies the SQLite WAL back into the database file in the
// background until ctx ends (PASSIVE: it never blocks the writer or readers),
// reporting the first failure of a run of them, and every minute while they
// last, to onError. It does nothing for PostgreSQL.
func (db *DB) StartCheckpointer(ctx context.Context, every time.Duration, onError func(error)) {
	if db.Dialect != SQLite {
		return
	}
	c, err := sql.Open(readerDriver, db.dsn)
	if err != nil {
		return
	}
	c.SetMaxOpenConns(1)
	go func() {
		defer c.Close()
		t := time.NewTicker(every)
		defer t.Stop()
		failures := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := db.checkpoint(ctx, c); err != nil && ctx.Err() == nil {
				failures++
				if failures == 1 || failures%600 == 0 {
					onError(err)
				}
			} else {
				failures = 0
			}
		}
	}()
}

// rewindFrames is the WAL length (in pages) past which the checkpointer
// makes the writer start the WAL over (a variable so tests can use a short
// one). SQLite rewinds the WAL only when a write transaction begins with
// every frame already copied back. Under steady ingest a checkpoint beside
// the writer never quite catches up, so the WAL would grow to walBackstop,
// where the writer checkpoints all of it itself and ingest stops for 150 ms
// to a second.
var rewindFrames = 10000

// rewindLeft is how few pages the writer waits for the checkpointer to copy.
const rewindLeft = 64

// checkpoint runs a PASSIVE checkpoint beside the writer. If the WAL is
// long, it runs more while each still shrinks what is left, then one with
// the writer held back, which copies only the last few pages; the writer's
// next transaction then starts the WAL from its beginning.
func (db *DB) checkpoint(ctx context.Context, c *sql.DB) error {
	var busy, logFrames, done int
	pass := func() error {
		return c.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logFrames, &done)
	}
	if err := pass(); err != nil || logFrames < rewindFrames {
		return err
	}
	// Catch up beside the writer while each pass still shrinks what is left,
	// so the pass the writer waits for copies only a few pages.
	for i := 0; i < 4; i++ {
		prev := logFrames
		if err := pass(); err != nil {
			return err
		}
		if logFrames < prev || logFrames-prev <= rewindLeft {
			break
		}
	}
	w, err := db.W.Conn(ctx)
	if err != nil {
		return err
	}
	defer w.Close()
	return pass()
}

type valuesKey struct {
	head, tail string
	cols, rows int
}

var valuesQueries sync.Map

// ValuesQuery returns head, then rows groups of cols numbered placeholders
// ("($1,$2),($3,$4)"), then tail: a multi-row INSERT, built once per shape.
func ValuesQuery(head string, cols, rows int, tail string) string {
	k := valuesKey{head, tail, cols, rows}
	if q, ok := valuesQueries.Load(k); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString(head)
	for j := 0; j < rows; j++ {
		if j > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := 1; c <= cols; c++ {
			if c > 1 {
				b.WriteByte(',')
			}
			b.WriteString("$" + strconv.Itoa(cols*j+c))
		}
		b.WriteByte(')')
	}
	b.WriteString(tail)
	q := b.String()
	valuesQueries.Store(k, q)
	return q
}

// OpenSide opens a separate pool on the same database for a library that
// keeps its own tables and runs its own migrations (mautrix's crypto and
// state stores), and names its dialect as go.mau.fi/util/dbutil spells it.
// For SQLite it is a small pool with the same durability settings (writes
// queue behind ours through the busy timeout; more than one connection so a
// read inside the library's own transaction cannot wait on itself); for PostgreSQL
// it is a new pool on the same URI (and so the same search_path).
func (db *DB) OpenSide(uri string) (*sql.DB, string, error) {
	switch db.Dialect {
	case SQLite:
		c, err := sql.Open(writerDriver, db.dsn)
		if err != nil {
			return nil, "", err
		}
		c.SetMaxOpenConns(4)
		return c, "sqlite3", nil
	default:
		p, err := sql.Open("pgx", uri)
		if err != nil {
			return nil, "", err
		}
		p.SetMaxOpenConns(4)
		return p, "postgres", nil
	}
}

// backupFlushEvery is how often a backup starts writing out what it has copied.
const backupFlushEvery = 50 * time.Millisecond

// ErrBackupPostgres says to back PostgreSQL up with its own tools.
var ErrBackupPostgres = errors.New("the database is PostgreSQL: back it up with pg_dump or the server's own backups (a consistent snapshot, taken while the service runs)")

// Backup writes a consistent snapshot of the SQLite database to path while the
// service keeps running (VACUUM INTO reads one snapshot, like any reader, and
// never blocks the writer). The file is created 0600 and must not exist yet;
// it is fsynced, with its folder, before Backup returns. Copying the database
// file instead can miss what is still in the WAL or tear pages mid-checkpoint.
func (db *DB) Backup(ctx context.Context, path string) error {
	if db.Dialect != SQLite {
		return ErrBackupPostgres
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(path)
		}
	}()
	// Start writing the copy's pages to disk as they come, instead of one
	// flush of the whole copy at the end: every acknowledgement's fsync
	// would queue behind that (measured: up to 0.7 s).
	done := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		t := time.NewTicker(backupFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			}
		}
	}()
	_, err = db.R.ExecContext(ctx, `VACUUM INTO $1`, path)
	close(done)
	<-flushed
	if err != nil {
		return fmt.Errorf("snapshot the database: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return err
	}
	ok = true
	return nil
}

// SyncDir fsyncs a folder, so that files created or renamed in it last.
func SyncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
