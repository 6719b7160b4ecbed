package appservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// BackupResult describes a copy that was written and checked.
type BackupResult struct {
	Events, Records, HeadSeq, Bytes int64
}

// Backup writes a consistent copy of the database to path and checks the
// copy's whole audit chain with this deployment's key. A backup holds the
// audit trail, so taking one is recorded as a read of it (by operator), with
// outcome failure if the copy could not be made or does not verify.
func Backup(ctx context.Context, db *store.DB, chain *audit.Chain, path, operator string) (BackupResult, error) {
	res, err := backupAndCheck(ctx, db, chain, path)
	rec := &audit.Record{Type: audit.TypeAuditRead, Outcome: audit.OutcomeSuccess, Actor: operator, Action: "backup", Count: res.Records}
	if err != nil {
		rec.Outcome = audit.OutcomeFailure
	}
	if aerr := chain.AppendTx(ctx, db, rec); aerr != nil {
		return res, errors.Join(err, fmt.Errorf("could not record this backup in the audit trail: %w", aerr))
	}
	return res, err
}

func backupAndCheck(ctx context.Context, db *store.DB, chain *audit.Chain, path string) (BackupResult, error) {
	var res BackupResult
	if err := db.Backup(ctx, path); err != nil {
		return res, err
	}
	v, events, err := checkCopy(ctx, path, chain.Keys())
	res.Events, res.Records, res.HeadSeq = events, v.Records, v.HeadSeq
	if err != nil {
		return res, err
	}
	if st, err := os.Stat(path); err == nil {
		res.Bytes = st.Size()
	}
	return res, nil
}

var backupFile = regexp.MustCompile(`^matrix-hipaa-\d{8}T\d{6}Z\.db$`)

// Stamp is t in the compact UTC form file names carry; it sorts by time.
func Stamp(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// BackupName is the file name of a copy taken at t; names sort by time.
func BackupName(t time.Time) string { return "matrix-hipaa-" + Stamp(t) + ".db" }

// PruneBackups removes all but the newest keep copies named by BackupName in
// dir, leaving every other file alone, and returns what it removed.
func PruneBackups(dir string, keep int) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var copies []string
	for _, e := range entries {
		if e.Type().IsRegular() && backupFile.MatchString(e.Name()) {
			copies = append(copies, e.Name())
		}
	}
	sort.Strings(copies)
	var removed []string
	for len(copies) > keep {
		p := filepath.Join(dir, copies[0])
		if err := os.Remove(p); err != nil {
			return removed, err
		}
		removed, copies = append(removed, p), copies[1:]
	}
	return removed, nil
}

// RestoreResult says what a restore did.
type RestoreResult struct {
	// Head is the restored chain's last record before the restore's own.
	Head int64
	// ReplacedHead is the replaced chain's head, -1 if it could not be read.
	ReplacedHead int64
	// Kept lists where the replaced files were moved.
	Kept []string
}

// Restore puts a backup copy in place of the SQLite database at dbPath; the
// service must be stopped. The copy is brought beside the database first and
// its chain checked with keys; only then are the database (with its -wal and
// -shm, which must never meet another database file) and the checkpoint file
// renamed aside with suffix, kept as evidence of what the restore removed,
// and the copy renamed into place. The restored chain's first new record is
// the restore itself (admin.command, action restore, count = the replaced
// chain's head), so the trail says why its sequence numbers were reused.
func Restore(ctx context.Context, dbPath, checkpointFile, from string, keys *audit.Keys, operator, suffix string, now Clock) (RestoreResult, error) {
	res := RestoreResult{ReplacedHead: -1}
	staging := dbPath + ".restoring"
	if err := copyNew(from, staging); err != nil {
		return res, fmt.Errorf("bring the copy in: %w", err)
	}
	placed := false
	defer func() {
		if !placed {
			for _, p := range []string{staging, staging + "-wal", staging + "-shm"} {
				os.Remove(p)
			}
		}
	}()
	v, _, err := checkCopy(ctx, staging, keys)
	if err != nil {
		return res, fmt.Errorf("%w; nothing was changed", err)
	}
	res.Head = v.HeadSeq
	if old, err := store.Open(ctx, "sqlite3", dbPath, 1); err == nil {
		old.R.QueryRowContext(ctx, `SELECT seq FROM audit_head WHERE id = 1`).Scan(&res.ReplacedHead)
		old.Close()
	}
	for _, p := range []string{dbPath, dbPath + "-wal", dbPath + "-shm", checkpointFile} {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := os.Rename(p, p+suffix); err != nil {
			return res, fmt.Errorf("move %s aside: %w", p, err)
		}
		res.Kept = append(res.Kept, p+suffix)
	}
	if err := os.Rename(staging, dbPath); err != nil {
		return res, fmt.Errorf("put the copy in place: %w", err)
	}
	placed = true
	if err := store.SyncDir(filepath.Dir(dbPath)); err != nil {
		return res, err
	}
	db, err := store.Open(ctx, "sqlite3", dbPath, 1)
	if err != nil {
		return res, err
	}
	defer db.Close()
	rec := &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeSuccess, Actor: operator, Action: "restore", Count: res.ReplacedHead}
	return res, audit.NewChain(keys, db, now).AppendTx(ctx, db, rec)
}

// checkCopy opens a copy, counts its events and verifies its whole chain;
// a copy that does not verify is an error.
func checkCopy(ctx context.Context, path string, keys *audit.Keys) (audit.Result, int64, error) {
	b, err := store.Open(ctx, "sqlite3", path, 1)
	if err != nil {
		return audit.Result{}, 0, fmt.Errorf("open the copy: %w", err)
	}
	defer b.Close()
	var events int64
	if err := b.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM inbox`).Scan(&events); err != nil {
		return audit.Result{}, 0, fmt.Errorf("read the copy: %w", err)
	}
	v, err := audit.Verify(ctx, b, keys)
	if err != nil {
		return v, events, fmt.Errorf("verify the copy: %w", err)
	}
	if v.Bad != nil {
		return v, events, fmt.Errorf("the copy in %s does not verify: %s", path, v.Bad.Error())
	}
	return v, events, nil
}

// copyNew copies from to a file to that must not exist, 0600, fsynced.
func copyNew(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(to)
	}
	return err
}
