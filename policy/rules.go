package policy

import (
	"encoding/json"
)

// Event is what the rules see of a Matrix event.
type Event struct {
	ID       string
	Type     string
	Sender   string
	StateKey *string
	Content  json.RawMessage
}

// RoomState is what the service knows of a room's current state.
type RoomState struct {
	Encrypted   bool   // has m.room.encryption
	JoinRule    string // public, invite, knock, restricted…
	GuestAccess string // can_join or forbidden
	Creator     string
	// MaxLifetime is the room's own m.room.retention max_lifetime (MSC1763),
	// in ms; 0 when unset.
	MaxLifetime int64
}

// Context is everything a rule may look at: no I/O, so a decision can be
// replayed after a crash and tested from a table.
type Context struct {
	Event    Event
	Room     RoomState
	Settings Effective
	// Bot is the service's own user: its events are never acted on.
	Bot string
}

// ActionKind names what should happen. The service turns each into a durable job.
type ActionKind string

const (
	// ActRedact redacts Event as ActAs (its sender: users may always redact
	// their own events, so no power level is needed).
	ActRedact ActionKind = "redact"
	// ActNotice tells the user Target, from the bot, why something was done.
	// ActAs is who may invite the bot if it is not in the room yet (the
	// room's creator), or empty.
	ActNotice ActionKind = "notice"
	// ActEnableEncryption sends m.room.encryption (m.megolm.v1.aes-sha2) as ActAs.
	ActEnableEncryption ActionKind = "enable_encryption"
	// ActBotJoin brings the bot into a room it enrols (invited by ActAs, the
	// creator), so it can speak there, encrypted, and report its standing.
	ActBotJoin ActionKind = "bot_join"
	// ActQuarantineMedia quarantines the media at Value (an mxc:// URI) on
	// the homeserver, where it offers that (Synapse's admin API); elsewhere
	// the job fails and the room lists the file as a problem.
	ActQuarantineMedia ActionKind = "quarantine_media"
	// ActSetJoinRule sets the join rule to Value as ActAs.
	ActSetJoinRule ActionKind = "set_join_rule"
	// ActSetGuestAccess sets guest access to Value as ActAs.
	ActSetGuestAccess ActionKind = "set_guest_access"
)

// Action is one thing a rule wants done. Reason is a fixed sentence from the
// rule (never text from the event), shown to people and safe to audit.
type Action struct {
	Kind    ActionKind
	Rule    string
	EventID string
	ActAs   string
	Target  string
	Value   string
	Reason  string
}

// Rule is one protection. Rules are pure: they read the context and return
// actions; the service applies them (or, in dry-run, audits them as "would").
type Rule interface {
	Name() string
	Check(c *Context) []Action
}

// Rules is every rule, in the order they are consulted.
var Rules = []Rule{
	plaintextRule{},
	attachmentsRule{},
	quarantineRule{},
	encryptionRule{},
	joinRuleRule,
	guestAccessRule,
}

// Decide runs every rule on one event.
func Decide(c *Context) []Action {
	if c.Event.Sender == c.Bot && c.Bot != "" {
		return nil // the service's own events, notices included
	}
	var out []Action
	for _, r := range Rules {
		out = append(out, r.Check(c)...)
	}
	return out
}

// contentField reads one top-level string field of the content, or "".
func contentField(raw json.RawMessage, key string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	var s string
	if json.Unmarshal(m[key], &s) != nil {
		return ""
	}
	return s
}

// hasContent reports whether content is a non-empty object (a redacted
// event's content is empty, and there is nothing left to act on).
func hasContent(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && len(m) > 0
}
