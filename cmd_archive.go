package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/archive"
)

// archiveExport writes an eDiscovery package (docs/archive.md).
func archiveExport(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("archive export", stderr)
	room := fs.String("room", "", "export this room")
	user := fs.String("user", "", "export this user's messages (with the rooms' memberships)")
	hold := fs.Int64("hold", 0, "export what this legal hold covers")
	since := fs.String("since", "", "from this time (RFC 3339, e.g. 2026-12-01T00:00:00Z)")
	until := fs.String("until", "", "until this time (RFC 3339), not included")
	reason := fs.String("reason", "", "why (required: kept in the package's manifest, its digest audited)")
	out := fs.String("out", "", "a new folder for the package")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return errUsage{"usage: matrix-hipaa archive export -config F (-room ID | -user ID | -hold N) [-since T] [-until T] -reason TEXT -out DIR"}
	}
	q := archive.Query{Room: *room, User: *user, Hold: *hold, Reason: *reason, By: operator()}
	for _, t := range []struct {
		in  string
		dst *time.Time
	}{{*since, &q.Since}, {*until, &q.Until}} {
		if t.in == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339, t.in)
		if err != nil {
			return errUsage{fmt.Sprintf("%q is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)", t.in)}
		}
		*t.dst = v
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	ring, err := openArchiveKeys(cfg.Keys.ArchiveFile)
	if err != nil {
		return err
	}
	m, err := archive.Export(ctx, db, chain, ring, q, *out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "wrote %s: %d rooms, %d messages, %d edits, %d redactions, %d attachments, %d messages the archive could not read; check it with: cd %s && sha256sum -c SHA256SUMS\n",
		*out, len(m.Rooms), m.Counts["messages"], m.Counts["edits"], m.Counts["redactions"], m.Counts["attachments"], m.Counts["missing"], *out)
	return err
}

// archiveReport lists, per archived room, what the archive holds and the
// messages it could not read, by reason.
func archiveReport(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("archive report", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	rooms, err := archive.Report(ctx, db, chain.Keys())
	if err != nil {
		return recordCommand(ctx, db, chain, "archive-report", "", 0, err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROOM\tSINCE\tKEPT\tMISSING\tWHY")
	missing := 0
	for _, r := range rooms {
		since := "-"
		if r.Since > 0 {
			since = time.UnixMilli(r.Since).UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", r.Room, since, r.Kept, r.MissingTotal(), r.Why())
		missing += r.MissingTotal()
	}
	tw.Flush()
	if err := recordCommand(ctx, db, chain, "archive-report", "", int64(len(rooms)), nil); err != nil {
		return err
	}
	if missing > 0 {
		fmt.Fprintf(stdout, "%d messages of archived rooms are not in the archive (withheld: the sender's client refused the archiver the key; no-keys: it never came; gone: removed before it could be read)\n", missing)
		return errFinding
	}
	return nil
}

// openArchiveKeys reads the archive keys for reading the archive: a
// missing key file is an error here, never a new key.
func openArchiveKeys(path string) (*archive.Keyring, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("the archive key %s is missing: without it (or its copy from the key vault) the archive cannot be read", path)
	}
	return archive.LoadKeyring(path)
}
