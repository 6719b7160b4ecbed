package policy

// joinRuleRule: where public rooms are forbidden, a room made public
// (joinable by anyone on any server) is set back to invite-only, as whoever
// made it public (they had the power to).
type joinRuleRule struct{}

func (joinRuleRule) Name() string { return "public_rooms" }

func (r joinRuleRule) Check(c *Context) []Action {
	e := c.Event
	if c.Settings.PublicRooms != Forbid || e.Type != "m.room.join_rules" || e.StateKey == nil || *e.StateKey != "" {
		return nil
	}
	if contentField(e.Content, "join_rule") != "public" {
		return nil
	}
	return []Action{{Kind: ActSetJoinRule, Rule: r.Name(), EventID: e.ID, ActAs: e.Sender, Value: "invite",
		Reason: "Rooms here may not be public; this one was set back to invite-only."}}
}

// guestAccessRule: where guest access is forbidden, enabling it is undone.
type guestAccessRule struct{}

func (guestAccessRule) Name() string { return "guest_access" }

func (r guestAccessRule) Check(c *Context) []Action {
	e := c.Event
	if c.Settings.GuestAccess != Forbid || e.Type != "m.room.guest_access" || e.StateKey == nil || *e.StateKey != "" {
		return nil
	}
	if contentField(e.Content, "guest_access") != "can_join" {
		return nil
	}
	return []Action{{Kind: ActSetGuestAccess, Rule: r.Name(), EventID: e.ID, ActAs: e.Sender, Value: "forbidden",
		Reason: "Guests may not join rooms here; guest access was turned off."}}
}
