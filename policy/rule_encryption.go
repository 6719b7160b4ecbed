package policy

// encryptionRule: a room that policy says must be encrypted gets
// m.room.encryption as soon as the room is created (or the service first sees
// it unencrypted), sent as the room's creator, who has the power to.
type encryptionRule struct{}

// ReasonEncryptionRequired is what people are told when a room is encrypted by policy.
const ReasonEncryptionRequired = "This room is required to be end-to-end encrypted."

func (encryptionRule) Name() string { return "encryption" }

func (r encryptionRule) Check(c *Context) []Action {
	if c.Settings.Encryption != EncryptionRequired || c.Room.Encrypted {
		return nil
	}
	if c.Event.Type != "m.room.create" || c.Event.StateKey == nil || *c.Event.StateKey != "" {
		return nil
	}
	return []Action{
		{Kind: ActEnableEncryption, Rule: r.Name(), EventID: c.Event.ID, ActAs: c.Event.Sender, Reason: ReasonEncryptionRequired},
		{Kind: ActBotJoin, Rule: r.Name(), EventID: c.Event.ID, ActAs: c.Event.Sender, Reason: ReasonEncryptionRequired},
	}
}
