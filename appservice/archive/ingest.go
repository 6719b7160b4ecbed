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

type jobPayload struct {
	Room      string `json:"room"`
	EventID   string `json:"event_id"`
	Sender    string `json:"sender"`
	SentAt    int64  `json:"sent_at"`
	KeepUntil int64  `json:"keep_until"`
}

// archive reads one encrypted message through the bot and keeps it with
// its attachments. A key not yet come is waited for (KeyWait), then the
// message is listed missing, as one whose key was withheld or that was
// gone before it could be read.
func (f *Feature) archive(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[jobPayload](j)
	if err != nil {
		return err
	}
	if err := f.botReady(); err != nil {
		return err
	}
	// The ciphertext as pushed, where the inbox kept it; else (a job queued
	// before, say) as the homeserver has it now.
	var raw []byte
	if err := f.env.DB.R.QueryRowContext(ctx, `SELECT event FROM archive_pending WHERE event_id = $1`, p.EventID).Scan(&raw); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	var ev *event.Event
	if raw != nil {
		ev, err = f.Bot.DecryptRaw(ctx, raw, 0)
	} else {
		ev, err = f.Bot.ReadEvent(ctx, p.Room, p.EventID, 0)
	}
	var withheld *bot.WithheldError
	switch {
	case errors.Is(err, bot.ErrNoKeys):
		waited := f.env.Now().Sub(j.Created)
		if waited < f.KeyWait {
			return appservice.RetryLater(min(max(waited/4, 2*time.Second), 5*time.Minute), err)
		}
		return f.recordMissing(ctx, p, "no-keys")
	case errors.As(err, &withheld):
		return f.recordMissing(ctx, p, "withheld:"+withheld.Code)
	case errors.Is(err, mautrix.MNotFound):
		return f.recordMissing(ctx, p, "gone")
	case err != nil:
		return err
	case ev.Unsigned.RedactedBecause != nil || ev.Type == event.EventEncrypted:
		return f.recordMissing(ctx, p, "gone")
	}
	rec := Record{Kind: KindMessage, EventID: p.EventID, RoomID: p.Room, Sender: p.Sender, Type: ev.Type.Type, SentAt: p.SentAt,
		Encrypted: true, Content: json.RawMessage(ev.Content.VeryRaw)}
	blobs, err := f.attachments(ctx, ev, &rec)
	if err != nil {
		return err
	}
	it, err := f.seal(rec, p.KeepUntil)
	if err != nil {
		return err
	}
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if err := saveItem(ctx, tx, it); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM archive_pending WHERE event_id = $1`, p.EventID); err != nil {
			return err
		}
		for n, b := range blobs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO archive_file (event_id, n, key_id, sealed) VALUES ($1, $2, $3, $4) ON CONFLICT (event_id, n) DO NOTHING`,
				p.EventID, n, KeyOf(b), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		f.env.Metrics.ArchiveItems.WithLabelValues(KindMessage).Inc()
		f.env.Metrics.ArchiveItems.WithLabelValues("file").Add(float64(len(blobs)))
	}
	return err
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

// JobOutcome lists a message whose archive job failed for good as
// missing (unreadable), in the transaction that records the failure.
func (f *Feature) JobOutcome(ctx context.Context, tx *sql.Tx, j *appservice.Job, state, _ string, now time.Time) error {
	if j.Kind != JobArchive || state != "failed" {
		return nil
	}
	p, err := appservice.DecodePayload[jobPayload](j)
	if err != nil {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM archive_pending WHERE event_id = $1`, p.EventID); err != nil {
		return err
	}
	keys := f.env.Chain.Keys()
	_, err = tx.ExecContext(ctx, `INSERT INTO archive_missing (event_id, room_p, sender_p, sent_at, reason, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (event_id) DO NOTHING`, p.EventID, keys.Room(p.Room), keys.User(p.Sender), p.SentAt, "unreadable", now.UnixMilli())
	if err == nil {
		f.env.Metrics.ArchiveMissing.WithLabelValues("unreadable").Inc()
	}
	return err
}
