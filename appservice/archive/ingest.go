package archive

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Kinds of archive items.
const (
	KindMessage   = "message"
	KindRedaction = "redaction"
	KindMember    = "member"
)

// Record is what one archive item holds, sealed: the message as its
// sender wrote it (decrypted), a redaction, or a membership change.
type Record struct {
	Kind    string `json:"kind"`
	EventID string `json:"event_id"`
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`
	// Type is the event's type as read: for an encrypted message, the
	// type inside (m.room.message, m.sticker, ...).
	Type      string `json:"type"`
	SentAt    int64  `json:"sent_at"`
	Encrypted bool   `json:"encrypted,omitempty"`
	// Content is the message's content, as the sender's client wrote it.
	Content json.RawMessage `json:"content,omitempty"`
	Files   []File          `json:"files,omitempty"`
	// Redacts and Reason: a redaction; ByService, one of the service's
	// own (an expiry, a wipe, plaintext removed).
	Redacts   string `json:"redacts,omitempty"`
	Reason    string `json:"reason,omitempty"`
	ByService bool   `json:"by_service,omitempty"`
	// User and Membership: a membership change.
	User       string `json:"user,omitempty"`
	Membership string `json:"membership,omitempty"`
}

// File is an attachment of an archived message: its bytes are an
// archive_file row (n), decrypted and sealed again; Missing says why not.
type File struct {
	N        int    `json:"n"`
	Name     string `json:"name"`
	MimeType string `json:"mimetype,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Size     int    `json:"size"`
	Missing  string `json:"missing,omitempty"`
}

// fileName is the sealed name of attachment n of a message.
func fileName(eventID string, n int) string { return "file/" + eventID + "/" + strconv.Itoa(n) }

// pending is one archive_pending row: an encrypted message waiting to be
// read.
type pending struct {
	EventID, Room, Sender string
	SentAt, KeepUntil     int64
	Event                 []byte
	QueuedAt              int64
}

// outcome is what reading one pending message came to: kept (item and its
// files), missing (reason), or to be tried again at retry.
type outcome struct {
	p       pending
	item    *Item
	files   map[int][]byte
	content []byte // the message's content, for its media
	missing string
	retry   time.Time
}

// ingestBatch is how many pending messages one pass reads and commits.
const ingestBatch = 200

// ingestLoop reads pending messages as they come (woken by the dispatcher's
// commits, and every second for retries), once the bot is logged in.
func (f *Feature) ingestLoop(ctx context.Context) {
	if f.Bot == nil {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-f.Bot.Ready():
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for {
			n, err := f.Ingest(ctx)
			if err != nil {
				if ctx.Err() == nil {
					f.env.Log.Warn().Str("error", appservice.SafeError(err)).Msg("archive: reading pending messages failed; retrying")
				}
				break
			}
			if n < ingestBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-t.C:
		}
	}
}

