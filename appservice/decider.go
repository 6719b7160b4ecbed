package appservice

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// PolicyDecider is the dispatcher's Decider: the engine's own say on each
// event (a room to discover, a management-room command, a room link to
// verify), then each feature's (EventDecider), given the settings policy
// gives the room.
type PolicyDecider struct {
	Policy *PolicyHolder
	Bot    string
	Keys   *audit.Keys
	// ManagementRoom (admin.room), if set: every message in it becomes an
	// admin_command job, which reads it and acts if it is a command.
	ManagementRoom string
	// Links are the rooms' confirmed aliases and spaces (nil: none).
	Links *Links
	// deciders are the features', in the order added; cipher[i] is
	// deciders[i] as a CiphertextDecider, or nil.
	deciders []EventDecider
	cipher   []CiphertextDecider
}

// Use adds a feature's decider; deciders run in the order added.
func (d *PolicyDecider) Use(f EventDecider) {
	c, _ := f.(CiphertextDecider)
	d.deciders = append(d.deciders, f)
	d.cipher = append(d.cipher, c)
}

// JobAdminCommand reads one message of the management room and runs the
// command in it (package admin handles it).
const JobAdminCommand = "admin_command"

// CommandPayload is an admin_command job's instructions: which message.
type CommandPayload struct {
	Room    string `json:"room"`
	EventID string `json:"event_id"`
	Sender  string `json:"sender"`
}

// ActionPayload is a job's instructions. It holds IDs and the rule's fixed
// reason, never event content.
type ActionPayload struct {
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

func (d *PolicyDecider) Decide(ev *Event, room *RoomInfo) Decision {
	var dec Decision
	if room.Fresh() && !(ev.Type == "m.room.create" && ev.StateKey != nil) {
		// A room that existed before the service (or that it missed): learn
		// its state, as a member, so policy can enrol it.
		dec.AddRecorded(discoveryJob(ev, d.Keys))
	}
	if ev.RoomID == d.ManagementRoom && d.ManagementRoom != "" && ev.StateKey == nil && ev.Sender != d.Bot &&
		(ev.Type == "m.room.message" || ev.Type == "m.room.encrypted") {
		// Audited by the handler, once it knows what the message asked.
		payload, _ := json.Marshal(CommandPayload{Room: ev.RoomID, EventID: ev.ID, Sender: ev.Sender})
		dec.Add(JobSpec{Kind: JobAdminCommand, DedupeKey: "admin_command:" + ev.ID, Payload: payload})
	}
	if job, ok := linkJob(ev, room); ok && ev.Sender != d.Bot {
		dec.Add(job)
	}
	pol := d.Policy.Current()
	// Most traffic is ciphertext, which no rule ever reads: the room's
	// settings are resolved for it only where a feature asks to see it.
	cipher := ev.Type == "m.room.encrypted" && ev.StateKey == nil
	if cipher && !d.seesCiphertext(pol, room) {
		return dec
	}
	settings := pol.For(room.PolicyRoom(d.Links.Of(room.ID)))
	for i, f := range d.deciders {
		if cipher && (d.cipher[i] == nil || !d.cipher[i].SeesCiphertext(pol, room)) {
			continue
		}
		f.DecideEvent(ev, room, pol, settings, &dec)
	}
	return dec
}

func (d *PolicyDecider) seesCiphertext(pol *policy.Policy, room *RoomInfo) bool {
	for _, c := range d.cipher {
		if c != nil && c.SeesCiphertext(pol, room) {
			return true
		}
	}
	return false
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

// ActionJob turns a policy action in a room into its durable job and the
// policy.decision record that goes with it (outcome "would" in dry-run).
func ActionJob(a policy.Action, room, dedupeKey, eventType string, dryRun bool, policyHash string, keys *audit.Keys) (JobSpec, *audit.Record) {
	payload, _ := json.Marshal(ActionPayload{Room: room, EventID: a.EventID, ActAs: a.ActAs, Target: a.Target, Value: a.Value, Reason: a.Reason})
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

// ContentJSON is the content object of the stored event JSON.
func (e *Event) ContentJSON() json.RawMessage {
	var v struct {
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(e.Raw, &v) != nil {
		return nil
	}
	return v.Content
}
