// Package policy is the hospital's policy: the policy.yaml schema, its
// validation, and which settings apply to a room and why. It does no I/O
// beyond reading the file it is given and knows nothing of Matrix clients.
package policy

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Policy is a loaded, valid policy.yaml.
type Policy struct {
	Version  int        `yaml:"version"`
	Defaults Settings   `yaml:"defaults"`
	Rooms    []Override `yaml:"rooms"`
	// SessionIdleTimeout signs out a user all of whose sessions have been
	// idle this long (0 or unset: never). It is per user, not per room.
	SessionIdleTimeout config.Duration `yaml:"session_idle_timeout"`
	// UnverifiedSessions (allow, warn, sign_out; unset is allow) and, for
	// sign_out, UnverifiedSessionGrace (default 24h): verified clinicians'
	// sessions they have not cross-signed.
	UnverifiedSessions     UnverifiedSessions `yaml:"unverified_sessions"`
	UnverifiedSessionGrace config.Duration    `yaml:"unverified_session_grace"`
	// RetentionChangeLimit: a room's own m.room.retention change that would
	// end more waiting messages at once than this is held for confirmation
	// (RetentionChangeDelay) before it applies to them (0 or unset:
	// DefaultRetentionChangeLimit).
	RetentionChangeLimit int `yaml:"retention_change_limit"`
	// Escalation is when an unread message to a person is paged, re-paged
	// and handed to a backup, per priority (rooms with read_tracking on).
	Escalation Escalation `yaml:"escalation"`

	// ArchiveNotice is what the bot tells the members of a room when it
	// starts archiving it (empty: DefaultArchiveNotice).
	ArchiveNotice string `yaml:"archive_notice"`

	// Training (built in: off) has the bot send each local user, the first
	// time they join a room under policy, a direct message with the rules
	// that apply (TrainingText, or one composed from the room's settings)
	// and ask them to acknowledge it; again after TrainingInterval (built
	// in: DefaultTrainingInterval).
	Training         Toggle          `yaml:"training"`
	TrainingText     string          `yaml:"training_text"`
	TrainingInterval config.Duration `yaml:"training_interval"`

	// Hash identifies this policy in audit records without revealing its text.
	Hash string `yaml:"-"`

	mayExpire bool
	mayPage   bool
	mayTrack  bool
	mayArch   bool
}

// DefaultArchiveNotice is what members of an archived room are told when
// the policy says nothing.
const DefaultArchiveNotice = "This room is archived for the hospital's records: every message and attachment in it is kept by the compliance service, encrypted, for as long as policy requires."

// Notice is the archive notice in force.
func (p *Policy) Notice() string {
	if p.ArchiveNotice != "" {
		return p.ArchiveNotice
	}
	return DefaultArchiveNotice
}

// MayArchive reports whether any room can be archived under this policy.
func (p *Policy) MayArchive() bool { return p.mayArch }

// MayTrackReads reports whether any room can have read_tracking on.
func (p *Policy) MayTrackReads() bool { return p.mayTrack }

// MayPage reports whether any room can be linked to pagers by this
// policy (page set anywhere): only then is ciphertext decided on for pages.
func (p *Policy) MayPage() bool { return p.mayPage }

// MayExpire reports whether any room can get a message lifetime from this
// policy (a retention or retention_max set anywhere). When it cannot, only a
// room's own m.room.retention can give one, and the service skips resolving
// settings for the ciphertext that is most of its traffic.
func (p *Policy) MayExpire() bool { return p.mayExpire }

func setsLifetime(s *Settings) bool {
	return (s.Retention != nil && *s.Retention > 0) || (s.RetentionMax != nil && *s.RetentionMax > 0)
}

