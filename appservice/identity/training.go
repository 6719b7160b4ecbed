package identity

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Jobs of people's direct messages with the bot.
const (
	// JobTraining sends a person the rules of a room they joined, unless
	// they were sent them within the policy's training_interval.
	JobTraining = "training"
	// JobDMMessage reads what a person wrote to the bot in their direct
	// message room: an acknowledgement of the rules, or a command.
	JobDMMessage = "dm_message"
)

// DMBot is what people's direct messages need of the E2EE bot.
type DMBot interface {
	DirectMessenger
	ReadMessage(ctx context.Context, room, eventID string) (bot.Message, error)
	Kick(ctx context.Context, room, user, reason string) error
}

// dmRooms are the bot's direct-message rooms by room, in memory: the
// decider must tell, without I/O, that a message is someone writing to the
// bot, and the bot that it must keep those rooms' keys.
type dmRooms struct {
	mu     sync.RWMutex
	byRoom map[string]string
}

func (d *dmRooms) owner(room string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.byRoom[room]
	return u, ok
}

func (d *dmRooms) add(room, user string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byRoom == nil {
		d.byRoom = map[string]string{}
	}
	d.byRoom[room] = user
}

func (d *dmRooms) load(ctx context.Context, db *store.DB) error {
	rows, err := db.R.QueryContext(ctx, `SELECT user_id, room_id FROM bot_dm`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var user, room string
		if err := rows.Scan(&user, &room); err != nil {
			return err
		}
		d.add(room, user)
	}
	return rows.Err()
}

type trainingPayload struct {
	User    string `json:"user"`
	Room    string `json:"room"`     // the room they joined: its rules are sent
	EventID string `json:"event_id"` // their join
}

type dmPayload struct {
	Room    string `json:"room"`
	EventID string `json:"event_id"`
	Sender  string `json:"sender"`
}

// Rules is the text a person is sent: the policy's training_text, or one
// composed from the settings of the room they joined.
func Rules(pol *policy.Policy, e policy.Effective) string {
	if pol.TrainingText != "" {
		return pol.TrainingText + "\n\n" + ackLine
	}
	var b strings.Builder
	b.WriteString("Welcome. This hospital's messaging follows HIPAA rules, which the compliance service applies for you:\n")
	if e.Encryption == policy.EncryptionRequired {
		b.WriteString("- Rooms with patient information are end-to-end encrypted. A message that reaches them unencrypted is removed at once and you are told why.\n")
	}
	if e.Retention > 0 {
		fmt.Fprintf(&b, "- Messages in this room are removed %s after they are sent, unless a legal hold keeps them.\n", humanDuration(e.Retention.D()))
	}
	if e.Archive == policy.On {
		b.WriteString("- This room is archived for the hospital's records: every message and attachment is kept, encrypted.\n")
	}
	if len(e.Page) > 0 {
		b.WriteString("- Messages in this room page the people on call. A page says only that there is a new message: never its text, the room or who wrote it.\n")
	}
	if e.Members == policy.MembersVerified {
		b.WriteString("- Only verified clinicians may be in this room. In an emergency, if policy allows it, write here: !breakglass <room> <reason> (recorded, time-limited, and the privacy officer is told).\n")
	}
	b.WriteString("- Do not forward messages or screenshots outside these rooms, and lock your phone.\n\n")
	b.WriteString(ackLine)
	return b.String()
}

const ackLine = "Please acknowledge that you have read this: reply here with any message, or react to it."

func humanDuration(d time.Duration) string {
	h := d.Hours()
	switch {
	case h >= 48 && h == float64(int(h/24))*24:
		return fmt.Sprintf("%d days", int(h/24))
	case h >= 1 && h == float64(int(h)):
		return fmt.Sprintf("%d hours", int(h))
	}
	return fmt.Sprintf("%.0f minutes", h*60)
}

// trainingJob is the check, on someone joining a room under policy, that
// they have been sent the rules.
func trainingJob(ev *appservice.Event) appservice.JobSpec {
	return appservice.JobSpec{Kind: JobTraining, DedupeKey: "training:" + ev.ID,
		Payload: mustJSON(trainingPayload{User: *ev.StateKey, Room: ev.RoomID, EventID: ev.ID})}
}

func dmJob(ev *appservice.Event) appservice.JobSpec {
	return appservice.JobSpec{Kind: JobDMMessage, DedupeKey: "dm:" + ev.ID,
		Payload: mustJSON(dmPayload{Room: ev.RoomID, EventID: ev.ID, Sender: ev.Sender})}
}

