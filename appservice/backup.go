package appservice

import (
	"context"
	"errors"
	"fmt"
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
	b, err := store.Open(ctx, "sqlite3", path, 1)
	if err != nil {
		return res, fmt.Errorf("open the copy: %w", err)
	}
	defer b.Close()
	if err := b.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM inbox`).Scan(&res.Events); err != nil {
		return res, fmt.Errorf("read the copy: %w", err)
	}
	v, err := audit.Verify(ctx, b, chain.Keys())
	if err != nil {
		return res, fmt.Errorf("verify the copy: %w", err)
	}
	res.Records, res.HeadSeq = v.Records, v.HeadSeq
	if v.Bad != nil {
		return res, fmt.Errorf("the copy in %s does not verify: %s", path, v.Bad.Error())
	}
	if st, err := os.Stat(path); err == nil {
		res.Bytes = st.Size()
	}
	return res, nil
}

const backupLayout = "20060102T150405Z"

var backupFile = regexp.MustCompile(`^matrix-hipaa-\d{8}T\d{6}Z\.db$`)

// BackupName is the file name of a copy taken at t; names sort by time.
func BackupName(t time.Time) string {
	return "matrix-hipaa-" + t.UTC().Format(backupLayout) + ".db"
}

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