// Settings are the knobs. A nil field is "not set here": an override inherits
// it from the defaults, and the defaults from Builtin.
type Settings struct {
	Encryption  *Encryption      `yaml:"encryption"`
	Plaintext   *Plaintext       `yaml:"plaintext"`
	Attachments *Attachments     `yaml:"attachments"`
	PublicRooms *Permission      `yaml:"public_rooms"`
	GuestAccess *Permission      `yaml:"guest_access"`
	Retention   *config.Duration `yaml:"retention"`
	// RoomRetention: whether a room's own m.room.retention (MSC1763
	// max_lifetime) may shorten the lifetime (honour) or not (ignore, built in).
	RoomRetention *RoomRetention `yaml:"room_retention"`
	// RetentionMin and RetentionMax bound what a room's own m.room.retention
	// can do: it may shorten the lifetime, never below the minimum (built in:
	// DefaultRetentionMin); the maximum caps every lifetime.
	RetentionMin *config.Duration `yaml:"retention_min"`
	RetentionMax *config.Duration `yaml:"retention_max"`
	// Retroactive: a longer lifetime (or none) applies to messages already
	// waiting too, not only to new ones. A shorter one always does.
	Retroactive *bool `yaml:"retroactive"`
	DryRun      *bool `yaml:"dry_run"`
	// Members: verified limits the room to people on the verified roster
	// (and, with Roles, to those roles); AnnounceRoles has the bot name a
	// verified person's role when they join.
	Members *Members `yaml:"members"`
	// PlaintextAllowedTypes are message event types let through unencrypted
	// where encryption is required (e.g. a bridge's own type); every other
	// unencrypted message event is plaintext.
	PlaintextAllowedTypes *[]string `yaml:"plaintext_allowed_types"`
	Roles                 *[]string `yaml:"roles"`
	AnnounceRoles         *bool     `yaml:"announce_roles"`
	// Page links the room to pagers: each message in it pages each target,
	// a user ("@user:server", through the pager directory) or an on-call
	// role ("role:name", through the schedule), at PagePriority (built in:
	// routine). Paging adds a way out of the room (a page, without
	// content), so an override that adds targets applies only where the
	// room is matched by ID or a verified alias or space.
	Page         *[]string     `yaml:"page"`
	PagePriority *PagePriority `yaml:"page_priority"`
	// ReadTracking (built in: off) lets the pager bridge read who has read
	// what, from read receipts, to escalate unread messages; staff
	// councils may object, so it is the policy author's choice per room.
	ReadTracking *Toggle `yaml:"read_tracking"`
	// Acknowledge (built in: off): every message in the room must be read
	// by each member, as a direct message must; unread, it escalates.
	Acknowledge *Toggle `yaml:"acknowledge"`
	// Archive (built in: off) keeps every message of the room for the
	// record: the archiver reads it (it keeps the room's keys) and stores it
	// encrypted at rest, for ArchiveRetention (0: for as long as the
	// archive exists), longer under a legal hold. Turning it on lets the
	// service read the room, turning it off ends the record: either way
	// only a room matched by ID or a verified alias or space may change it.
	Archive          *Toggle          `yaml:"archive"`
	ArchiveRetention *config.Duration `yaml:"archive_retention"`
	// BreakGlass (built in: deny): in a members: verified room, a verified
	// clinician outside its roles may ask the bot for emergency access
	// (!breakglass ROOM REASON); it is granted at once, announced, told to
	// the privacy officer, and ends after BreakGlassMax (built in:
	// DefaultBreakGlassMax).
	BreakGlass    *BreakGlass      `yaml:"break_glass"`
	BreakGlassMax *config.Duration `yaml:"break_glass_max"`
}

// DefaultBreakGlassMax is how long emergency access lasts when policy does
// not say; MaxBreakGlass is the longest it may say.
const (
	DefaultBreakGlassMax = time.Hour
	MaxBreakGlass        = 24 * time.Hour
	MinBreakGlass        = time.Minute
)

// DefaultTrainingInterval is how often the rules are sent again when
// policy does not say: once a year, as workforce training usually is.
const DefaultTrainingInterval = 365 * 24 * time.Hour

// Interval is how long an acknowledgement of the rules stands.
func (p *Policy) Interval() time.Duration {
	if p.TrainingInterval > 0 {
		return p.TrainingInterval.D()
	}
	return DefaultTrainingInterval
}

// Override applies its settings to rooms it matches: by room ID, by alias
// (a glob such as "#icu-*:hospital.org") or by the space the room is in.
type Override struct {
	RoomID   string `yaml:"room_id"`
	Alias    string `yaml:"alias"`
	Space    string `yaml:"space"`
	Settings `yaml:",inline"`

	// loosens lists the knobs this override sets looser than the defaults
	// (empty: it only tightens or restates them); tightening is the
	// override without them, what applies on a room's unverified claim.
	loosens    []string
	tightening Settings
}

// Builtin is what applies when policy.yaml says nothing: the strict choice
// for every knob, so forgetting a setting never weakens protection.
func Builtin() Effective {
	return Effective{
		Encryption: EncryptionRequired, Plaintext: PlaintextRedact, Attachments: AttachmentsEncryptedOnly,
		PublicRooms: Forbid, GuestAccess: Forbid, Retention: 0, DryRun: false,
		RoomRetention: RoomRetentionIgnore, RetentionMin: config.Duration(DefaultRetentionMin),
		PagePriority: PriorityRoutine, ReadTracking: Off, Acknowledge: Off, Archive: Off,
		BreakGlass: BreakGlassDeny, BreakGlassMax: config.Duration(DefaultBreakGlassMax),
		// Not "verified": a deployment without a roster must not empty every room.
		Members: MembersAny,
		Source:  map[string]string{},
	}
}

