package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// PolicyDecider runs the policy's rules on each event and turns their actions
// into durable jobs, each with a policy.decision audit record. In dry-run the
// jobs are marked so the runner only audits what it would have done.
type PolicyDecider struct {
	Policy *PolicyHolder
	Bot    string
	Keys   *audit.Keys
	// ManagementRoom (admin.room), if set: every message in it becomes an
	// admin_command job, which reads it and acts if it is a command.
	ManagementRoom string
	// Links are the rooms' confirmed aliases and spaces (nil: none).
	Links *Links
	// deciders are the features' say on an event (see OnEvent).
	deciders []EventDecider
}

// EventDecider is a feature's say on one event, given the room's state as of
// it and the settings policy gives the room: jobs to add to the dispatcher's
// transaction. It must be pure, like Decide. It is not asked about
// ciphertext.
type EventDecider func(ev *Event, room *RoomInfo, settings policy.Effective, dec *Decision)

// OnEvent adds a feature's decider; deciders run in the order added.
func (d *PolicyDecider) OnEvent(f EventDecider) { d.deciders = append(d.deciders, f) }

// Add puts a job in the decision.
func (d *Decision) Add(job JobSpec) { d.Jobs = append(d.Jobs, job) }

// JobAdminCommand reads one message of the management room and runs the
// command in it (package admin handles it).
const JobAdminCommand = "admin_command"

// CommandPayload is an admin_command job's instructions: which message.
type CommandPayload struct {
	Room    string `json:"room"`
	EventID string `json:"event_id"`
	Sender  string `json:"sender"`
}

// actionPayload is a job's instructions. It holds IDs and the rule's fixed
// reason, never event content.
type actionPayload struct {
	Room    string `json:"room"`
	EventID string `json:"event_id"`
	ActAs   string `json:"act_as,omitempty"`
	Target  string `json:"target,omitempty"`
	Value   string `json:"value,omitempty"`
	Reason  string `json:"reason"`
	// Since is the triggering event's receipt time (unix ms), where a job
	// must tell what came after it.
	Since int64 `json:"since,omitempty"`
}

// botJoinDelay is how long after a room's enrolment the bot joins it.
const botJoinDelay = 2 * time.Second

// noticeWindow is how often one person is told the same thing in one room:
// a client that keeps sending plaintext has every message redacted, but its
// user gets one notice per window, not one per message.
const noticeWindow = 10 * time.Minute

func (d *PolicyDecider) Decide(ev *Event, room *RoomInfo) Decision {
	var dec Decision
	if room.Fresh() && !(ev.Type == "m.room.create" && ev.StateKey != nil) {
		// A room that existed before the service (or that it missed): learn
		// its state, as a member, so policy can enrol it.
		dec.add(discoveryJob(ev, d.Keys))
	}
	if ev.RoomID == d.ManagementRoom && d.ManagementRoom != "" && ev.StateKey == nil && ev.Sender != d.Bot &&
		(ev.Type == "m.room.message" || ev.Type == "m.room.encrypted") {
		// Audited by the handler, once it knows what the message asked.
		payload, _ := json.Marshal(CommandPayload{Room: ev.RoomID, EventID: ev.ID, Sender: ev.Sender})
		dec.Jobs = append(dec.Jobs, JobSpec{Kind: JobAdminCommand, DedupeKey: "admin_command:" + ev.ID, Payload: payload})
	}
	if job, ok := linkJob(ev, room); ok && ev.Sender != d.Bot {
		dec.Jobs = append(dec.Jobs, job)
	}
	pol := d.Policy.Current()
	// Most traffic is ciphertext, which no rule ever acts on; it matters only
	// where messages can expire.
	cipher := ev.Type == "m.room.encrypted" && ev.StateKey == nil
	if cipher && !pol.MayExpire() && room.State.MaxLifetime == 0 {
		return dec
	}
	settings := pol.For(room.PolicyRoom(d.Links.Of(room.ID)))
	if exp, ok := expiryFor(ev, settings, room.State); ok {
		dec.Expiries = append(dec.Expiries, exp)
	}
	if cipher {
		return dec
	}
	for _, f := range d.deciders {
		f(ev, room, settings, &dec)
	}
	if job, ok := retentionChangeJob(ev, room, settings); ok {
		dec.Jobs = append(dec.Jobs, job)
	}
	if a, ok := lifetimeNotice(ev, room, settings); ok {
		dec.add(jobFor(a, ev.RoomID, "notice:retention:"+ev.ID, ev.Type, settings.DryRun, pol.Hash, d.Keys))
	}
	actions := policy.Decide(&policy.Context{
		Event:    policy.Event{ID: ev.ID, Type: ev.Type, Sender: ev.Sender, StateKey: ev.StateKey, Content: eventContent(ev)},
		Room:     room.State,
		Settings: settings,
		Bot:      d.Bot,
	})
	for _, a := range actions {
		a = d.actorFor(a)
		key := fmt.Sprintf("%s:%s:%s", a.Kind, a.Rule, a.EventID)
		if a.Kind == policy.ActQuarantineMedia {
			key += ":" + a.Value // a file and its thumbnail
		}
		if a.Kind == policy.ActNotice {
			// The window comes from when the service received the event: the
			// same for a replayed decision, and not the event's own
			// origin_server_ts, which its (perhaps remote) server chooses and
			// could vary to get one notice per message.
			bucket := ev.ReceivedAt / noticeWindow.Milliseconds()
			key = fmt.Sprintf("%s:%s:%s:%s:%d", a.Kind, a.Rule, ev.RoomID, a.Target, bucket)
		}
		dec.add(jobFor(a, ev.RoomID, key, ev.Type, settings.DryRun, pol.Hash, d.Keys))
	}
	return dec
}

