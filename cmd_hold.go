package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/expiry"
)

func holdCommand(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("hold", stderr)
	room := fs.String("room", "", "room ID to hold")
	user := fs.String("user", "", "user ID whose messages to hold")
	reason := fs.String("reason", "", "why (kept with the hold, not in the audit trail)")
	release := fs.Int64("release", 0, "release the hold with this ID")
	list := fs.Bool("list", false, "list the holds standing")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	_, db, chain, err := openData(ctx, *cfgPath)
	if err != nil {
		return err
	}
	defer db.Close()
	switch {
	case *list:
		holds, err := expiry.StandingHolds(ctx, db)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tON\tPLACED\tBY\tREASON")
		for _, h := range holds {
			on := h.Room
			if h.User != "" {
				on = h.User
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", h.ID, on, time.UnixMilli(h.PlacedAt).UTC().Format(time.RFC3339), h.PlacedBy, h.Reason)
		}
		tw.Flush()
		// Listing shows reasons: it is a read of held data, audited.
		return recordCommand(ctx, db, chain, "hold-list", "", int64(len(holds)), nil)
	case *release != 0:
		if err := expiry.ReleaseHold(ctx, db, chain, *release, operator()); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "hold %d released; its messages expire as they come due\n", *release)
		return err
	default:
		if (*room == "") == (*user == "") || *reason == "" {
			return errUsage{"usage: matrix-hipaa hold -config F (-room ID | -user ID) -reason TEXT, or -release N, or -list"}
		}
		id, err := expiry.PlaceHold(ctx, db, chain, *room, *user, *reason, operator())
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "hold %d placed\n", id)
		return err
	}
}