// DefaultRetentionMin is the shortest lifetime a room's own m.room.retention
// can give where it is honoured and the policy sets no retention_min: short
// enough for rooms that want messages gone within the shift, long enough
// that a room admin cannot make a room's history vanish at once.
const DefaultRetentionMin = time.Hour

// DefaultRetentionChangeLimit is how many waiting messages a room's own
// retention change may end at once without being held.
const DefaultRetentionChangeLimit = 100

// RetentionChangeDelay is how long a room's retention change over the limit
// waits: the alert goes out, administrators can place a legal hold or undo
// it, and then the room's current state must still say the same.
const RetentionChangeDelay = time.Hour

// ChangeLimit is the retention change limit in force.
func (p *Policy) ChangeLimit() int {
	if p.RetentionChangeLimit > 0 {
		return p.RetentionChangeLimit
	}
	return DefaultRetentionChangeLimit
}

// MaxLifetime is the longest lifetime the service reckons with (100 years).
// A room's max_lifetime above it is clamped to it: milliseconds that would
// overflow a time.Duration once wrapped to microseconds and deleted
// everything (18446744073710 ms became 448 µs).
const MaxLifetime = 100 * 365 * 24 * time.Hour

// RoomLifetime converts a room's max_lifetime (ms, as MSC1763 has it) to a
// duration, clamped to [0, MaxLifetime], never wrapped.
func RoomLifetime(ms int64) time.Duration {
	switch {
	case ms <= 0:
		return 0
	case ms >= MaxLifetime.Milliseconds():
		return MaxLifetime
	}
	return time.Duration(ms) * time.Millisecond
}

// RoomLifetimeMs is a max_lifetime as a JSON number gives it (a float64,
// which may be far past int64), clamped to [0, MaxLifetime] in ms.
func RoomLifetimeMs(v float64) int64 {
	if v >= float64(MaxLifetime.Milliseconds()) {
		return MaxLifetime.Milliseconds()
	}
	return RoomLifetime(int64(v)).Milliseconds()
}

// Load reads and validates a policy file.
func Load(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return Parse(file, data)
}

// Parse validates policy YAML. Errors list every problem as file:line:col.
func Parse(file string, data []byte) (*Policy, error) {
	p := &Policy{}
	doc := strictyaml.Decode(file, data, p)
	if doc.Root != nil {
		p.validate(doc)
	}
	if err := doc.Err(); err != nil {
		return nil, err
	}
	p.Hash = HashOf(data)
	base := Builtin()
	base.apply(&p.Defaults, "defaults")
	for i := range p.Rooms {
		o := &p.Rooms[i]
		o.loosens, o.tightening = o.Settings.split(base)
	}
	p.mayExpire = setsLifetime(&p.Defaults)
	p.mayPage = p.Defaults.Page != nil && len(*p.Defaults.Page) > 0
	p.mayTrack = p.Defaults.ReadTracking != nil && *p.Defaults.ReadTracking == On
	p.mayArch = p.Defaults.Archive != nil && *p.Defaults.Archive == On
	for i := range p.Rooms {
		p.mayArch = p.mayArch || (p.Rooms[i].Archive != nil && *p.Rooms[i].Archive == On)
		p.mayTrack = p.mayTrack || (p.Rooms[i].ReadTracking != nil && *p.Rooms[i].ReadTracking == On)
		p.mayExpire = p.mayExpire || setsLifetime(&p.Rooms[i].Settings)
		p.mayPage = p.mayPage || (p.Rooms[i].Page != nil && len(*p.Rooms[i].Page) > 0)
	}
	return p, nil
}

