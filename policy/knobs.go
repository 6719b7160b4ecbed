package policy

import "gopkg.in/yaml.v3"

// Encryption says whether rooms must be end-to-end encrypted.
type Encryption string

const (
	EncryptionRequired Encryption = "required"
	EncryptionOptional Encryption = "optional"
)

func (v *Encryption) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(EncryptionRequired), string(EncryptionOptional))
	*v = Encryption(s)
	return err
}

// Plaintext says what happens to an unencrypted message in an enforced room.
type Plaintext string

const (
	PlaintextRedact Plaintext = "redact"
	PlaintextWarn   Plaintext = "warn"
	PlaintextAllow  Plaintext = "allow"
)

func (v *Plaintext) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(PlaintextRedact), string(PlaintextWarn), string(PlaintextAllow))
	*v = Plaintext(s)
	return err
}

// Attachments says whether unencrypted media (a plain url) is allowed.
type Attachments string

const (
	AttachmentsEncryptedOnly Attachments = "encrypted_only"
	AttachmentsAllow         Attachments = "allow"
)

func (v *Attachments) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(AttachmentsEncryptedOnly), string(AttachmentsAllow))
	*v = Attachments(s)
	return err
}

// Permission is forbid or allow, for public rooms and guest access.
type Permission string

const (
	Forbid Permission = "forbid"
	Allow  Permission = "allow"
)

func (v *Permission) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(Forbid), string(Allow))
	*v = Permission(s)
	return err
}

// Members says who may be in a room: anyone, or verified clinicians only.
type Members string

const (
	MembersAny      Members = "any"
	MembersVerified Members = "verified"
)

func (v *Members) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(MembersAny), string(MembersVerified))
	*v = Members(s)
	return err
}

// UnverifiedSessions says what happens to a verified clinician's sessions
// that they have not cross-signed: nothing, a warning, or (after a grace
// period) sign-out.
type UnverifiedSessions string

const (
	UnverifiedAllow   UnverifiedSessions = "allow"
	UnverifiedWarn    UnverifiedSessions = "warn"
	UnverifiedSignOut UnverifiedSessions = "sign_out"
)

func (v *UnverifiedSessions) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(UnverifiedAllow), string(UnverifiedWarn), string(UnverifiedSignOut))
	*v = UnverifiedSessions(s)
	return err
}

// RoomRetention says whether a room's own m.room.retention (MSC1763
// max_lifetime, which any member with the power to send that state sets)
// may shorten its messages' lifetime. Built in: ignore. A shorter lifetime
// deletes records for good, and the room's admins are not the hospital: a
// room admin who sets 1 ms, or a value that wraps, must not be able to
// delete a room's history. Honouring it is the policy author's decision.
type RoomRetention string

const (
	RoomRetentionHonour RoomRetention = "honour"
	RoomRetentionIgnore RoomRetention = "ignore"
)

func (v *RoomRetention) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(RoomRetentionHonour), string(RoomRetentionIgnore))
	*v = RoomRetention(s)
	return err
}

// PagePriority is how urgent a room's pages are: it sets the gateway's
// priority (WCTP deliveryPriority, SNPP LEVEl).
type PagePriority string

const (
	PriorityStat    PagePriority = "stat"
	PriorityUrgent  PagePriority = "urgent"
	PriorityRoutine PagePriority = "routine"
)

func (v *PagePriority) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(PriorityStat), string(PriorityUrgent), string(PriorityRoutine))
	*v = PagePriority(s)
	return err
}

// Toggle is on or off.
type Toggle string

const (
	On  Toggle = "on"
	Off Toggle = "off"
)

func (v *Toggle) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(On), string(Off))
	*v = Toggle(s)
	return err
}

// BreakGlass says whether a verified clinician outside a room's roles may
// enter it in an emergency (!breakglass), recorded and for a limited time.
type BreakGlass string

const (
	BreakGlassAllow BreakGlass = "allow"
	BreakGlassDeny  BreakGlass = "deny"
)

func (v *BreakGlass) UnmarshalYAML(n *yaml.Node) error {
	s, err := enum(n, string(BreakGlassAllow), string(BreakGlassDeny))
	*v = BreakGlass(s)
	return err
}
