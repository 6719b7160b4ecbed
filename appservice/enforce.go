package appservice

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// PolicyDecider runs the policy's rules on each event and turns their actions
// into durable jobs, each with a policy.decision audit record. In dry-run the
// jobs are marked so the runner only audits what it would have done.
type PolicyDecider struct {
	Policy *PolicyHolder
	Bot    string
	Keys   *audit.Keys
}

// actionPayload is a job's instructions. It holds IDs and the rule's fixed
// reason, never event content.
type actionPayload struct {
	Room    string `json:"room"`
	EventID string `json:"event_id"`
	ActAs   string `json:"act_as,omitempty"`
	Value   string `json:"value,omitempty"`
	Reason  string `json:"reason"`
}

func (d *PolicyDecider) Decide(ev *Event, room *RoomInfo) Decision {
	// Most traffic is ciphertext, which no rule ever acts on.
	if ev.Type == "m.room.encrypted" && ev.StateKey == nil {
		return Decision{}
	}
	pol := d.Policy.Current()
	settings := pol.For(room.PolicyRoom())
	actions := policy.Decide(&policy.Context{
		Event:    policy.Event{ID: ev.ID, Type: ev.Type, Sender: ev.Sender, StateKey: ev.StateKey, Content: eventContent(ev)},
		Room:     room.State,
		Settings: settings,
		Bot:      d.Bot,
	})
	var dec Decision
	for _, a := range actions {
		if a.Kind == policy.ActNotice {
			// Notices go out through the E2EE bot, which is not part of this
			// release yet; the redaction itself still happens.
			continue
		}
		job, rec := jobFor(a, ev.RoomID, fmt.Sprintf("%s:%s:%s", a.Kind, a.Rule, a.EventID), ev.Type, settings.DryRun, pol.Hash, d.Keys)
		dec.Jobs = append(dec.Jobs, job)
		dec.Records = append(dec.Records, rec)
	}
	return dec
}

// jobFor turns a policy action in a room into its durable job and the
// policy.decision record that goes with it (outcome "would" in dry-run).
func jobFor(a policy.Action, room, dedupeKey, eventType string, dryRun bool, policyHash string, keys *audit.Keys) (JobSpec, *audit.Record) {
	payload, _ := json.Marshal(actionPayload{Room: room, EventID: a.EventID, ActAs: a.ActAs, Value: a.Value, Reason: a.Reason})
	outcome := audit.OutcomeSuccess
	if dryRun {
		outcome = audit.OutcomeWould
	}
	return JobSpec{Kind: string(a.Kind), DedupeKey: dedupeKey, Payload: payload, DryRun: dryRun},
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

// RegisterEnforcement gives the runner a handler for every action kind.
func RegisterEnforcement(r *Runner, hs *homeserver.Client) {
	decode := func(j *Job) (actionPayload, error) {
		var p actionPayload
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			return p, Permanent(fmt.Errorf("bad job payload: %w", err))
		}
		return p, nil
	}
	r.Handle(string(policy.ActRedact), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		// A fixed transaction ID per job makes a retried redaction a no-op.
		return hs.Redact(ctx, p.ActAs, p.Room, p.EventID, p.Reason, fmt.Sprintf("hipaa-job-%d", j.ID))
	})
	r.Handle(string(policy.ActEnableEncryption), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		return hs.SendState(ctx, p.ActAs, p.Room, "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"})
	})
	r.Handle(string(policy.ActSetJoinRule), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		return hs.SendState(ctx, p.ActAs, p.Room, "m.room.join_rules", "", map[string]any{"join_rule": p.Value})
	})
	r.Handle(string(policy.ActSetGuestAccess), func(ctx context.Context, j *Job) error {
		p, err := decode(j)
		if err != nil {
			return err
		}
		return hs.SendState(ctx, p.ActAs, p.Room, "m.room.guest_access", "", map[string]any{"guest_access": p.Value})
	})
}