// HashOf identifies a policy file's content: the first 8 bytes of its SHA-256, hex.
func HashOf(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// checkRoles validates a roles list: role names as the roster writes them,
// and only where members is (or may be) verified.
func checkRoles(d *strictyaml.Doc, at string, s *Settings) {
	if s.Roles == nil {
		return
	}
	for i, r := range *s.Roles {
		if err := roster.CheckRole(r); err != nil {
			d.Errorf(fmt.Sprintf("%s.roles[%d]", at, i), "%s.roles[%d]: %v", at, i, err)
		}
	}
	if s.Members != nil && *s.Members == MembersAny && len(*s.Roles) > 0 {
		d.Errorf(at+".roles", "%s.roles only applies with members: verified", at)
	}
}

// checkAllowedTypes refuses types that can never be plaintext or that
// would let every message through.
func checkAllowedTypes(d *strictyaml.Doc, at string, s *Settings) {
	if s.PlaintextAllowedTypes == nil {
		return
	}
	for i, t := range *s.PlaintextAllowedTypes {
		k := fmt.Sprintf("%s.plaintext_allowed_types[%d]", at, i)
		switch t {
		case "m.room.message", "m.sticker":
			d.Errorf(k, "%s: %s is what encryption protects; use plaintext: allow instead", k, t)
		case "", "m.room.encrypted", "m.room.redaction":
			d.Errorf(k, "%s: %q is not a type that can be plaintext", k, t)
		}
	}
}

// checkPage validates page targets: Matrix user IDs or role:name.
func checkPage(d *strictyaml.Doc, at string, s *Settings) {
	if s.Page == nil {
		return
	}
	for i, t := range *s.Page {
		if err := CheckPageTarget(t); err != nil {
			k := fmt.Sprintf("%s.page[%d]", at, i)
			d.Errorf(k, "%s: %v", k, err)
		}
	}
}

// CheckPageTarget accepts "@user:server" or "role:name" (name: lower case
// letters, digits, '-' and '_').
func CheckPageTarget(t string) error {
	if role, ok := strings.CutPrefix(t, "role:"); ok {
		if role == "" || strings.Trim(role, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return fmt.Errorf("%q: a role name is lower case letters, digits, '-' and '_'", t)
		}
		return nil
	}
	if !strings.HasPrefix(t, "@") || strings.Index(t, ":") < 2 || strings.ContainsAny(t, " \t\n") {
		return fmt.Errorf("%q is neither a user ID (@user:server) nor a role (role:name)", t)
	}
	return nil
}

// Grace is how long an unverified session may stay under sign_out.
func (p *Policy) Grace() time.Duration {
	if g := p.UnverifiedSessionGrace.D(); g > 0 {
		return g
	}
	return 24 * time.Hour
}

// MinSessionIdleTimeout is the shortest idle timeout accepted; clients
// report activity to the homeserver only when they make requests.
var MinSessionIdleTimeout = time.Minute

func (p *Policy) validate(d *strictyaml.Doc) {
	if _, set := d.Paths["version"]; !set {
		d.Errorf("version", "version is required (version: 1)")
	} else if p.Version != 1 {
		d.Errorf("version", "version %d is not supported (this build knows version 1)", p.Version)
	}
	checkRetention(d, "defaults", &p.Defaults)
	checkAllowedTypes(d, "defaults", &p.Defaults)
	checkRoles(d, "defaults", &p.Defaults)
	checkPage(d, "defaults", &p.Defaults)
	checkBreakGlass(d, "defaults", &p.Defaults)
	p.Escalation.validate(d)
	if t := p.TrainingInterval.D(); t < 0 || (t > 0 && t < time.Hour) {
		d.Errorf("training_interval", "training_interval must be at least 1h (unset: %s)", DefaultTrainingInterval)
	}
	if len(p.TrainingText) > 4000 {
		d.Errorf("training_text", "training_text is %d characters; keep it under 4000 (one message)", len(p.TrainingText))
	}
	if g := p.UnverifiedSessionGrace.D(); g < 0 || (g > 0 && g < MinSessionIdleTimeout) {
		d.Errorf("unverified_session_grace", "unverified_session_grace must be at least %s", MinSessionIdleTimeout)
	}
	if p.RetentionChangeLimit < 0 {
		d.Errorf("retention_change_limit", "retention_change_limit must be 0 (the default, %d) or more", DefaultRetentionChangeLimit)
	}
	if t := p.SessionIdleTimeout.D(); t < 0 || (t > 0 && t < MinSessionIdleTimeout) {
		d.Errorf("session_idle_timeout", "session_idle_timeout must be 0 (off) or at least %s", MinSessionIdleTimeout)
	}
	for i, o := range p.Rooms {
		at := fmt.Sprintf("rooms[%d]", i)
		checkRetention(d, at, &p.Rooms[i].Settings)
		checkRoles(d, at, &p.Rooms[i].Settings)
		checkAllowedTypes(d, at, &p.Rooms[i].Settings)
		checkPage(d, at, &p.Rooms[i].Settings)
		checkBreakGlass(d, at, &p.Rooms[i].Settings)
		n := 0
		for _, m := range []string{o.RoomID, o.Alias, o.Space} {
			if m != "" {
				n++
			}
		}
		switch {
		case n == 0:
			d.Errorf(at, "%s: say which rooms it is for: room_id, alias or space", at)
		case n > 1:
			d.Errorf(at, "%s: use one of room_id, alias or space, not several", at)
		}
		if o.RoomID != "" && !validRoomID(o.RoomID) {
			d.Errorf(at+".room_id", "%s.room_id %q is not a room ID (!opaque:server)", at, o.RoomID)
		}
		if o.Space != "" && !validRoomID(o.Space) {
			d.Errorf(at+".space", "%s.space %q is not a room ID (!opaque:server); name the space by its ID", at, o.Space)
		}
		if o.Alias != "" {
			if !strings.HasPrefix(o.Alias, "#") || !strings.Contains(o.Alias, ":") {
				d.Errorf(at+".alias", "%s.alias %q is not an alias pattern (#name:server, * and ? allowed)", at, o.Alias)
			} else if _, err := path.Match(o.Alias, "#x:y"); err != nil {
				d.Errorf(at+".alias", "%s.alias %q is not a valid pattern", at, o.Alias)
			}
		}
	}
}

// checkBreakGlass bounds the emergency access window.
func checkBreakGlass(d *strictyaml.Doc, at string, s *Settings) {
	if m := s.BreakGlassMax; m != nil && (m.D() < MinBreakGlass || m.D() > MaxBreakGlass) {
		d.Errorf(at+".break_glass_max", "%sbreak_glass_max must be between %s and %s", prefix(at), MinBreakGlass, MaxBreakGlass)
	}
}

// checkRetention reports bounds that contradict each other or the lifetime.
func checkRetention(d *strictyaml.Doc, at string, s *Settings) {
	lo, hi, l := s.RetentionMin, s.RetentionMax, s.Retention
	if lo != nil && hi != nil && *hi > 0 && *lo > *hi {
		d.Errorf(at+".retention_min", "%sretention_min (%s) is longer than retention_max (%s)", prefix(at), lo.D(), hi.D())
	}
	if l != nil && *l > 0 && hi != nil && *hi > 0 && *l > *hi {
		d.Errorf(at+".retention", "%sretention (%s) is longer than retention_max (%s)", prefix(at), l.D(), hi.D())
	}
	if l != nil && *l > 0 && lo != nil && *l < *lo {
		d.Errorf(at+".retention", "%sretention (%s) is shorter than retention_min (%s)", prefix(at), l.D(), lo.D())
	}
}

func prefix(at string) string {
	if at == "" {
		return ""
	}
	return at + "."
}

// Lifetime is how long a message in the room lives (0: kept). It is the
// policy's retention, shortened by the room's own m.room.retention
// max_lifetime (MSC1763, in ms) where the policy honours it and it is
// shorter, but never below retention_min; and never longer than
// retention_max. A room can tighten its lifetime, never loosen it.
func (e *Effective) Lifetime(roomMaxMs int64) time.Duration {
	roomMax := RoomLifetime(roomMaxMs)
	if e.RoomRetention != RoomRetentionHonour {
		roomMax = 0
	}
	l := e.Retention.D()
	if roomMax > 0 && (l == 0 || roomMax < l) {
		l = max(roomMax, e.RetentionMin.D())
		if e.Retention > 0 {
			l = min(l, e.Retention.D()) // a minimum above the policy's own lifetime does not lengthen it
		}
	}
	if hi := e.RetentionMax.D(); hi > 0 && (l == 0 || l > hi) {
		l = hi
	}
	return l
}

func validRoomID(s string) bool {
	return strings.HasPrefix(s, "!") && strings.Index(s, ":") > 1 && !strings.ContainsAny(s, " \t\n")
}

// Room is what policy needs to know about a room to match overrides.
//
// Aliases and Spaces are what the room's own state claims (m.room.canonical_alias,
// m.space.parent), which any room admin can set; the Verified lists are the
// claims the service has confirmed with the homeserver (the alias resolves to
// this room in the directory; the parent space lists the room in its
// m.space.child). An override that loosens anything applies only through a
// verified alias or space, so room state can tighten policy, never loosen it.
type Room struct {
	ID              string
	Aliases         []string // canonical and alternative aliases, as claimed
	Spaces          []string // parent spaces, as claimed
	VerifiedAliases []string
	VerifiedSpaces  []string
}

// Effective is the resolved setting of every knob for one room, with where
// each came from, for `policy explain` and audit.
type Effective struct {
	Encryption    Encryption
	Plaintext     Plaintext
	Attachments   Attachments
	PublicRooms   Permission
	GuestAccess   Permission
	Retention     config.Duration
	RoomRetention RoomRetention
	RetentionMin  config.Duration
	RetentionMax  config.Duration
	Retroactive   bool
	DryRun        bool
	Members       Members
	Roles         []string // empty: any verified role
	// PlaintextAllowedTypes: see Settings.
	PlaintextAllowedTypes []string
	Announce              bool
	// Page, PagePriority and ReadTracking: see Settings.
	Page         []string
	PagePriority PagePriority
	ReadTracking Toggle
	Acknowledge  Toggle
	// Archive and ArchiveRetention: see Settings.
	Archive          Toggle
	ArchiveRetention config.Duration
	// BreakGlass and BreakGlassMax: see Settings.
	BreakGlass    BreakGlass
	BreakGlassMax config.Duration
	// Source names, per knob, what set it: "builtin", "defaults" or "rooms[N] (…)".
	Source map[string]string
}

// matches reports whether o applies to r: by room ID, or by an alias or
// space the service has verified, or (verifiedOnly false) one the room's
// state claims.
func (o *Override) matches(r Room, verifiedOnly bool) bool {
	aliases, spaces := r.VerifiedAliases, r.VerifiedSpaces
	if !verifiedOnly {
		aliases, spaces = append(slices.Clip(r.Aliases), r.VerifiedAliases...), append(slices.Clip(r.Spaces), r.VerifiedSpaces...)
	}
	switch {
	case o.RoomID != "":
		return o.RoomID == r.ID
	case o.Alias != "":
		for _, a := range aliases {
			if ok, _ := path.Match(o.Alias, a); ok {
				return true
			}
		}
	case o.Space != "":
		for _, s := range spaces {
			if s == o.Space {
				return true
			}
		}
	}
	return false
}

// Loosens lists the knobs override i sets looser than the defaults.
func (p *Policy) Loosens(i int) []string { return p.Rooms[i].loosens }

// Warnings are what `policy validate` points out without refusing the file:
// alias and space overrides that loosen policy, which apply only where the
// homeserver confirms the alias or the space's listing.
func (p *Policy) Warnings() []string {
	var out []string
	for i := range p.Rooms {
		o := &p.Rooms[i]
		if len(o.loosens) == 0 || o.RoomID != "" {
			continue
		}
		how := "the alias resolves to the room in the homeserver's directory"
		if o.Space != "" {
			how = "the space lists the room in its m.space.child"
		}
		out = append(out, fmt.Sprintf("%s loosens or changes lifetimes (%s): these apply only where %s; on a room's own unconfirmed claim, only what the override tightens applies",
			o.describe(i), strings.Join(o.loosens, ", "), how))
	}
	return out
}

// looserThan lists the knobs s sets looser than base. Lifetimes count both
// ways: a longer one keeps PHI, a shorter one deletes the record.
func (s *Settings) looserThan(base Effective) []string {
	knobs, _ := s.split(base)
	return knobs
}

// split divides s against base: the knobs it sets looser (or, for
// lifetimes, differently), and s without them, which is what applies on a
// room's unconfirmed claim.
func (s *Settings) split(base Effective) (loose []string, tightening Settings) {
	tightening = *s
	add := func(cond bool, knob string, unset func(*Settings)) {
		if cond {
			loose = append(loose, knob)
			unset(&tightening)
		}
	}
	add(s.Encryption != nil && *s.Encryption == EncryptionOptional && base.Encryption == EncryptionRequired, "encryption", func(t *Settings) { t.Encryption = nil })
	add(s.Plaintext != nil && plaintextRank[*s.Plaintext] < plaintextRank[base.Plaintext], "plaintext", func(t *Settings) { t.Plaintext = nil })
	add(s.Attachments != nil && *s.Attachments == AttachmentsAllow && base.Attachments != AttachmentsAllow, "attachments", func(t *Settings) { t.Attachments = nil })
	add(s.PublicRooms != nil && *s.PublicRooms == Allow && base.PublicRooms != Allow, "public_rooms", func(t *Settings) { t.PublicRooms = nil })
	add(s.GuestAccess != nil && *s.GuestAccess == Allow && base.GuestAccess != Allow, "guest_access", func(t *Settings) { t.GuestAccess = nil })
	add(s.Retention != nil && *s.Retention != base.Retention, "retention", func(t *Settings) { t.Retention = nil })
	add(s.RoomRetention != nil && *s.RoomRetention != base.RoomRetention, "room_retention", func(t *Settings) { t.RoomRetention = nil })
	add(s.RetentionMin != nil && *s.RetentionMin != base.RetentionMin, "retention_min", func(t *Settings) { t.RetentionMin = nil })
	add(s.RetentionMax != nil && *s.RetentionMax != base.RetentionMax, "retention_max", func(t *Settings) { t.RetentionMax = nil })
	add(s.Retroactive != nil && *s.Retroactive != base.Retroactive, "retroactive", func(t *Settings) { t.Retroactive = nil })
	add(s.DryRun != nil && *s.DryRun && !base.DryRun, "dry_run", func(t *Settings) { t.DryRun = nil })
	add(s.Members != nil && *s.Members == MembersAny && base.Members == MembersVerified, "members", func(t *Settings) { t.Members = nil })
	add(s.Roles != nil && !rolesWithin(*s.Roles, base.Roles), "roles", func(t *Settings) { t.Roles = nil })
	add(s.PlaintextAllowedTypes != nil && !within(*s.PlaintextAllowedTypes, base.PlaintextAllowedTypes), "plaintext_allowed_types",
		func(t *Settings) { t.PlaintextAllowedTypes = nil })
	add(s.Page != nil && !within(*s.Page, base.Page), "page", func(t *Settings) { t.Page = nil })
	add(s.ReadTracking != nil && *s.ReadTracking == On && base.ReadTracking != On, "read_tracking", func(t *Settings) { t.ReadTracking = nil })
	// acknowledge: on makes every member's unread message page them:
	// like adding page targets, a claim must not turn it on.
	add(s.Acknowledge != nil && *s.Acknowledge == On && base.Acknowledge != On, "acknowledge", func(t *Settings) { t.Acknowledge = nil })
	// archive: on lets the service read the room; off ends its record. A
	// claim changes neither, nor how long the record is kept.
	add(s.Archive != nil && *s.Archive != base.Archive, "archive", func(t *Settings) { t.Archive = nil })
	add(s.ArchiveRetention != nil && *s.ArchiveRetention != base.ArchiveRetention, "archive_retention", func(t *Settings) { t.ArchiveRetention = nil })
	// break_glass: allow opens the room to more people; a longer window
	// keeps them in longer.
	add(s.BreakGlass != nil && *s.BreakGlass == BreakGlassAllow && base.BreakGlass != BreakGlassAllow, "break_glass", func(t *Settings) { t.BreakGlass = nil })
	add(s.BreakGlassMax != nil && *s.BreakGlassMax > base.BreakGlassMax, "break_glass_max", func(t *Settings) { t.BreakGlassMax = nil })
	return loose, tightening
}

var plaintextRank = map[Plaintext]int{PlaintextAllow: 0, PlaintextWarn: 1, PlaintextRedact: 2}

// rolesWithin: limiting to roles is no looser than base when base allows
// any role, or when every role is one base allows too.
func rolesWithin(roles, base []string) bool {
	if len(base) == 0 {
		return true
	}
	return len(roles) > 0 && within(roles, base)
}

func within(list, base []string) bool {
	for _, x := range list {
		if !slices.Contains(base, x) {
			return false
		}
	}
	return true
}

func (o *Override) describe(i int) string {
	switch {
	case o.RoomID != "":
		return fmt.Sprintf("rooms[%d] (room_id %s)", i, o.RoomID)
	case o.Alias != "":
		return fmt.Sprintf("rooms[%d] (alias %s)", i, o.Alias)
	}
	return fmt.Sprintf("rooms[%d] (space %s)", i, o.Space)
}

// For resolves the settings for a room: built-in values, then the defaults,
// then every matching override in file order (a later match wins).
func (p *Policy) For(r Room) Effective {
	e := Builtin()
	for k := range knobs {
		e.Source[k] = "builtin"
	}
	e.apply(&p.Defaults, "defaults")
	for i := range p.Rooms {
		o := &p.Rooms[i]
		switch {
		case o.matches(r, len(o.loosens) > 0):
			e.apply(&o.Settings, o.describe(i))
		case len(o.loosens) > 0 && o.matches(r, false):
			// Only claimed: what it tightens applies, what it loosens waits
			// for the homeserver to confirm the claim.
			e.apply(&o.tightening, o.describe(i)+" as claimed")
		}
	}
	return e
}

var knobs = map[string]bool{"encryption": true, "plaintext": true, "attachments": true, "public_rooms": true, "guest_access": true, "retention": true,
	"room_retention": true, "retention_min": true, "retention_max": true, "retroactive": true, "dry_run": true, "members": true, "roles": true, "announce_roles": true,
	"plaintext_allowed_types": true, "page": true, "page_priority": true, "read_tracking": true, "acknowledge": true,
	"archive": true, "archive_retention": true, "break_glass": true, "break_glass_max": true}

func (e *Effective) apply(s *Settings, source string) {
	override(&e.Encryption, s.Encryption, "encryption", source, e.Source)
	override(&e.Plaintext, s.Plaintext, "plaintext", source, e.Source)
	override(&e.Attachments, s.Attachments, "attachments", source, e.Source)
	override(&e.PublicRooms, s.PublicRooms, "public_rooms", source, e.Source)
	override(&e.GuestAccess, s.GuestAccess, "guest_access", source, e.Source)
	override(&e.Retention, s.Retention, "retention", source, e.Source)
	override(&e.RoomRetention, s.RoomRetention, "room_retention", source, e.Source)
	override(&e.RetentionMin, s.RetentionMin, "retention_min", source, e.Source)
	override(&e.RetentionMax, s.RetentionMax, "retention_max", source, e.Source)
	override(&e.Retroactive, s.Retroactive, "retroactive", source, e.Source)
	override(&e.DryRun, s.DryRun, "dry_run", source, e.Source)
	override(&e.Members, s.Members, "members", source, e.Source)
	override(&e.Roles, s.Roles, "roles", source, e.Source)
	override(&e.Announce, s.AnnounceRoles, "announce_roles", source, e.Source)
	override(&e.PlaintextAllowedTypes, s.PlaintextAllowedTypes, "plaintext_allowed_types", source, e.Source)
	override(&e.Page, s.Page, "page", source, e.Source)
	override(&e.PagePriority, s.PagePriority, "page_priority", source, e.Source)
	override(&e.ReadTracking, s.ReadTracking, "read_tracking", source, e.Source)
	override(&e.Acknowledge, s.Acknowledge, "acknowledge", source, e.Source)
	override(&e.Archive, s.Archive, "archive", source, e.Source)
	override(&e.ArchiveRetention, s.ArchiveRetention, "archive_retention", source, e.Source)
	override(&e.BreakGlass, s.BreakGlass, "break_glass", source, e.Source)
	override(&e.BreakGlassMax, s.BreakGlassMax, "break_glass_max", source, e.Source)
}

// override sets *dst from a knob that is set here, noting where it came from.
func override[T any](dst *T, val *T, knob, source string, sources map[string]string) {
	if val != nil {
		*dst = *val
		sources[knob] = source
	}
}

// Explain renders e as the lines `policy explain` prints.
func (e Effective) Explain() string {
	retention := "keep (no expiry)"
	if e.Retention > 0 {
		retention = e.Retention.D().String()
	}
	rows := [][2]string{
		{"encryption", string(e.Encryption)}, {"plaintext", string(e.Plaintext)}, {"attachments", string(e.Attachments)},
		{"public_rooms", string(e.PublicRooms)}, {"guest_access", string(e.GuestAccess)}, {"retention", retention},
		{"room_retention", string(e.RoomRetention)}, {"retention_min", durationOrNone(e.RetentionMin)}, {"retention_max", durationOrNone(e.RetentionMax)},
		{"retroactive", fmt.Sprint(e.Retroactive)},
		{"dry_run", fmt.Sprint(e.DryRun)},
		{"members", string(e.Members)}, {"roles", rolesOrAny(e.Roles)}, {"announce_roles", fmt.Sprint(e.Announce)},
		{"plaintext_allowed_types", listOrNone(e.PlaintextAllowedTypes)},
		{"page", listOrNone(e.Page)}, {"page_priority", string(e.PagePriority)}, {"read_tracking", string(e.ReadTracking)},
		{"acknowledge", string(e.Acknowledge)},
		{"archive", string(e.Archive)}, {"archive_retention", durationOrKeep(e.ArchiveRetention)},
		{"break_glass", string(e.BreakGlass)}, {"break_glass_max", e.BreakGlassMax.D().String()},
	}
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%-13s %-18s from %s\n", r[0], r[1], e.Source[r[0]])
	}
	return b.String()
}

func rolesOrAny(r []string) string {
	if len(r) == 0 {
		return "any"
	}
	return strings.Join(r, ",")
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

func durationOrKeep(d config.Duration) string {
	if d <= 0 {
		return "keep"
	}
	return d.D().String()
}

func durationOrNone(d config.Duration) string {
	if d <= 0 {
		return "none"
	}
	return d.D().String()
}

// enum decodes a scalar that must be one of a closed set of words.
func enum(n *yaml.Node, allowed ...string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("expected one of %s", strings.Join(allowed, ", "))
	}
	for _, a := range allowed {
		if n.Value == a {
			return a, nil
		}
	}
	return "", fmt.Errorf("%q is not one of %s", n.Value, strings.Join(allowed, ", "))
}

//go:embed example-policy.yaml
var examplePolicy []byte

// Example returns the commented example policy.
func Example() []byte { return append([]byte(nil), examplePolicy...) }
