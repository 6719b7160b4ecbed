package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/expiry"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/identity"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/pushers"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/pager"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Messenger is what the management room needs of the E2EE bot.
type Messenger interface {
	EnsureJoined(ctx context.Context, room, inviter string) (bot.Membership, error)
	ReadMessage(ctx context.Context, room, eventID string) (bot.Message, error)
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

// Inventory lists a user's devices.
type Inventory interface {
	DeviceInventory(ctx context.Context, user string) ([]homeserver.Device, error)
}

// Room runs the commands administrators give in the management room. Each
// message there becomes a durable admin_command job (see PolicyDecider); the
// handler reads it through the bot, refuses anyone not in admin.users (and
// audits the refusal), runs the command, and answers in the room. Commands
// that change something run once: their row in admin_command is written in
// the same transaction as the change.
type Room struct {
	DB      *store.DB
	Chain   *audit.Chain
	Bot     Messenger
	HS      Inventory
	IsAdmin func(user string) bool
	// Guard protects the bot, administrators and other servers' users
	// from wipes (the management room cannot force one).
	Guard sessions.WipeGuard
	// SingleDevice: the homeserver can sign out one device (Synapse).
	SingleDevice bool
	// ManagementRoom is admin.room: a job naming any other room, or whose
	// event turns out to be from another room or sender, is refused.
	ManagementRoom string
}

// changes lists the commands that change something. They run only from an
// encrypted message whose sending device is cross-signed by the admin's
// pinned master key (trust CrossSignedVerified or better): the homeserver's
// word that an admin sent it is not enough, since whoever holds a token of
// theirs, or administers the homeserver, can send as them.
var changes = map[string]bool{"wipe": true, "offboard": true, "verify": true, "revoke": true, "hold": true, "release": true, "page": true}

// untrusted says why a message may not change anything ("" if it may).
func untrusted(msg bot.Message) string {
	switch {
	case !msg.Encrypted:
		return "not-encrypted"
	case msg.KeyChanged:
		return "key-changed"
	case msg.Trust < id.TrustStateCrossSignedVerified:
		return "device-not-cross-signed"
	}
	return ""
}

var untrustedReplies = map[string]string{
	"not-encrypted": "commands that change anything must be sent in an encrypted room from a session you have verified (cross-signed); this one was sent in plain text, so it was refused. The refusal is recorded in the audit trail.",
	"key-changed": "your cross-signing identity is not the one I pinned for you, so this command was refused and the refusal recorded. If you reset your cross-signing on purpose, ask an operator to run `matrix-hipaa admin-key unpin " +
		"<your user ID>`, then send the command again.",
	"device-not-cross-signed": "this session is not verified (cross-signed) by your account, so commands that change anything are refused from it; the refusal is recorded. Verify this session from one you already trust, then send the command again.",
}

// JobWipeReport tells the management room how a wipe it asked for ended.
const JobWipeReport = "admin_wipe_report"

type reportPayload struct {
	WipeID int64  `json:"wipe_id"`
	Room   string `json:"room"`
	Admin  string `json:"admin"`
}

// keysAttempts is how many times (backing off) a command waits for its
// sender's room key before it is answered with an error instead.
const keysAttempts = 8

// Register gives the runner the management room's job handlers.
func (m *Room) Register(r *appservice.Runner) {
	r.Handle(appservice.JobAdminCommand, m.handleCommand)
	r.Handle(JobWipeReport, m.handleReport)
}

func (m *Room) handleCommand(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[appservice.CommandPayload](j)
	if err != nil {
		return err
	}
	// Done before (the reply is what failed)?
	var done struct {
		command, reply string
	}
	err = m.DB.R.QueryRowContext(ctx, `SELECT command, reply FROM admin_command WHERE event_id = $1`, p.EventID).Scan(&done.command, &done.reply)
	if err == nil && done.reply != "" {
		return m.answer(ctx, p, done.reply)
	} else if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	inviter := ""
	if m.IsAdmin(p.Sender) {
		inviter = p.Sender
	}
	if _, err := m.Bot.EnsureJoined(ctx, p.Room, inviter); err != nil {
		if errors.Is(err, bot.ErrNotReady) {
			return appservice.RetryLater(5*time.Second, err)
		}
		return err
	}
	keys := m.Chain.Keys()
	msg, err := m.Bot.ReadMessage(ctx, p.Room, p.EventID)
	switch {
	case errors.Is(err, bot.ErrNotReady):
		return appservice.RetryLater(5*time.Second, err)
	case errors.Is(err, bot.ErrNoKeys) && j.Attempts >= keysAttempts-1:
		rec := &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeFailure, Actor: keys.User(p.Sender), Room: keys.Room(p.Room),
			EventID: p.EventID, Action: "unreadable"}
		return m.answerOnce(ctx, p, rec, "I could not read that message: your client never shared its room key with me. Check that this session trusts the bot's device, then send it again.")
	case err != nil:
		return err // the sender's client shares the key soon; back off
	}
	if p.Room != m.ManagementRoom || msg.Room != p.Room || msg.Sender != p.Sender {
		// Only a database writer makes such a job (the dispatcher queues
		// commands for admin.room alone, from the event it received).
		rec := &audit.Record{Outcome: audit.OutcomeDenied, Actor: keys.User(p.Sender), Room: keys.Room(p.Room), EventID: p.EventID, Action: "forged"}
		if err := appservice.RecordCommand(ctx, m.DB, m.Chain, rec, nil); err != nil {
			return err
		}
		return appservice.Permanent(errors.New("the command job does not match its event or the management room"))
	}
	if msg.Pinned || msg.KeyChanged {
		rec := &audit.Record{Type: audit.TypeAdminKey, Outcome: audit.OutcomeSuccess, Actor: keys.User(p.Sender), Room: keys.Room(p.Room),
			EventID: p.EventID, Action: "pin", Detail: keys.User(p.Sender)}
		if msg.KeyChanged {
			rec.Outcome, rec.Action = audit.OutcomeDenied, "changed"
		}
		if err := m.Chain.AppendTx(ctx, m.DB, rec); err != nil {
			return err
		}
	}
	now := m.Chain.Now()
	cmd, isCmd, perr := ParseCommand(msg.Body, now)
	if !isCmd {
		return nil // conversation among admins
	}
	rec := &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeSuccess, Actor: keys.User(p.Sender), Room: keys.Room(p.Room),
		EventID: p.EventID, Action: cmd.Name}
	if cmd.Target != "" {
		rec.Detail = pseudonymOf(keys, cmd.Target)
	}
	if !m.IsAdmin(p.Sender) {
		rec.Outcome = audit.OutcomeDenied
		reply := "you are not one of the administrators listed in the service's config (admin.users), so this command was refused. The refusal is recorded in the audit trail."
		return m.settle(ctx, p, cmd.Name, rec, reply, 0, nil)
	}
	if why := untrusted(msg); why != "" && changes[cmd.Name] {
		rec.Outcome, rec.Detail = audit.OutcomeDenied, why
		return m.settle(ctx, p, cmd.Name, rec, untrustedReplies[why], 0, nil)
	}
	if perr != nil {
		rec.Outcome = audit.OutcomeFailure
		return m.answerOnce(ctx, p, rec, perr.Error())
	}
	switch cmd.Name {
	case "help":
		return m.answerOnce(ctx, p, rec, Help)
	case "devices":
		devs, err := m.HS.DeviceInventory(ctx, cmd.Target)
		if err != nil {
			rec.Outcome = audit.OutcomeFailure
			return m.answerOnce(ctx, p, rec, fmt.Sprintf("could not list the devices of %s: %s", cmd.Target, appservice.SafeError(err)))
		}
		rec.Count = int64(len(devs))
		return m.answerOnce(ctx, p, rec, formatDevices(cmd.Target, devs))
	case "pushers":
		users, _, at, err := pushers.Flagged(ctx, m.DB)
		if err != nil {
			return err
		}
		rec.Count = int64(len(users))
		if at == 0 {
			return m.answerOnce(ctx, p, rec, "Pushers have not been checked yet (the check runs at start and every homeserver.pusher_check_interval).")
		}
		return m.answerOnce(ctx, p, rec, pushers.Report(users))
	case "holds":
		holds, err := expiry.StandingHolds(ctx, m.DB)
		if err != nil {
			return err
		}
		rec.Count = int64(len(holds))
		return m.answerOnce(ctx, p, rec, formatHolds(holds))
	case "wipe", "offboard":
		if cmd.Device != "" && !m.SingleDevice {
			rec.Outcome = audit.OutcomeFailure
			return m.answerOnce(ctx, p, rec, "this homeserver cannot sign out a single device. To end every session of the user, send the same !wipe without --device.")
		}
		w := sessions.Wipe{User: cmd.Target, Device: cmd.Device, Offboard: cmd.Name == "offboard", Scope: cmd.Scope, Reason: cmd.Reason,
			RequestedBy: keys.User(p.Sender), Guard: m.Guard}
		if !cmd.Since.IsZero() {
			w.Since = cmd.Since.UnixMilli()
		}
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			id, err := sessions.RequestWipeTx(ctx, tx, m.Chain, w)
			if err != nil {
				return "", 0, err
			}
			payload, _ := json.Marshal(reportPayload{WipeID: id, Room: p.Room, Admin: p.Sender})
			if err := appservice.Enqueue(ctx, m.DB, tx, now, appservice.JobSpec{Kind: JobWipeReport, DedupeKey: fmt.Sprintf("wipe-report:%d", id),
				Payload: payload, Delay: time.Second}); err != nil {
				return "", 0, err
			}
			what := "wipe"
			if w.Offboard {
				what = "offboarding"
			}
			return fmt.Sprintf("%s %d of %s started (redact: %s). I will report here when it is done.", what, id, cmd.Target, cmd.Scope), id, nil
		})
	case "page":
		job, ref := pager.CommandPage(p.Room, p.EventID, p.Sender, cmd.Target, policy.PagePriority(cmd.Priority))
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			if err := appservice.Enqueue(ctx, m.DB, tx, now, job); err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("Paging %s (%s), ref %s. What becomes of the page is reported here.", cmd.Target, cmd.Priority, ref), 0, nil
		})
	case "whois":
		e, err := identity.LookupClinician(ctx, m.DB, cmd.Target)
		if err != nil {
			return err
		}
		return m.answerOnce(ctx, p, rec, Whois(cmd.Target, e, now))
	case "roster":
		list, err := identity.ListRoster(ctx, m.DB)
		if err != nil {
			return err
		}
		rec.Count = int64(len(list))
		return m.answerOnce(ctx, p, rec, formatRoster(list, now))
	case "verify":
		c := roster.Clinician{UserID: cmd.Target, NPI: cmd.NPI, Role: cmd.Role, Department: cmd.Department, LicenceExpires: cmd.LicenceExpires,
			VerifiedBy: "admin " + p.Sender}
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			if err := identity.VerifyTx(ctx, tx, m.Chain, c, identity.SourceAdmin, keys.User(p.Sender)); err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("%s is now a verified %s.", cmd.Target, cmd.Role), 0, nil
		})
	case "revoke":
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			if err := identity.RevokeTx(ctx, tx, m.Chain, cmd.Target, cmd.Reason, keys.User(p.Sender)); err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("%s is no longer verified; they are removed from rooms limited to verified clinicians within a minute.", cmd.Target), 0, nil
		})
	case "hold":
		room, user := "", cmd.Target
		if isRoomID(cmd.Target) {
			room, user = cmd.Target, ""
		}
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			id, err := expiry.PlaceHoldTx(ctx, tx, m.Chain, room, user, cmd.Reason, keys.User(p.Sender))
			if err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("hold %d placed on %s: nothing of it expires until it is released (!release %d).", id, cmd.Target, id), id, nil
		})
	case "release":
		return m.settle(ctx, p, cmd.Name, rec, "", 0, func(tx *sql.Tx) (string, int64, error) {
			if err := expiry.ReleaseHoldTx(ctx, tx, m.Chain, cmd.ID, keys.User(p.Sender)); err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("hold %d released; what it kept expires as policy says.", cmd.ID), cmd.ID, nil
		})
	}
	return appservice.Permanent(fmt.Errorf("unhandled command %q", cmd.Name))
}

