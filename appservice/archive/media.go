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

// held reports whether a standing legal hold binds an archived message
// (on its room, or on its sender).
func (f *Feature) held(ctx context.Context, eventID string) (bool, error) {
	var roomP, senderP string
	err := f.env.DB.R.QueryRowContext(ctx, `SELECT room_p, sender_p FROM archive_item WHERE event_id = $1`, eventID).Scan(&roomP, &senderP)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	rooms, users, err := heldPseudonyms(ctx, f.env.DB.R, f.env.Chain.Keys())
	if err != nil {
		return false, err
	}
	for _, r := range rooms {
		if r == roomP {
			return true, nil
		}
	}
	for _, u := range users {
		if u == senderP {
			return true, nil
		}
	}
	return false, nil
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
	rows, err := f.env.DB.R.QueryContext(ctx, `SELECT mxc, sender_p FROM archive_media WHERE event_id = $1 ORDER BY mxc`, p.EventID)
	if err != nil {
		return err
	}
	var mxcs []string
	var sender string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m, &sender); err != nil {
			rows.Close()
			return err
		}
		mxcs = append(mxcs, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(mxcs) == 0 {
		return err // nothing of this message's is in the media repository
	}
	if held, err := f.held(ctx, p.EventID); err != nil || held {
		if held {
			f.env.Log.Info().Str("event_id", p.EventID).Msg("a redacted message's files stay: a legal hold binds it")
		}
		return err
	}
	if f.env.HS == nil {
		return appservice.Permanent(homeserver.ErrNoMediaDelete)
	}
	keys := f.env.Chain.Keys()
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
			f.env.Log.Warn().Str("event_id", p.EventID).Msg("a redacted message named a file its sender did not upload: the file is left")
			if err := f.env.Chain.AppendTx(ctx, f.env.DB, &audit.Record{Type: audit.TypeArchive, Outcome: audit.OutcomeDenied, Action: "media-refused",
				Room: keys.Room(p.Room), Actor: sender, EventID: p.EventID, Detail: "not-uploader"}); err != nil {
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
