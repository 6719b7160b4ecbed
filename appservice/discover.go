package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// JobDiscoverRoom learns the current state of a room the service first sees
// mid-life (it existed before the service was installed, or the service
// missed its creation), so that policy can enrol it like a new room.
const JobDiscoverRoom = "discover_room"

// discoverPayload is an ActionPayload, and for a room found in the
// homeserver's room list the server admin whose admin API reads its state.
type discoverPayload struct {
	ActionPayload
	Admin string `json:"admin,omitempty"`
}

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
		p, err := DecodePayload[discoverPayload](j)
		if err != nil {
			return err
		}
		// A room found in the homeserver's room list has no member who
		// revealed it: its state is read through the admin API.
		var state []json.RawMessage
		if p.ActAs == "" {
			state, err = hs.AdminRoomState(ctx, p.Admin, p.Room)
		} else {
			state, err = hs.RoomState(ctx, p.ActAs, p.Room)
		}
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

// DiscoverListedRooms queues discovery of every room the homeserver lists
// (Synapse's admin room list) that the service has never heard of: rooms
// created before it was installed that have seen no event since. Each room
// is queued under the same key as discovery by event, so once only.
func DiscoverListedRooms(ctx context.Context, db *store.DB, chain *audit.Chain, hs *homeserver.Client, admin string, now time.Time) (int, error) {
	listed, err := hs.AllRooms(ctx, admin)
	if err != nil {
		return 0, err
	}
	known := map[string]bool{}
	rows, err := db.R.QueryContext(ctx, `SELECT room_id FROM room_state`)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			rows.Close()
			return 0, err
		}
		known[r] = true
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, err
	}
	var specs []JobSpec
	var recs []*audit.Record
	for _, room := range listed {
		if known[room] || auditableID(room, '!') == "" {
			continue
		}
		payload, _ := json.Marshal(discoverPayload{ActionPayload: ActionPayload{Room: room, Reason: "room listed by the homeserver"}, Admin: admin})
		specs = append(specs, JobSpec{Kind: JobDiscoverRoom, DedupeKey: "discover:" + room, Payload: payload})
		recs = append(recs, &audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, Actor: chain.Keys().User(admin),
			Room: chain.Keys().Room(room), Action: JobDiscoverRoom, Detail: "room-listed"})
	}
	if len(specs) == 0 {
		return 0, nil
	}
	// Rooms already queued (by an event meanwhile, or an earlier listing)
	// are skipped by their dedupe key; the records say what was looked at.
	err = db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if err := Enqueue(ctx, db, tx, now, specs...); err != nil {
			return err
		}
		return chain.Append(ctx, tx, recs...)
	})
	return len(specs), err
}

// discoverListedRoomsLoop lists the homeserver's rooms at start and then
// every interval (Synapse only).
func (s *Service) discoverListedRoomsLoop(ctx context.Context, every time.Duration) {
	for {
		// The bot must be a server admin; its session must be up for the
		// state it reads to be of use, so wait for it first.
		select {
		case <-ctx.Done():
			return
		case <-s.Bot.Ready():
		}
		n, err := DiscoverListedRooms(ctx, s.DB, s.Chain, s.HS, s.Config.BotMXID(), s.now())
		if err != nil && ctx.Err() == nil {
			s.Log.Warn().Str("error", SafeError(err)).Msg("could not list the homeserver's rooms; trying again next interval")
		} else if n > 0 {
			s.Log.Info().Int("rooms", n).Msg("rooms listed by the homeserver queued for discovery")
			s.Runner.Wake()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