// settle records a command that changes something (or a refusal) once: its
// admin_command row, the change itself (act, which also audits what it did)
// and the admin.command record commit together, then the reply goes out. If
// act fails for a reason the admin can fix, the failure is the reply.
func (m *Room) settle(ctx context.Context, p appservice.CommandPayload, name string, rec *audit.Record, reply string, ref int64,
	act func(tx *sql.Tx) (string, int64, error)) error {
	err := m.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if act != nil {
			var err error
			if reply, ref, err = act(tx); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO admin_command (event_id, command, outcome, ref_id, reply, at) VALUES ($1, $2, $3, $4, $5, $6)`,
			p.EventID, name, rec.Outcome, ref, reply, m.Chain.Now().UnixMilli()); err != nil {
			return err
		}
		rec.JobID = ref
		return m.Chain.Append(ctx, tx, rec)
	})
	if act != nil && appservice.IsInvalid(err) {
		rec.Outcome = audit.OutcomeFailure
		return m.answerOnce(ctx, p, rec, err.Error())
	}
	if err != nil {
		return err
	}
	return m.answer(ctx, p, reply)
}

// answerOnce audits a command that changed nothing and answers it. A retry
// (the reply failed) audits it again: reads are cheap to record twice, and
// never to lose.
func (m *Room) answerOnce(ctx context.Context, p appservice.CommandPayload, rec *audit.Record, reply string) error {
	if err := appservice.RecordCommand(ctx, m.DB, m.Chain, rec, nil); err != nil {
		return err
	}
	return m.answer(ctx, p, reply)
}

func (m *Room) answer(ctx context.Context, p appservice.CommandPayload, text string) error {
	return m.Bot.SendNotice(ctx, p.Room, "", p.Sender, text, "cmd-"+p.EventID)
}

func (m *Room) handleReport(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[reportPayload](j)
	if err != nil {
		return err
	}
	w, err := sessions.LoadWipe(ctx, m.DB, p.WipeID)
	if err != nil {
		return err
	}
	if w.State != "done" && w.State != "failed" {
		return appservice.RetryLater(2*time.Second, fmt.Errorf("wipe %d is at %s", w.ID, w.State))
	}
	return m.Bot.SendNotice(ctx, p.Room, "", p.Admin, WipeSummary(w), fmt.Sprintf("wipe-report-%d", w.ID))
}

// WipeSummary is how a finished wipe is reported to admins.
func WipeSummary(w sessions.Wipe) string {
	if w.State == "failed" {
		return fmt.Sprintf("wipe %d of %s FAILED: %s. Sessions revoked: %d, messages redacted: %d.", w.ID, w.User, w.LastError, w.Revoked, w.Redacted)
	}
	s := fmt.Sprintf("wipe %d of %s done. Sessions revoked: %d, messages redacted: %d", w.ID, w.User, w.Revoked, w.Redacted)
	if w.Offboard {
		s += fmt.Sprintf(", rooms left: %d", w.Left)
	}
	if w.ConfirmedAt > 0 {
		s += ", confirmed at " + time.UnixMilli(w.ConfirmedAt).UTC().Format(time.RFC3339)
	}
	if w.Held > 0 {
		s += fmt.Sprintf(". %d messages were left: a legal hold binds them", w.Held)
	}
	return s + "."
}

func formatDevices(user string, devs []homeserver.Device) string {
	if len(devs) == 0 {
		return user + " has no sessions."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s has %d session(s):", user, len(devs))
	for _, d := range devs {
		fmt.Fprintf(&b, "\n%s — last seen %s — cross-signed: %s", d.ID, d.Seen(), d.Trust())
		if d.DisplayName != "" {
			fmt.Fprintf(&b, " — %q", d.DisplayName)
		}
	}
	return b.String()
}

func formatHolds(holds []expiry.Hold) string {
	if len(holds) == 0 {
		return "no legal holds stand."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d standing hold(s):", len(holds))
	for _, h := range holds {
		on := h.Room
		if on == "" {
			on = h.User
		}
		fmt.Fprintf(&b, "\n%d — %s — since %s — %s", h.ID, on, time.UnixMilli(h.PlacedAt).UTC().Format(time.RFC3339), h.Reason)
	}
	return b.String()
}

// Whois describes someone's verification for admins.
func Whois(user string, e *identity.RosterEntry, now time.Time) string {
	if e == nil {
		return user + " is not on the verified clinician roster."
	}
	s := fmt.Sprintf("%s: %s", user, e.Role)
	if e.Department != "" {
		s += ", " + e.Department
	}
	s += fmt.Sprintf("; NPI %s; verified by %s on %s (%s)", e.NPI, e.VerifiedBy, e.VerifiedAt.Format("2006-01-02"), e.Source)
	switch {
	case e.Revoked():
		s += fmt.Sprintf("; REVOKED on %s by %s: %s", time.UnixMilli(e.RevokedAt).UTC().Format("2006-01-02"), e.RevokedBy, e.RevokeReason)
	case !e.Valid(now):
		s += fmt.Sprintf("; licence EXPIRED on %s", e.LicenceExpires.Format("2006-01-02"))
	case !e.LicenceExpires.IsZero():
		s += fmt.Sprintf("; licence valid until %s", e.LicenceExpires.Format("2006-01-02"))
	default:
		s += "; no licence expiry on record"
	}
	return s + "."
}

// rosterShown is how many roster entries a reply lists; the rest are counted.
const rosterShown = 50

func formatRoster(list []identity.RosterEntry, now time.Time) string {
	var b strings.Builder
	valid := 0
	for i := range list {
		if list[i].Verified(now) {
			valid++
		}
	}
	fmt.Fprintf(&b, "%d verified clinician(s) (%d entries):", valid, len(list))
	for i := range list {
		if i == rosterShown {
			fmt.Fprintf(&b, "\n… and %d more (matrix-hipaa roster list shows all)", len(list)-rosterShown)
			break
		}
		e := &list[i]
		status := ""
		switch {
		case e.Revoked():
			status = " — revoked"
		case !e.Valid(now):
			status = " — licence expired"
		}
		fmt.Fprintf(&b, "\n%s — %s", e.UserID, e.Role)
		if e.Department != "" {
			fmt.Fprintf(&b, " (%s)", e.Department)
		}
		b.WriteString(status)
	}
	return b.String()
}

// pseudonymOf is the audit pseudonym of a command's target.
func pseudonymOf(keys *audit.Keys, target string) string {
	if isRoomID(target) {
		return keys.Room(target)
	}
	return keys.User(target)
}