// actorFor keeps actions from being queued as someone the service cannot act
// as. The application service acts only as local users: an action as a
// remote sender or creator would fail on every retry. The bot acts instead
// where it has the power (else the job fails once, and the room is listed as
// a problem); a notice's inviter is dropped, so a bot not yet in the room
// fails once rather than retrying.
func (d *PolicyDecider) actorFor(a policy.Action) policy.Action {
	if a.ActAs == "" || SameServer(a.ActAs, d.Bot) {
		return a
	}
	switch a.Kind {
	case policy.ActNotice, policy.ActBotJoin:
		a.ActAs = ""
	default:
		a.ActAs = d.Bot
	}
	return a
}

// SameServer reports whether two Matrix IDs are on one server.
func SameServer(a, b string) bool {
	sa := ServerOf(a)
	return sa != "" && sa == ServerOf(b)
}

// ServerOf is a Matrix ID's server name ("" if it has none).
func ServerOf(mxid string) string {
	_, s, _ := strings.Cut(mxid, ":")
	return s
}

// jobFor turns a policy action in a room into its durable job and the
// policy.decision record that goes with it (outcome "would" in dry-run).
func jobFor(a policy.Action, room, dedupeKey, eventType string, dryRun bool, policyHash string, keys *audit.Keys) (JobSpec, *audit.Record) {
	payload, _ := json.Marshal(actionPayload{Room: room, EventID: a.EventID, ActAs: a.ActAs, Target: a.Target, Value: a.Value, Reason: a.Reason})
	outcome := audit.OutcomeSuccess
	if dryRun {
		outcome = audit.OutcomeWould
	}
	var delay time.Duration
	if a.Kind == policy.ActBotJoin {
		// Not urgent, and a room handles one event at a time: the bot's
		// invite and join wait until the room's own fixes have gone in.
		delay = botJoinDelay
	}
	return JobSpec{Kind: string(a.Kind), DedupeKey: dedupeKey, Payload: payload, DryRun: dryRun, Delay: delay},
		&audit.Record{
			Type: audit.TypePolicyDecision, Outcome: outcome, Actor: keys.User(a.ActAs), Room: keys.Room(room),
			EventID: a.EventID, EventType: eventType, Action: string(a.Kind), Detail: a.Rule, PolicyVersion: policyHash,
		}
}

