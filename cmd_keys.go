package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// adminKeyCommand lists the administrators' master keys the bot pinned, or
// unpins one after an administrator reset their cross-signing on purpose:
// their next command from a cross-signed device pins the new key.
func adminKeyCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "unpin") {
		return errUsage{"usage: matrix-hipaa admin-key list -config F, or admin-key unpin -config F -user ID"}
	}
	fs, cfgPath := flags("admin-key "+args[0], stderr)
	user := fs.String("user", "", "the administrator whose pin to remove")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	if args[0] == "list" {
		rows, err := db.R.QueryContext(ctx, `SELECT user_id, master_key, pinned_at FROM admin_key_pin ORDER BY user_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ADMIN\tMASTER KEY\tPINNED")
		for rows.Next() {
			var u, k string
			var at int64
			if err := rows.Scan(&u, &k, &at); err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", u, k, time.UnixMilli(at).UTC().Format(time.RFC3339))
		}
		tw.Flush()
		return rows.Err()
	}
	if *user == "" {
		return errUsage{"usage: matrix-hipaa admin-key unpin -config F -user ID"}
	}
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM admin_key_pin WHERE user_id = $1`, *user)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("no master key is pinned for %s", *user)
		}
		return chain.Append(ctx, tx, &audit.Record{Type: audit.TypeAdminKey, Outcome: audit.OutcomeSuccess, Actor: operator(), Action: "unpin",
			Detail: chain.Keys().User(*user)})
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s unpinned: their next command from a cross-signed session pins their current master key\n", *user)
	return err
}

// keysCommand rotates the job or pseudonym key in place, with the service
// stopped (appservice.RotateKey).
func keysCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "rotate" {
		return errUsage{"usage: matrix-hipaa keys rotate -config F -key job|pseudonym|archive"}
	}
	fs, cfgPath := flags("keys rotate", stderr)
	which := fs.String("key", "", "job, pseudonym or archive")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *which == "" {
		return errUsage{"usage: matrix-hipaa keys rotate -config F -key job|pseudonym|archive"}
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if err := notRunning(cfg); err != nil {
		return err
	}
	rot, err := appservice.RotateKey(context.Background(), cfg, *which, operator(), appservice.Stamp(time.Now()), time.Now)
	if err != nil {
		return err
	}
	if *which == "job" {
		fmt.Fprintf(stdout, "%d queued jobs MACed under the new job key\n", rot.Resigned)
	}
	if *which == "archive" {
		_, err = fmt.Fprintf(stdout, "the archive key is new; the old one is at %s: leave it there (it still opens the records it sealed) and put a copy in the key vault\n", rot.Retired)
		return err
	}
	_, err = fmt.Fprintf(stdout, "the %s key is new; the old one is at %s: move it to the key vault\n", *which, rot.Retired)
	return err
}
