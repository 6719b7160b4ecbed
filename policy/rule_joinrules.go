package policy

// stateUndoRule undoes a room setting that policy forbids: when the state
// event Type sets Field to Bad while the knob says forbid, the setting is put
// back to Safe, acting as whoever changed it (they had the power to).
type stateUndoRule struct {
	name      string
	eventType string
	field     string
	bad       string
	safe      string
	action    ActionKind
	knob      func(Effective) Permission
	reason    string
}

func (r stateUndoRule) Name() string { return r.name }

func (r stateUndoRule) Check(c *Context) []Action {
	e := c.Event
	if r.knob(c.Settings) != Forbid || e.Type != r.eventType || e.StateKey == nil || *e.StateKey != "" {
		return nil
	}
	if contentField(e.Content, r.field) != r.bad {
		return nil
	}
	return []Action{{Kind: r.action, Rule: r.name, EventID: e.ID, ActAs: e.Sender, Value: r.safe, Reason: r.reason}}
}

// joinRuleRule: where public rooms are forbidden, a room made public
// (joinable by anyone on any server) is set back to invite-only.
var joinRuleRule = stateUndoRule{
	name: "public_rooms", eventType: "m.room.join_rules", field: "join_rule", bad: "public", safe: "invite",
	action: ActSetJoinRule, knob: func(e Effective) Permission { return e.PublicRooms },
	reason: "Rooms here may not be public; this one was set back to invite-only.",
}

// guestAccessRule: where guest access is forbidden, enabling it is undone.
var guestAccessRule = stateUndoRule{
	name: "guest_access", eventType: "m.room.guest_access", field: "guest_access", bad: "can_join", safe: "forbidden",
	action: ActSetGuestAccess, knob: func(e Effective) Permission { return e.GuestAccess },
	reason: "Guests may not join rooms here; guest access was turned off.",
}
