package appservice

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
)

// JobDiscoverRoom learns the current state of a room the service first sees
// mid-life (it existed before the service was installed, or the service
// missed its creation), so that policy can enrol it like a new room.
const JobDiscoverRoom = "discover_room"

func discoveryJob(ev *Event, keys *audit.Keys) (JobSpec, *audit.Record) {
	payload, _ := json.Marshal(ActionPayload{Room: ev.RoomID, EventID: ev.ID, ActAs: ev.Sender, Reason: "room first seen mid-life"})
	// Reading state changes nothing, so it is not subject to dry-run; what
	// policy then decides about the room is.
	return JobSpec{Kind: JobDiscoverRoom, DedupeKey: "discover:" + ev.RoomID, Payload: payload},
		&audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, Actor: keys.User(ev.Sender), Room: keys.Room(ev.RoomID),
			EventID: ev.ID, EventType: ev.Type, Action: JobDiscoverRoom, Detail: "room-discovery"}
}

// RegisterDiscovery handles discover_room: the room's current state is read
// as the member whose event revealed it and stored in the inbox as if the
// homeserver had pushed it (each state event once, audited on arrival), so
// the dispatcher tracks the room and policy acts on it. m.room.create goes
// last, so the encryption rule sees whether the room is already encrypted.
func RegisterDiscovery(r *Runner, hs *homeserver.Client, in *Inbox) {
	r.Handle(JobDiscoverRoom, func(ctx context.Context, j *Job) error {
		p, err := DecodePayload[ActionPayload](j)
		if err != nil {
			return err
		}
		state, err := hs.RoomState(ctx, p.ActAs, p.Room)
		if err != nil {
			return err
		}
		var create json.RawMessage
		list := make([]json.RawMessage, 0, len(state))
		for _, raw := range state {
			var head struct {
				Type     string  `json:"type"`
				StateKey *string `json:"state_key"`
			}
			if json.Unmarshal(raw, &head) != nil {
				continue
			}
			raw = withRoomID(raw, p.Room)
			if head.Type == "m.room.create" && head.StateKey != nil && *head.StateKey == "" {
				create = raw
				continue
			}
			list = append(list, raw)
		}
		if create != nil {
			list = append(list, create)
		}
		body, err := json.Marshal(map[string]any{"events": list})
		if err != nil {
			return err
		}
		txn, err := ParseTransaction(body)
		if err != nil {
			return Permanent(fmt.Errorf("room state: %w", err))
		}
		_, err = in.StoreTransaction(ctx, fmt.Sprintf("discover-%d", j.ID), txn)
		return err
	})
}

// withRoomID gives a state event from /state the room_id it may leave out,
// so the inbox can route it.
func withRoomID(raw json.RawMessage, room string) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	if _, ok := m["room_id"]; ok {
		return raw
	}
	m["room_id"], _ = json.Marshal(room)
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}
