package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// backupCommand snapshots the database (appservice.Backup); with -dir it
// names the copy by time and keeps the newest -keep copies there.
func backupCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("backup", stderr)
	out := fs.String("out", "", "file to write the copy to (must not exist yet)")
	dir := fs.String("dir", "", "folder to write a copy named by the time to (matrix-hipaa-YYYYMMDDTHHMMSSZ.db)")
	keep := fs.Int("keep", 0, "with -dir: keep only this many copies there, removing the oldest (0: keep all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*out == "") == (*dir == "") || *keep < 0 || (*keep > 0 && *dir == "") {
		return errUsage{"usage: matrix-hipaa backup -config F (-out FILE | -dir DIR [-keep N])"}
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	path := *out
	if *dir != "" {
		path = filepath.Join(*dir, appservice.BackupName(time.Now()))
	}
	start := time.Now()
	res, err := appservice.Backup(ctx, db, chain, path, operator())
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "backup written to %s: %d events, %d audit records intact (chain head %d), %.1f MiB, in %s\n",
		path, res.Events, res.Records, res.HeadSeq, float64(res.Bytes)/(1<<20), time.Since(start).Round(time.Millisecond)); err != nil {
		return err
	}
	if *keep > 0 {
		removed, err := appservice.PruneBackups(*dir, *keep)
		for _, r := range removed {
			fmt.Fprintf(stdout, "removed the older copy %s\n", r)
		}
		return err
	}
	return nil
}

// notRunning refuses while the service answers on its port.
func notRunning(cfg *config.Config) error {
	if c, err := net.DialTimeout("tcp", cfg.AppService.Listen, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("the service is running (it answers on %s): stop it first", cfg.AppService.Listen)
	}
	return nil
}

// restoreCommand puts a backup copy in place of the stopped service's SQLite
// database (appservice.Restore).
func restoreCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("restore", stderr)
	from := fs.String("from", "", "the backup copy to restore")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" {
		return errUsage{"usage: matrix-hipaa restore -config F -from COPY (with the service stopped)"}
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if cfg.Database.Type != "sqlite3" {
		return store.ErrBackupPostgres
	}
	// The running service holds the database open; replacing it underneath
	// would lose whatever it writes next.
	if err := notRunning(cfg); err != nil {
		return err
	}
	keyFile := cfg.Audit.KeyFile
	if _, err := os.Stat(keyFile); err != nil {
		return fmt.Errorf("the audit key %s is needed to check the copy: restore it from the key vault first (%w)", keyFile, err)
	}
	keys, err := audit.LoadChainKey(keyFile)
	if err != nil {
		return err
	}
	suffix := ".replaced-" + appservice.Stamp(time.Now())
	res, err := appservice.Restore(context.Background(), cfg.Database.URI, cfg.Audit.CheckpointFile, *from, keys, operator(), suffix, time.Now)
	if err != nil {
		return err
	}
	replaced := "could not be read"
	switch {
	case res.ReplacedHead > res.Head:
		replaced = fmt.Sprintf("had %d records; records %d to %d are not in the restored chain", res.ReplacedHead, res.Head+1, res.ReplacedHead)
	case res.ReplacedHead >= 0:
		replaced = fmt.Sprintf("had %d records", res.ReplacedHead)
	}
	fmt.Fprintf(stdout, "restored from %s: chain head %d, then this restore recorded as record %d\nthe replaced chain %s\n", *from, res.Head, res.Head+1, replaced)
	for _, k := range res.Kept {
		fmt.Fprintf(stdout, "kept %s\n", k)
	}
	_, err = fmt.Fprintln(stdout, "start the service; keep the replaced files with the incident record (docs/deploy.md)")
	return err
}