// Ingest reads one batch of pending messages that are due and commits what
// became of them in one transaction: the kept ones' items and files, the
// missing ones (audited), the next try of those whose key has not come;
// each kept or missing message leaves the queue in that transaction. It
// returns how many it read.
func (f *Feature) Ingest(ctx context.Context) (int, error) {
	now := f.env.Now()
	rows, err := f.env.DB.R.QueryContext(ctx, `SELECT event_id, room_id, sender, sent_at, keep_until, event, queued_at FROM archive_pending
		WHERE next_at <= $1 ORDER BY next_at, event_id LIMIT $2`, now.UnixMilli(), ingestBatch)
	if err != nil {
		return 0, err
	}
	var batch []pending
	for rows.Next() {
		var p pending
		if err := rows.Scan(&p.EventID, &p.Room, &p.Sender, &p.SentAt, &p.KeepUntil, &p.Event, &p.QueuedAt); err != nil {
			rows.Close()
			return 0, err
		}
		batch = append(batch, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(batch) == 0 {
		return 0, err
	}
	outs := make([]outcome, 0, len(batch))
	for _, p := range batch {
		o, err := f.read(ctx, p, now)
		if err != nil {
			if ctx.Err() != nil {
				return 0, err
			}
			// A homeserver or media error: this one waits, the rest go on.
			f.env.Log.Warn().Str("error", appservice.SafeError(err)).Str("event_id", p.EventID).Msg("archive: could not read a message yet; trying again")
			o = outcome{p: p, retry: now.Add(30 * time.Second)}
		}
		outs = append(outs, o)
	}
	keys := f.env.Chain.Keys()
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		for _, o := range outs {
			switch {
			case !o.retry.IsZero():
				if _, err := tx.ExecContext(ctx, `UPDATE archive_pending SET next_at = $1 WHERE event_id = $2`, o.retry.UnixMilli(), o.p.EventID); err != nil {
					return err
				}
				continue
			case o.item != nil:
				if err := saveItem(ctx, tx, *o.item); err != nil {
					return err
				}
				for _, m := range mediaOf(o.content) {
					if _, err := tx.ExecContext(ctx, `INSERT INTO archive_media (event_id, mxc, sender_p) VALUES ($1, $2, $3) ON CONFLICT (event_id, mxc) DO NOTHING`, o.p.EventID, m, keys.User(o.p.Sender)); err != nil {
						return err
					}
				}
				for n, b := range o.files {
					if _, err := tx.ExecContext(ctx, `INSERT INTO archive_file (event_id, n, key_id, sealed) VALUES ($1, $2, $3, $4) ON CONFLICT (event_id, n) DO NOTHING`,
						o.p.EventID, n, KeyOf(b), b); err != nil {
						return err
					}
				}
			default:
				res, err := tx.ExecContext(ctx, `INSERT INTO archive_missing (event_id, room_p, sender_p, sent_at, reason, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
					ON CONFLICT (event_id) DO NOTHING`, o.p.EventID, keys.Room(o.p.Room), keys.User(o.p.Sender), o.p.SentAt, o.missing, now.UnixMilli())
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n > 0 {
					if err := f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeArchive, Outcome: audit.OutcomeFailure, Action: "missing",
						Room: keys.Room(o.p.Room), Actor: keys.User(o.p.Sender), EventID: o.p.EventID, EventType: "m.room.encrypted", Detail: o.missing}); err != nil {
						return err
					}
				}
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM archive_pending WHERE event_id = $1`, o.p.EventID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, o := range outs {
		switch {
		case !o.retry.IsZero():
		case o.item != nil:
			f.env.Metrics.ArchiveItems.WithLabelValues(KindMessage).Inc()
			f.env.Metrics.ArchiveItems.WithLabelValues("file").Add(float64(len(o.files)))
		default:
			f.env.Metrics.ArchiveMissing.WithLabelValues(reasonClass(o.missing)).Inc()
		}
	}
	return len(batch), nil
}

// read decrypts one pending message: from the ciphertext as pushed, or
// (not kept) as the homeserver has it now. A key not yet come is waited
// for (KeyWait from when it was queued), then the message is missing, as
// one whose key was withheld or that is gone.
func (f *Feature) read(ctx context.Context, p pending, now time.Time) (outcome, error) {
	var ev *event.Event
	var err error
	if len(p.Event) > 0 {
		ev, err = f.Bot.DecryptRaw(ctx, p.Event, 0)
	} else {
		ev, err = f.Bot.ReadEvent(ctx, p.Room, p.EventID, 0)
	}
	var withheld *bot.WithheldError
	switch {
	case errors.Is(err, bot.ErrNoKeys):
		waited := now.Sub(time.UnixMilli(p.QueuedAt))
		if waited < f.KeyWait {
			return outcome{p: p, retry: now.Add(min(max(waited/4, 2*time.Second), 5*time.Minute))}, nil
		}
		return outcome{p: p, missing: "no-keys"}, nil
	case errors.As(err, &withheld):
		return outcome{p: p, missing: "withheld:" + withheld.Code}, nil
	case errors.Is(err, mautrix.MNotFound):
		return outcome{p: p, missing: "gone"}, nil
	case err != nil && len(p.Event) > 0 && !appservice.Unreachable(err):
		return outcome{p: p, missing: "unreadable"}, nil
	case err != nil:
		return outcome{}, err
	case ev.Unsigned.RedactedBecause != nil || ev.Type == event.EventEncrypted:
		return outcome{p: p, missing: "gone"}, nil
	}
	rec := Record{Kind: KindMessage, EventID: p.EventID, RoomID: p.Room, Sender: p.Sender, Type: ev.Type.Type, SentAt: p.SentAt,
		Encrypted: true, Content: json.RawMessage(ev.Content.VeryRaw)}
	files, err := f.attachments(ctx, ev, &rec)
	if err != nil {
		return outcome{}, err
	}
	it, err := f.seal(rec, p.KeepUntil)
	if err != nil {
		return outcome{}, err
	}
	return outcome{p: p, item: &it, files: files, content: ev.Content.VeryRaw}, nil
}

// attachments fetches a message's file (decrypting an encrypted one),
// notes it in rec, and returns it sealed, by n. A file the media
// repository no longer has is noted missing; other failures are retried.
func (f *Feature) attachments(ctx context.Context, ev *event.Event, rec *Record) (map[int][]byte, error) {
	msg, ok := ev.Content.Parsed.(*event.MessageEventContent)
	if !ok || (msg.File == nil && msg.URL == "") {
		return nil, nil
	}
	file := File{N: 0, Name: msg.Body}
	if msg.FileName != "" {
		file.Name = msg.FileName
	}
	if msg.Info != nil {
		file.MimeType = msg.Info.MimeType
	}
	var data []byte
	var err error
	if msg.File != nil {
		data, err = f.fetchEncrypted(ctx, msg.File)
	} else {
		var uri id.ContentURI
		if uri, err = msg.URL.Parse(); err == nil {
			data, err = f.Bot.Download(ctx, uri)
		}
	}
	switch {
	case errors.Is(err, mautrix.MNotFound):
		file.Missing = "gone"
		rec.Files = append(rec.Files, file)
		return nil, nil
	case errors.Is(err, errUnreadable):
		file.Missing = "unreadable"
		rec.Files = append(rec.Files, file)
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("fetch the attachment: %w", err)
	}
	sum := sha256.Sum256(data)
	file.SHA256, file.Size = hex.EncodeToString(sum[:]), len(data)
	ring, err := f.Ring()
	if err != nil {
		return nil, err
	}
	sealed, err := ring.Seal(fileName(rec.EventID, 0), data)
	if err != nil {
		return nil, err
	}
	rec.Files = append(rec.Files, file)
	return map[int][]byte{0: sealed}, nil
}

// fetchEncrypted downloads an encrypted attachment and decrypts it,
// checking its hash as the sender's client gave it.
func (f *Feature) fetchEncrypted(ctx context.Context, ef *event.EncryptedFileInfo) ([]byte, error) {
	uri, err := ef.URL.Parse()
	if err != nil {
		return nil, err
	}
	data, err := f.Bot.Download(ctx, uri)
	if err != nil {
		return nil, err
	}
	if err := ef.DecryptInPlace(data); err != nil {
		return nil, fmt.Errorf("%w: %w", errUnreadable, err)
	}
	return data, nil
}

// errUnreadable: an attachment that does not decrypt or match its hash.
var errUnreadable = errors.New("the attachment does not decrypt with the key its message gives")