// eventContent is the content object of the stored event JSON.
func eventContent(ev *Event) json.RawMessage {
	var e struct {
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(ev.Raw, &e) != nil {
		return nil
	}
	return e.Content
}

// RegisterEnforcement gives the runner a handler for every action kind, and
// keeps the room_problem and room_bot tables in step with what happened.
// b may be nil, in which case bot_join and notice jobs fail for good.
// software (homeserver.software) decides which admin APIs exist.
func RegisterEnforcement(r *Runner, hs *homeserver.Client, b *bot.Bot, software, botUser string) {
	decode := DecodePayload[actionPayload]
	needBot := func() error {
		if b == nil {
			return Permanent(errors.New("no E2EE bot configured"))
		}
		return nil
	}
	r.Handle(string(policy.ActRedact), redactHandler(hs, botUser))
	// Room settings are set as the creator (who has the power in rooms
	// people create); if the creator may not (left, or demoted), as the bot,
	// which may have been given the power.
	setState := func(eventType, key string, content func(p actionPayload) map[string]any) Handler {
		return func(ctx context.Context, j *Job) error {
			p, err := decode(j)
			if err != nil {
				return err
			}
			if safe, ok := safeStateValues[j.Kind]; ok && p.Value != safe {
				// A room fix only ever tightens: whatever queued this, it
				// does not open a room.
				return Permanent(fmt.Errorf("%s to %q refused: the only value a fix sets is %q", j.Kind, p.Value, safe))
			}
			want := content(p)
			actor := p.ActAs
			err = hs.SendState(ctx, actor, p.Room, eventType, key, want)
			if errors.Is(err, mautrix.MForbidden) && b != nil && j.Attempts > 0 {
				if berr := b.SendState(ctx, p.Room, eventType, key, want); berr == nil {
					actor, err = botUser, nil
				}
			}
			if actor == botUser && errors.Is(err, mautrix.MForbidden) {
				// Queued as the bot (the creator is on another server) and
				// the bot lacks the power: listed as a problem, not retried.
				return Permanent(err)
			}
			if err != nil {
				return err
			}
			// A homeserver may accept an event and then soft-fail it (Dendrite
			// does when the sender's power changed in between): only the
			// room's state says whether the change took.
			got, err := hs.StateContent(ctx, actor, p.Room, eventType, key)
			if err != nil && !errors.Is(err, mautrix.MNotFound) {
				return err
			}
			for k, v := range want {
				if got[k] != v {
					return fmt.Errorf("the homeserver accepted %s but the room's state does not have it (soft-failed)", eventType)
				}
			}
			return nil
		}
	}
	r.Handle(string(policy.ActEnableEncryption), setState("m.room.encryption", "", func(actionPayload) map[string]any {
		return map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}
	}))
	r.Handle(string(policy.ActSetJoinRule), setState("m.room.join_rules", "", func(p actionPayload) map[string]any {
		return map[string]any{"join_rule": p.Value}
	}))
	r.Handle(string(policy.ActSetGuestAccess), setState("m.room.guest_access", "", func(p actionPayload) map[string]any {
		return map[string]any{"guest_access": p.Value}
	}))
	r.Handle(string(policy.ActQuarantineMedia), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		err = hs.QuarantineMedia(ctx, software, botUser, p.Value)
		if errors.Is(err, homeserver.ErrNoQuarantine) {
			return Permanent(err)
		}
		return err
	})
	r.Handle(string(policy.ActBotJoin), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if err := needBot(); err != nil {
			return err
		}
		m, err := b.EnsureJoined(ctx, p.Room, p.ActAs)
		if err != nil {
			return waitForBot(err)
		}
		return recordStanding(ctx, r.db, p.Room, m, r.now())
	})
	r.Handle(string(policy.ActNotice), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		if err := needBot(); err != nil {
			return err
		}
		err = waitForBot(b.SendNotice(ctx, p.Room, p.ActAs, p.Target, p.Reason, fmt.Sprintf("hipaa-job-%d", j.ID)))
		if p.ActAs == "" && errors.Is(err, mautrix.MForbidden) {
			return Permanent(fmt.Errorf("the bot is not in the room and no local member can invite it: %w", err))
		}
		return err
	})
	TrackProblems(r)
}

// safeStateValues are the only values the service's room fixes set.
var safeStateValues = map[string]string{string(policy.ActSetJoinRule): "invite", string(policy.ActSetGuestAccess): "forbidden"}

// TrackProblems keeps room_problem in step with job outcomes: an action that
// fails for good in a room is listed until the same action succeeds there.
func TrackProblems(r *Runner) {
	r.OnOutcome(func(ctx context.Context, tx *sql.Tx, j *Job, state, errText string, now time.Time) error {
		p, err := DecodePayload[actionPayload](j)
		if err != nil || p.Room == "" || j.DryRun {
			return nil
		}
		if state == "failed" {
			_, err = r.db.Exec(ctx, tx, upsertProblem, p.Room, j.Kind, errText, now.UnixMilli())
		} else {
			_, err = r.db.Exec(ctx, tx, `DELETE FROM room_problem WHERE room_id = $1 AND action = $2`, p.Room, j.Kind)
		}
		return err
	})
}

// redactHandler redacts the job's event as ActAs (its sender: anyone may
// redact their own events). A fixed transaction ID per job makes a retried
// redaction a no-op.
func redactHandler(hs *homeserver.Client, botUser string) Handler {
	return func(ctx context.Context, j *Job) error {
		p, err := DecodePayload[actionPayload](j)
		if err != nil {
			return err
		}
		err = hs.Redact(ctx, p.ActAs, p.Room, p.EventID, p.Reason, fmt.Sprintf("hipaa-job-%d", j.ID))
		if p.ActAs == botUser && errors.Is(err, mautrix.MForbidden) {
			// A remote sender's message, and the bot lacks the power: no
			// retry will change that; the room is listed as a problem.
			return Permanent(fmt.Errorf("the bot may not redact others' messages in this room: %w", err))
		}
		return err
	}
}

// waitForBot turns "the bot is still logging in" into a wait, not a failed attempt.
func waitForBot(err error) error {
	if errors.Is(err, bot.ErrNotReady) {
		return RetryLater(time.Second, err)
	}
	return err
}

const upsertProblem = `INSERT INTO room_problem (room_id, action, detail, since) VALUES ($1, $2, $3, $4)
ON CONFLICT (room_id, action) DO UPDATE SET detail = excluded.detail`

// recordStanding keeps the bot's power in a room, and what the room's
// settings need, for the rooms listing and the metric.
func recordStanding(ctx context.Context, db *store.DB, room string, m bot.Membership, now time.Time) error {
	return db.Tx(ctx, store.Deferred, func(tx *sql.Tx) error {
		_, err := db.Exec(ctx, tx, `INSERT INTO room_bot (room_id, power, needed, encrypted, updated_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (room_id) DO UPDATE SET power = excluded.power, needed = excluded.needed, encrypted = excluded.encrypted, updated_at = excluded.updated_at`,
			room, m.Power, m.Needed, m.Encrypted, now.UnixMilli())
		return err
	})
}
