package identity

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobBreakGlassEnd ends one emergency access when its window closes: the
// person is removed, the room and the privacy officer are told how many
// messages they sent.
const JobBreakGlassEnd = "break_glass_end"

// Why emergency access was refused (audit detail).
const (
	GlassNotVerified = "not_verified"
	GlassDenied      = "denied_by_policy"
	GlassNotGated    = "not_gated"
	GlassAllowed     = "already_allowed"
	GlassUnknownRoom = "unknown_room"
)

// BreakGlassHomeserver is what emergency access needs of the homeserver.
type BreakGlassHomeserver interface {
	Invite(ctx context.Context, user, room, invitee string) error
	ResolveAlias(ctx context.Context, user, alias string) (string, error)
	Kick(ctx context.Context, actAs, room, user, reason string) error
}

// grants are the open emergency accesses, in memory, by room and user:
// the decider counts their messages without I/O.
type grants struct {
	mu     sync.RWMutex
	byRoom map[string]map[string]grant
}

type grant struct {
	id   int64
	ends int64 // unix ms
}

func (g *grants) open(room, user string, at int64) (int64, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	gr, ok := g.byRoom[room][user]
	return gr.id, ok && at < gr.ends
}

func (g *grants) inRoom(room string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return len(g.byRoom[room]) > 0
}

func (g *grants) set(room, user string, gr grant) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byRoom == nil {
		g.byRoom = map[string]map[string]grant{}
	}
	if g.byRoom[room] == nil {
		g.byRoom[room] = map[string]grant{}
	}
	g.byRoom[room][user] = gr
}

func (g *grants) drop(room, user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.byRoom[room], user)
	if len(g.byRoom[room]) == 0 {
		delete(g.byRoom, room)
	}
}

func (g *grants) load(ctx context.Context, db *store.DB) error {
	rows, err := db.R.QueryContext(ctx, `SELECT id, room_id, user_id, ends_at FROM break_glass WHERE ended_at = 0`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var gr grant
		var room, user string
		if err := rows.Scan(&gr.id, &room, &user, &gr.ends); err != nil {
			return err
		}
		g.set(room, user, gr)
	}
	return rows.Err()
}

// OpenGrant reports whether user holds emergency access to room at now.
func OpenGrant(ctx context.Context, db *store.DB, room, user string, now time.Time) (bool, error) {
	var n int
	err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM break_glass WHERE room_id = $1 AND user_id = $2 AND ended_at = 0 AND ends_at > $3`,
		room, user, now.UnixMilli()).Scan(&n)
	return n > 0, err
}

// OpenGrants counts the emergency accesses open at now.
func OpenGrants(ctx context.Context, db *store.DB, now time.Time) (int64, error) {
	var n int64
	err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM break_glass WHERE ended_at = 0 AND ends_at > $1`, now.UnixMilli()).Scan(&n)
	return n, err
}

// glassCount is one message sent under emergency access (a row for the
// dispatcher's transaction).
type glassCount struct{ id int64 }

// SaveRows adds the counted messages to their grants.
func (f *Feature) SaveRows(ctx context.Context, db *store.DB, tx *sql.Tx, rows []any) error {
	n := map[int64]int64{}
	for _, r := range rows {
		if c, ok := r.(glassCount); ok {
			n[c.id]++
		}
	}
	for id, k := range n {
		if _, err := tx.ExecContext(ctx, `UPDATE break_glass SET messages = messages + $1 WHERE id = $2`, k, id); err != nil {
			return err
		}
	}
	return nil
}

