package archive

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// JobMediaDelete deletes a redacted or expired archived message's files
// from the media repository. Stored: never renamed.
const JobMediaDelete = "media_delete"

// jobExpire is the expiry feature's job kind (stored, never renamed): when
// one is done, the message it redacted is gone from clients, and its files
// go too.
const jobExpire = "expire"

// mediaRow is one file of an archived message (archive_media).
type mediaRow struct{ EventID, MXC, Sender string }

// mediaOf lists the mxc URIs a message's content points at: its file
// (plain or encrypted) and its thumbnail.
func mediaOf(content []byte) []string {
	c := gjson.ParseBytes(content)
	var out []string
	for _, path := range []string{"url", "file.url", "info.thumbnail_url", "info.thumbnail_file.url"} {
		if v := c.Get(path); v.Type == gjson.String && strings.HasPrefix(v.String(), "mxc://") {
			if _, err := id.ParseContentURI(v.String()); err == nil {
				out = append(out, v.String())
			}
		}
	}
	return out
}

// JobOutcome queues the deletion of an archived message's files once its
// expiry's redaction is done, in the transaction that records it. A held
// message never expires, so its files stay.
func (f *Feature) JobOutcome(ctx context.Context, tx *sql.Tx, j *appservice.Job, state, _ string, now time.Time) error {
	if j.Kind != jobExpire || state != "done" || j.DryRun {
		return nil
	}
	p, err := appservice.DecodePayload[appservice.ActionPayload](j)
	if err != nil || p.EventID == "" {
		return nil
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM archive_media WHERE event_id = $1`, p.EventID).Scan(&n); err != nil || n == 0 {
		return err
	}
	payload, _ := json.Marshal(appservice.ActionPayload{Room: p.Room, EventID: p.EventID, Reason: "expired"})
	return appservice.Enqueue(ctx, f.env.DB, tx, now, appservice.JobSpec{Kind: JobMediaDelete, DedupeKey: "media_delete:" + p.EventID, Payload: payload})
}

// refuseMedia leaves a message's files and audits why (media-refused).
func (f *Feature) refuseMedia(ctx context.Context, p appservice.ActionPayload, senderP, why string) error {
	f.env.Log.Warn().Str("event_id", p.EventID).Str("why", why).Msg("a redaction cannot take this message's files: they are left")
	return f.env.Chain.AppendTx(ctx, f.env.DB, &audit.Record{Type: audit.TypeArchive, Outcome: audit.OutcomeDenied, Action: "media-refused",
		Room: f.env.Chain.Keys().Room(p.Room), Actor: senderP, EventID: p.EventID, Detail: why})
}

// held is the room (pseudonym) an archived message is in, and whether a
// standing legal hold binds it (on its room, or on its sender).
func (f *Feature) held(ctx context.Context, eventID string) (roomP string, held bool, err error) {
	var senderP string
	err = f.env.DB.R.QueryRowContext(ctx, `SELECT room_p, sender_p FROM archive_item WHERE event_id = $1`, eventID).Scan(&roomP, &senderP)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	} else if err != nil {
		return "", false, err
	}
	rooms, users, err := heldPseudonyms(ctx, f.env.DB.R, f.env.Chain.Keys())
	if err != nil {
		return "", false, err
	}
	for _, r := range rooms {
		if r == roomP {
			return roomP, true, nil
		}
	}
	for _, u := range users {
		if u == senderP {
			return roomP, true, nil
		}
	}
	return roomP, false, nil
}

// deleteMedia deletes the files of one redacted or expired message, unless
// a legal hold binds it: on Synapse through
// its admin API, as the bot; files of other servers cannot be, and are
// left. Where the homeserver has no such API the job fails for good: the
// failure is audited and the room listed (rooms -problems).
func (f *Feature) deleteMedia(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[appservice.ActionPayload](j)
	if err != nil {
		return err
	}
	var mxcs []string
	var sender string
	err = eachRow(ctx, f.env.DB, `SELECT mxc, sender_p FROM archive_media WHERE event_id = $1 ORDER BY mxc`, []any{p.EventID}, func(s scanner) error {
		var m string
		err := s.Scan(&m, &sender)
		mxcs = append(mxcs, m)
		return err
	})
	if err != nil || len(mxcs) == 0 {
		return err // nothing of this message's is in the media repository
	}
	keys := f.env.Chain.Keys()
	roomP, held, err := f.held(ctx, p.EventID)
	if err != nil {
		return err
	}
	if roomP != keys.Room(p.Room) {
		// A redaction names its target itself: one sent in another room
		// redacts nothing here, and deletes nothing.
		return f.refuseMedia(ctx, p, sender, "other-room")
	}
	if held {
		f.env.Log.Info().Str("event_id", p.EventID).Msg("a redacted message's files stay: a legal hold binds it")
		return nil
	}
	if f.env.HS == nil || f.env.Config.Homeserver.Software != "synapse" {
		return appservice.Permanent(homeserver.ErrNoMediaDelete)
	}
	// The homeserver is the judge of whether the message is gone: a
	// redaction event from someone without the power (another server's
	// user, say) is in the room but redacts nothing.
	if f.Bot == nil {
		return appservice.Permanent(errors.New("the archive needs the E2EE bot to confirm a message was redacted"))
	}
	ev, err := f.Bot.ReadEvent(ctx, p.Room, p.EventID, 0)
	switch {
	case errors.Is(err, mautrix.MNotFound):
		// Purged with the room's history: gone.
	case err != nil && !errors.Is(err, bot.ErrNoKeys) && !errors.As(err, new(*bot.WithheldError)):
		return err
	case ev == nil || ev.Unsigned.RedactedBecause == nil:
		return f.refuseMedia(ctx, p, sender, "not-redacted")
	}
	for _, m := range mxcs {
		uri, _ := id.ParseContentURI(m)
		if uri.Homeserver != f.env.Config.Homeserver.Domain {
			f.env.Log.Info().Str("event_id", p.EventID).Msg("an expired message's file is on another server: only that server can delete it")
			continue
		}
		// A message names its files itself: one pointing at a file someone
		// else uploaded must not get that file deleted by its redaction.
		software := f.env.Config.Homeserver.Software
		uploader, err := f.env.HS.MediaUploader(ctx, software, f.env.BotUser, m)
		switch {
		case errors.Is(err, homeserver.ErrNoMediaDelete):
			return appservice.Permanent(err)
		case errors.Is(err, mautrix.MNotFound):
			continue // already gone
		case err != nil:
			return err
		case keys.User(uploader) != sender:
			if err := f.refuseMedia(ctx, p, sender, "not-uploader"); err != nil {
				return err
			}
			continue
		}
		if err := f.env.HS.DeleteMedia(ctx, software, f.env.BotUser, m); err != nil {
			return err
		}
	}
	return f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM archive_media WHERE event_id = $1`, p.EventID)
		return err
	})
}
