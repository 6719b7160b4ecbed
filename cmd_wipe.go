package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
)

func wipeCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("wipe", stderr)
	user := fs.String("user", "", "user ID to wipe")
	device := fs.String("device", "", "one device only (where the homeserver can)")
	offboard := fs.Bool("offboard", false, "also remove the user from every room (staff departure)")
	deactivate := fs.Bool("deactivate", false, "with -offboard: deactivate the account too (Synapse)")
	scope := fs.String("redact", "phi", "messages to redact: phi (rooms policy requires encrypted), all, or none")
	since := fs.String("since", "", "only messages at or after this time (RFC 3339, date, or duration ago)")
	reason := fs.String("reason", "", "why (kept with the wipe, not in the audit trail)")
	forceReason := fs.String("force-reason", "", "wipe a protected user (the bot, an administrator, another server's user), for this reason")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for the running service to finish")
	status := fs.Int64("status", 0, "instead of a new wipe, wait for wipe N and show its outcome")
	if err := parse(fs, args); err != nil {
		return err
	}
	from, err := parseTime(*since)
	if err != nil {
		return err
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	id := *status
	if id == 0 {
		w := sessions.Wipe{User: *user, Device: *device, Offboard: *offboard, Deactivate: *deactivate, Scope: *scope, Reason: *reason, RequestedBy: operator(),
			Force: *forceReason != "", ForceReason: *forceReason, Guard: sessions.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin}}
		if !from.IsZero() {
			w.Since = from.UnixMilli()
		}
		if id, err = sessions.RequestWipe(ctx, db, chain, w); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wipe %d requested for %s\n", id, *user)
	}
	got, err := sessions.WaitWipe(ctx, db, id, *wait)
	if errors.Is(err, sql.ErrNoRows) {
		return errUsage{fmt.Sprintf("there is no wipe %d", id)}
	}
	if err != nil {
		return err
	}
	switch got.State {
	case "done":
		fmt.Fprintf(stdout, "sessions revoked: %d (no session left, confirmed at %s)\nmessages redacted: %d\nrooms left: %d\n",
			got.Revoked, time.UnixMilli(got.ConfirmedAt).UTC().Format(time.RFC3339), got.Redacted, got.Left)
		if got.Held > 0 {
			fmt.Fprintf(stdout, "messages left under a legal hold: %d (not redacted; release the hold to remove them)\n", got.Held)
		}
		return nil
	case "failed":
		return fmt.Errorf("wipe %d failed: %s", id, got.LastError)
	}
	return fmt.Errorf("wipe %d is at step %q after %s; is the service running? It continues in the background", id, got.State, *wait)
}

func devicesCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("devices", stderr)
	user := fs.String("user", "", "user ID")
	if err := parse(fs, args); err != nil {
		return err
	}
	if !strings.HasPrefix(*user, "@") {
		return errUsage{"usage: matrix-hipaa devices -config F -user @name:server"}
	}
	ctx := context.Background()
	cfg, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	devs, err := homeserver.New(cfg.Homeserver.Address, cfg.AppService.ASToken.Reveal()).DeviceInventory(ctx, *user)
	if err := recordCommand(ctx, db, chain, "devices", chain.Keys().User(*user), int64(len(devs)), err); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tLAST SEEN\tCROSS-SIGNED\tNAME")
	for _, d := range devs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, d.Seen(), d.Trust(), d.DisplayName)
	}
	return tw.Flush()
}
