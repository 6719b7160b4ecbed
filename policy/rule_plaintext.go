package policy

import (
	"encoding/json"
	"slices"
	"unicode"
)

// plaintextRule: in a room where encryption is required, an event sent
// without encryption is redacted (plaintext: redact) or answered with a
// warning (plaintext: warn). The sender is told why either way.
//
// Plaintext is any message event that is not m.room.encrypted or
// m.room.redaction: a poll, a location, a reaction with a text key or a
// custom type carries words just as m.room.message does, and a client or a
// member choosing an unusual type must not get past the rule. Types the
// policy names in plaintext_allowed_types are let through, and so is a
// reaction whose key is an emoji: Element sends reactions unencrypted even
// in encrypted rooms (the server aggregates them), and an emoji carries no
// record of anyone's health.
type plaintextRule struct{}

func (plaintextRule) Name() string { return "plaintext" }

const (
	reasonPlaintextRedacted = "This room requires end-to-end encryption; an unencrypted message was removed."
	reasonPlaintextWarned   = "This room requires end-to-end encryption; please send messages from a client with encryption on."
)

func (r plaintextRule) Check(c *Context) []Action {
	e := c.Event
	if e.StateKey != nil || !hasContent(e.Content) || !IsPlaintext(e.Type, e.Content, c.Settings.PlaintextAllowedTypes) {
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

// IsPlaintext reports whether a message event (not state) of this type and
// content is unencrypted content in the sense of the plaintext rule.
func IsPlaintext(eventType string, content json.RawMessage, allowed []string) bool {
	switch {
	case eventType == "m.room.encrypted" || eventType == "m.room.redaction":
		return false
	case slices.Contains(allowed, eventType):
		return false
	case eventType == "m.reaction":
		var c struct {
			Rel struct {
				Key string `json:"key"`
			} `json:"m.relates_to"`
		}
		if json.Unmarshal(content, &c) == nil && IsEmoji(c.Rel.Key) {
			return false
		}
	}
	return true
}

// IsEmoji reports whether s is one emoji sequence at most a few code points
// long: symbols, their modifiers, joiners, variation selectors, flags and
// tags, and a digit, # or * only as the base of a keycap. No letters, no
// words.
func IsEmoji(s string) bool {
	rs := []rune(s)
	if len(rs) == 0 || len(rs) > 16 {
		return false
	}
	for i, r := range rs {
		switch {
		case r == 0x200D, r >= 0xFE00 && r <= 0xFE0F, r == 0x20E3, r >= 0xE0020 && r <= 0xE007F:
		case unicode.Is(unicode.So, r) || unicode.Is(unicode.Sk, r):
		case (r >= '0' && r <= '9') || r == '#' || r == '*':
			// A keycap: the character, perhaps FE0F, then U+20E3.
			j := i + 1
			if j < len(rs) && rs[j] == 0xFE0F {
				j++
			}
			if j >= len(rs) || rs[j] != 0x20E3 {
				return false
			}
		default:
			return false
		}
	}
	return true
}