// trainingHandler sends the rules unless they were sent within the
// interval (acknowledged or not: a person who has not answered is not
// sent them again on every join, and the report counts them).
func (f *Feature) trainingHandler(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[trainingPayload](j)
	if err != nil {
		return err
	}
	pol := f.env.Policy()
	if pol.Training != policy.On || f.dmBot == nil {
		return nil
	}
	now := f.env.Now()
	var sent int64
	err = f.env.DB.R.QueryRowContext(ctx, `SELECT sent_at FROM training WHERE user_id = $1`, p.User).Scan(&sent)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if sent > 0 && now.UnixMilli()-sent < pol.Interval().Milliseconds() {
		return nil
	}
	room, err := appservice.LoadKnownRoom(ctx, f.env.DB, p.Room)
	if err != nil {
		return err
	}
	dm, err := f.directRoom(ctx, p.User)
	if err != nil {
		return err
	}
	if err := f.dmBot.SendNotice(ctx, dm, "", "", Rules(pol, pol.For(room.Policy)), fmt.Sprintf("training-%d", j.ID)); err != nil {
		return err
	}
	return f.env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO training (user_id, sent_at, acked_at) VALUES ($1, $2, 0)
			ON CONFLICT (user_id) DO UPDATE SET sent_at = excluded.sent_at, acked_at = 0`, p.User, now.UnixMilli()); err != nil {
			return err
		}
		return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeTraining, Outcome: audit.OutcomeSuccess, Actor: f.env.Chain.Keys().User(p.User),
			Action: "sent", JobID: j.ID})
	})
}

// directRoom is the bot's DM room with user, created on first use.
func (f *Feature) directRoom(ctx context.Context, user string) (string, error) {
	return directRoom(ctx, f.env.DB, f.messenger(), user)
}

// messenger is the bot as the feature's DMs use it: every DM room it
// creates, whichever job asked (the rules, a session warning), is
// remembered at once, so that what its person writes there is read.
func (f *Feature) messenger() DirectMessenger {
	if f.dmBot == nil {
		return nil
	}
	return dmCreator{f.dmBot, &f.dms}
}

type dmCreator struct {
	DirectMessenger
	dms *dmRooms
}

func (c dmCreator) CreateDM(ctx context.Context, user string) (string, error) {
	room, err := c.DirectMessenger.CreateDM(ctx, user)
	if err == nil {
		c.dms.add(room, user)
	}
	return room, err
}

// dmHandler reads one message a person wrote to the bot: a command
// (!breakglass), else an acknowledgement of the rules if they are waiting
// for one. Anything else is left unanswered.
func (f *Feature) dmHandler(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[dmPayload](j)
	if err != nil {
		return err
	}
	if owner, ok := f.dms.owner(p.Room); !ok || owner != p.Sender || f.dmBot == nil {
		return nil
	}
	msg, err := f.dmBot.ReadMessage(ctx, p.Room, p.EventID)
	if err != nil {
		if errors.Is(err, bot.ErrNotReady) {
			return appservice.RetryLater(0, err)
		}
		return err
	}
	if msg.Sender != p.Sender || msg.Room != p.Room {
		return appservice.Permanent(errors.New("the event is not the one the job was queued for"))
	}
	if cmd, rest, ok := strings.Cut(strings.TrimSpace(msg.Body), " "); ok && strings.EqualFold(cmd, "!breakglass") {
		return f.breakGlass(ctx, j, p, rest)
	} else if strings.EqualFold(strings.TrimSpace(msg.Body), "!breakglass") {
		return f.reply(ctx, p, j, "Usage: !breakglass <room ID or alias> <reason>. Emergency access is recorded, time-limited, and the privacy officer is told.")
	}
	if msg.Type != "m.room.message" && msg.Type != "m.reaction" {
		return nil
	}
	now := f.env.Now().UnixMilli()
	acked := false
	err = f.env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE training SET acked_at = $1 WHERE user_id = $2 AND acked_at = 0`, now, p.Sender)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		acked = true
		return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeTraining, Outcome: audit.OutcomeSuccess, Actor: f.env.Chain.Keys().User(p.Sender),
			EventID: p.EventID, Action: "acknowledged", JobID: j.ID})
	})
	if err != nil || !acked {
		return err
	}
	return f.reply(ctx, p, j, "Thank you: your acknowledgement is recorded.")
}

func (f *Feature) reply(ctx context.Context, p dmPayload, j *appservice.Job, text string) error {
	return f.dmBot.SendNotice(ctx, p.Room, "", "", text, fmt.Sprintf("dm-reply-%d", j.ID))
}

// TrainingCounts is where the rules stand: people sent them, of whom
// acknowledged and not.
type TrainingCounts struct {
	Sent, Acknowledged, Unacknowledged int64
}

// ReadTrainingCounts counts the training table.
func ReadTrainingCounts(ctx context.Context, db *store.DB) (TrainingCounts, error) {
	var c TrainingCounts
	err := db.R.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN acked_at > 0 THEN 1 ELSE 0 END), 0) FROM training`).Scan(&c.Sent, &c.Acknowledged)
	c.Unacknowledged = c.Sent - c.Acknowledged
	return c, err
}
