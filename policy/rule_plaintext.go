package policy

// plaintextRule: in a room where encryption is required, a message sent
// without encryption is redacted (plaintext: redact) or answered with a
// warning (plaintext: warn). The sender is told why either way.
type plaintextRule struct{}

func (plaintextRule) Name() string { return "plaintext" }

const (
	reasonPlaintextRedacted = "This room requires end-to-end encryption; an unencrypted message was removed."
	reasonPlaintextWarned   = "This room requires end-to-end encryption; please send messages from a client with encryption on."
)

func (r plaintextRule) Check(c *Context) []Action {
	e := c.Event
	if e.StateKey != nil || (e.Type != "m.room.message" && e.Type != "m.sticker") || !hasContent(e.Content) {
		return nil
	}
	if c.Settings.Encryption != EncryptionRequired {
		return nil
	}
	switch c.Settings.Plaintext {
	case PlaintextRedact:
		return []Action{
			{Kind: ActRedact, Rule: r.Name(), EventID: e.ID, ActAs: e.Sender, Reason: reasonPlaintextRedacted},
			{Kind: ActNotice, Rule: r.Name(), EventID: e.ID, Target: e.Sender, ActAs: c.Room.Creator, Reason: reasonPlaintextRedacted},
		}
	case PlaintextWarn:
		return []Action{{Kind: ActNotice, Rule: r.Name(), EventID: e.ID, Target: e.Sender, ActAs: c.Room.Creator, Reason: reasonPlaintextWarned}}
	}
	return nil
}