type endPayload struct {
	ID int64 `json:"id"`
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// breakGlass handles "!breakglass ROOM REASON" from p.Sender: a verified
// clinician, a room limited to verified clinicians whose policy allows it,
// and a person its roles would otherwise refuse. Granted: recorded, the
// end queued, the person invited, the room and the privacy officer told.
func (f *Feature) breakGlass(ctx context.Context, j *appservice.Job, p dmPayload, args string) error {
	target, reason, _ := strings.Cut(strings.TrimSpace(args), " ")
	reason = strings.TrimSpace(reason)
	if target == "" || reason == "" {
		return f.reply(ctx, p, j, "Usage: !breakglass <room ID or alias> <reason>. The reason is required: it goes to the privacy officer.")
	}
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	// Done before (the invite or a notice is what failed)?
	var done struct {
		id, ends int64
		room     string
	}
	err := f.env.DB.R.QueryRowContext(ctx, `SELECT id, room_id, ends_at FROM break_glass WHERE request_id = $1`, p.EventID).Scan(&done.id, &done.room, &done.ends)
	if err == nil {
		return f.admit(ctx, j, p, done.id, done.room, reason, time.UnixMilli(done.ends))
	} else if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	now := f.env.Now()
	keys := f.env.Chain.Keys()
	refuse := func(code, room, text string) error {
		rec := &audit.Record{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeDenied, Actor: keys.User(p.Sender), Room: keys.Room(room),
			EventID: p.EventID, Action: "refused", Detail: code, JobID: j.ID}
		if j.Attempts == 0 {
			if err := f.env.Chain.AppendTx(ctx, f.env.DB, rec); err != nil {
				return err
			}
		}
		return f.reply(ctx, p, j, text)
	}
	room := target
	if strings.HasPrefix(target, "#") && f.glassHS != nil {
		if room, err = f.glassHS.ResolveAlias(ctx, f.env.BotUser, target); err != nil {
			return refuse(GlassUnknownRoom, "", "I could not find the room "+target+".")
		}
	}
	var seen int
	if err := f.env.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM room_state WHERE room_id = $1`, room).Scan(&seen); err != nil {
		return err
	}
	if seen == 0 {
		return refuse(GlassUnknownRoom, "", "I do not know the room "+target+": give its ID (!…:server) or an alias.")
	}
	known, err := appservice.LoadKnownRoom(ctx, f.env.DB, room)
	if err != nil {
		return err
	}
	entry, err := LookupClinician(ctx, f.env.DB, p.Sender)
	if err != nil {
		return err
	}
	if entry == nil || !entry.Verified(now) {
		return refuse(GlassNotVerified, room, "Emergency access is only for verified clinicians, and you are not on the verified roster (or your verification or licence has lapsed). Ask your administrator.")
	}
	pol := f.env.Policy()
	settings := pol.For(known.Policy)
	if settings.Members != policy.MembersVerified {
		return refuse(GlassNotGated, room, "That room is not limited to verified clinicians: ask a member to invite you.")
	}
	if policy.DecideMember(settings, entry.Member(p.Sender, false), now).Allowed {
		return refuse(GlassAllowed, room, "You may already be in that room: ask a member to invite you.")
	}
	if settings.BreakGlass != policy.BreakGlassAllow {
		return refuse(GlassDenied, room, "Policy does not allow emergency access to that room. Ask its members or your administrator.")
	}
	window := settings.BreakGlassMax.D()
	ends := now.Add(window)
	var id int64
	err = f.env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO break_glass (request_id, user_id, room_id, reason, started_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			p.EventID, p.Sender, room, reason, now.UnixMilli(), ends.UnixMilli()).Scan(&id)
		if err != nil {
			return err
		}
		end := appservice.JobSpec{Kind: JobBreakGlassEnd, DedupeKey: fmt.Sprintf("break-glass-end:%d", id), Payload: mustJSON(endPayload{ID: id}), Delay: window}
		if err := appservice.Enqueue(ctx, f.env.DB, tx, now, end); err != nil {
			return err
		}
		return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeSuccess, Actor: keys.User(p.Sender),
			Room: keys.Room(room), EventID: p.EventID, Action: "granted", JobID: j.ID, Count: int64(window / time.Second)})
	})
	if err != nil {
		return err
	}
	if f.env.Wake != nil {
		f.env.Wake()
	}
	return f.admit(ctx, j, p, id, room, reason, ends)
}

// admit opens the grant in memory (for the decider's count), invites the
// person and tells the room, the privacy officer and them; each step may
// run again after a failure.
func (f *Feature) admit(ctx context.Context, j *appservice.Job, p dmPayload, id int64, room, reason string, ends time.Time) error {
	f.grants.set(room, p.Sender, grant{id: id, ends: ends.UnixMilli()})
	if f.glassHS != nil {
		if err := f.glassHS.Invite(ctx, f.env.BotUser, room, p.Sender); err != nil && !alreadyIn(err) {
			return err
		}
	}
	until := ends.UTC().Format("15:04 MST, 2 Jan")
	who := p.Sender
	if e, err := LookupClinician(ctx, f.env.DB, p.Sender); err == nil && e != nil {
		who += " (" + describeClinician(e) + ")"
	}
	if err := f.dmBot.SendNotice(ctx, room, "", "", fmt.Sprintf("EMERGENCY ACCESS: %s has been let into this room until %s (break the glass). It is recorded, and the privacy officer has been told.", who, until),
		fmt.Sprintf("break-glass-announce-%d", id)); err != nil {
		return err
	}
	if officer := f.env.Config.Compliance.PrivacyOfficerRoom; officer != "" {
		if err := f.dmBot.SendNotice(ctx, officer, "", "", fmt.Sprintf("Emergency access granted: %s entered %s until %s. Reason given: %s", who, room, until, reason),
			fmt.Sprintf("break-glass-officer-%d", id)); err != nil {
			return err
		}
	}
	return f.dmBot.SendNotice(ctx, p.Room, "", "", fmt.Sprintf("Emergency access granted until %s: you have been invited to %s. Everything you do there is recorded, and the privacy officer has been told. You will be removed when the time is up.", until, room),
		fmt.Sprintf("break-glass-granted-%d", id))
}

// alreadyIn: an invite refused because they are in the room (or invited).
func alreadyIn(err error) bool {
	s := err.Error()
	return strings.Contains(s, "already in the room") || strings.Contains(s, "is already joined") || strings.Contains(s, "already invited")
}

// endHandler closes an emergency access: the person is removed and the
// room and the privacy officer are told how many messages they sent.
func (f *Feature) endHandler(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[endPayload](j)
	if err != nil {
		return err
	}
	var user, room string
	var ended, messages int64
	err = f.env.DB.R.QueryRowContext(ctx, `SELECT user_id, room_id, ended_at, messages FROM break_glass WHERE id = $1`, p.ID).Scan(&user, &room, &ended, &messages)
	if errors.Is(err, sql.ErrNoRows) {
		return appservice.Permanent(fmt.Errorf("no emergency access %d", p.ID))
	} else if err != nil {
		return err
	}
	f.grants.drop(room, user)
	if ended == 0 {
		keys := f.env.Chain.Keys()
		err = f.env.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `UPDATE break_glass SET ended_at = $1 WHERE id = $2 AND ended_at = 0`, f.env.Now().UnixMilli(), p.ID); err != nil {
				return err
			}
			return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypeEmergencyAccess, Outcome: audit.OutcomeSuccess, Actor: keys.User(user),
				Room: keys.Room(room), Action: "ended", JobID: j.ID, Count: messages})
		})
		if err != nil {
			return err
		}
	}
	// Still allowed in by their roles now (verified since, say)? Then stay.
	if entry, err := LookupClinician(ctx, f.env.DB, user); err != nil {
		return err
	} else if known, err := appservice.LoadKnownRoom(ctx, f.env.DB, room); err != nil {
		return err
	} else if !policy.DecideMember(f.env.Policy().For(known.Policy), entry.Member(user, f.exempt(user)), f.env.Now()).Allowed {
		// As the creator (who has the power in rooms people make), else the bot.
		const why = "Emergency access ended (break the glass): the time allowed is up."
		err := errors.New("no one to remove them with")
		if f.glassHS != nil && known.Creator != "" {
			err = f.glassHS.Kick(ctx, known.Creator, room, user, why)
		}
		if err != nil && !notInRoom(err) && f.dmBot != nil {
			err = f.dmBot.Kick(ctx, room, user, why)
		}
		if err != nil && !notInRoom(err) {
			return err
		}
	}
	if f.dmBot == nil {
		return nil
	}
	if err := f.dmBot.SendNotice(ctx, room, "", "", fmt.Sprintf("Emergency access of %s has ended; they sent %d messages meanwhile.", user, messages),
		fmt.Sprintf("break-glass-ended-%d", p.ID)); err != nil {
		return err
	}
	if officer := f.env.Config.Compliance.PrivacyOfficerRoom; officer != "" {
		return f.dmBot.SendNotice(ctx, officer, "", "", fmt.Sprintf("Emergency access ended: %s in %s; %d messages sent meanwhile.", user, room, messages),
			fmt.Sprintf("break-glass-officer-end-%d", p.ID))
	}
	return nil
}

// notInRoom: a kick of someone who already left.
func notInRoom(err error) bool {
	s := err.Error()
	return strings.Contains(s, "not in the room") || strings.Contains(s, "not in room") || strings.Contains(s, "is not a member")
}
