package policy

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml/strictyamltest"
)

func TestExamplePolicyLoads(t *testing.T) {
	p, err := Load("example-policy.yaml")
	if err != nil {
		t.Fatalf("the shipped example does not load:\n%v", err)
	}
	if len(p.Rooms) != 2 || p.Hash == "" {
		t.Fatalf("%+v", p)
	}
}

// validate output, checked line by line, for a file with many mistakes.
func TestBrokenPolicyReportsEveryProblem(t *testing.T) {
	_, err := Load("testdata/broken.yaml")
	want := []string{
		`testdata/broken.yaml:1:10: version 2 is not supported (this build knows version 1)`,
		`testdata/broken.yaml:3:15: defaults.encryption: "mandatory" is not one of required, optional`,
		`testdata/broken.yaml:4:14: defaults.plaintext: expected a single value, not a list`,
		`testdata/broken.yaml:5:14: defaults.retention: "3 days" is not a duration (use e.g. 30s, 15m, 72h, 30d)`,
		`testdata/broken.yaml:6:12: defaults.dry_run: "maybe" is not a valid value here`,
		`testdata/broken.yaml:7:3: unknown key "colour" in defaults`,
		`testdata/broken.yaml:9:12: rooms[0].alias "icu-*:hospital.example" is not an alias pattern (#name:server, * and ? allowed)`,
		`testdata/broken.yaml:11:5: rooms[1]: use one of room_id, alias or space, not several`,
		`testdata/broken.yaml:13:5: rooms[2]: say which rooms it is for: room_id, alias or space`,
		`testdata/broken.yaml:14:12: rooms[3].space "nope" is not a room ID (!opaque:server); name the space by its ID`,
		`testdata/broken.yaml:15:19: rooms[3].public_rooms: "sometimes" is not one of forbid, allow`,
	}
	strictyamltest.ExpectLines(t, err, want)
}

func TestValidationTable(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"missing version", "defaults: {}\n", "version is required"},
		{"empty file", "", "file is empty"},
		{"syntax", "version: 1\nrooms: [\n", "p.yaml:"},
		{"bad room id", "version: 1\nrooms:\n  - room_id: abc\n", `rooms[0].room_id "abc" is not a room ID`},
		{"bad glob", "version: 1\nrooms:\n  - alias: \"#[:x\"\n", `is not a valid pattern`},
		{"rooms not a list", "version: 1\nrooms: {a: 1}\n", "rooms: expected a list"},
		{"negative retention", "version: 1\ndefaults:\n  retention: -1h\n", "is negative"},
		{"allowing plain messages by type", "version: 1\ndefaults:\n  plaintext_allowed_types: [m.room.message]\n", "defaults.plaintext_allowed_types[0]: m.room.message is what encryption protects"},
		{"allowing the ciphertext type", "version: 1\nrooms:\n  - room_id: \"!a:h\"\n    plaintext_allowed_types: [org.x, m.room.encrypted]\n", "rooms[0].plaintext_allowed_types[1]"},
		{"idle timeout too short", "version: 1\nsession_idle_timeout: 20s\n", "p.yaml:2:23: session_idle_timeout must be 0 (off) or at least 1m0s"},
		{"idle timeout per room", "version: 1\nrooms:\n  - room_id: \"!a:b\"\n    session_idle_timeout: 1h\n", `unknown key "session_idle_timeout" in rooms[0]`},
		{"unknown knob in override", "version: 1\nrooms:\n  - room_id: \"!a:b\"\n    encrytion: required\n", `unknown key "encrytion" in rooms[0] (did you mean "encryption"?)`},
		{"page target neither user nor role", "version: 1\nrooms:\n  - room_id: \"!a:b\"\n    page: [alice]\n", `p.yaml:4:12: rooms[0].page[0]: "alice" is neither a user ID`},
		{"page role with capitals", "version: 1\ndefaults:\n  page: [\"role:ICU\"]\n", `defaults.page[0]: "role:ICU": a role name is lower case`},
		{"page priority unknown", "version: 1\ndefaults:\n  page_priority: asap\n", `stat, urgent, routine`},
		{"read tracking not a toggle", "version: 1\ndefaults:\n  read_tracking: yes\n", `on, off`},
		{"escalation backup before the first page", "version: 1\nescalation:\n  stat:\n    page_after: 5m\n    repeat: 1m\n    backup_after: 1m\n", `p.yaml:6:19: escalation.stat.backup_after must not be before its page_after`},
		{"escalation too quick", "version: 1\nescalation:\n  urgent:\n    page_after: 0s\n    repeat: 1m\n    backup_after: 5m\n", `escalation.urgent.page_after must be at least 1s`},
		{"escalation backup", "version: 1\nescalation:\n  backup: chief\n", `escalation.backup: "chief" is neither`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func dur(d time.Duration) *config.Duration { v := config.Duration(d); return &v }

// Which settings apply to a room, and why, for every knob and every way of matching.
func TestResolution(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
defaults:
  retention: 30d
  plaintext: warn
rooms:
  - alias: "#icu-*:h.org"
    retention: 72h
    attachments: allow
  - space: "!cafe:h.org"
    encryption: optional
    plaintext: allow
    public_rooms: allow
    guest_access: allow
  - room_id: "!trial:h.org"
    dry_run: true
    retention: 10s
  - alias: "#icu-north:h.org"
    retention: 24h
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		room    Room
		want    Effective
		sources map[string]string
	}{
		{"no match: defaults over builtin", Room{ID: "!x:h.org"},
			Effective{Encryption: EncryptionRequired, Plaintext: PlaintextWarn, Attachments: AttachmentsEncryptedOnly, PublicRooms: Forbid, GuestAccess: Forbid, Members: MembersAny, Retention: *dur(30 * 24 * time.Hour)},
			map[string]string{"encryption": "builtin", "plaintext": "defaults", "retention": "defaults"}},
		{"alias glob", Room{ID: "!a:h.org", Aliases: []string{"#icu-south:h.org"}},
			Effective{Encryption: EncryptionRequired, Plaintext: PlaintextWarn, Attachments: AttachmentsAllow, PublicRooms: Forbid, GuestAccess: Forbid, Members: MembersAny, Retention: *dur(72 * time.Hour)},
			map[string]string{"retention": "rooms[0] (alias #icu-*:h.org)", "attachments": "rooms[0] (alias #icu-*:h.org)"}},
		{"later match wins", Room{ID: "!a:h.org", Aliases: []string{"#icu-north:h.org"}},
			Effective{Encryption: EncryptionRequired, Plaintext: PlaintextWarn, Attachments: AttachmentsAllow, PublicRooms: Forbid, GuestAccess: Forbid, Members: MembersAny, Retention: *dur(24 * time.Hour)},
			map[string]string{"retention": "rooms[3] (alias #icu-north:h.org)", "attachments": "rooms[0] (alias #icu-*:h.org)"}},
		{"alias on another server does not match", Room{ID: "!a:h.org", Aliases: []string{"#icu-north:evil.org"}},
			Effective{Encryption: EncryptionRequired, Plaintext: PlaintextWarn, Attachments: AttachmentsEncryptedOnly, PublicRooms: Forbid, GuestAccess: Forbid, Members: MembersAny, Retention: *dur(30 * 24 * time.Hour)},
			nil},
		{"space", Room{ID: "!b:h.org", Spaces: []string{"!cafe:h.org"}},
			Effective{Encryption: EncryptionOptional, Plaintext: PlaintextAllow, Attachments: AttachmentsEncryptedOnly, PublicRooms: Allow, GuestAccess: Allow, Members: MembersAny, Retention: *dur(30 * 24 * time.Hour)},
			map[string]string{"guest_access": "rooms[1] (space !cafe:h.org)"}},
		{"room id", Room{ID: "!trial:h.org"},
			Effective{Encryption: EncryptionRequired, Plaintext: PlaintextWarn, Attachments: AttachmentsEncryptedOnly, PublicRooms: Forbid, GuestAccess: Forbid, Members: MembersAny, Retention: *dur(10 * time.Second), DryRun: true},
			map[string]string{"dry_run": "rooms[2] (room_id !trial:h.org)"}},
		{"space and alias both apply", Room{ID: "!c:h.org", Spaces: []string{"!cafe:h.org"}, Aliases: []string{"#icu-x:h.org"}},
			Effective{Encryption: EncryptionOptional, Plaintext: PlaintextAllow, Attachments: AttachmentsAllow, PublicRooms: Allow, GuestAccess: Allow, Members: MembersAny, Retention: *dur(72 * time.Hour)},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Verified claims (TestHostileClaimsCannotLoosen has the others).
			tc.room.VerifiedAliases, tc.room.VerifiedSpaces = tc.room.Aliases, tc.room.Spaces
			got := p.For(tc.room)
			src := got.Source
			got.Source, tc.want.Source = nil, nil
			tc.want.RoomRetention, tc.want.RetentionMin = Builtin().RoomRetention, Builtin().RetentionMin
			tc.want.PagePriority, tc.want.ReadTracking, tc.want.Acknowledge, tc.want.Archive = Builtin().PagePriority, Builtin().ReadTracking, Builtin().Acknowledge, Builtin().Archive
			tc.want.BreakGlass, tc.want.BreakGlassMax = Builtin().BreakGlass, Builtin().BreakGlassMax
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tc.want) {
				t.Fatalf("\n got %+v\nwant %+v", got, tc.want)
			}
			for k, v := range tc.sources {
				if src[k] != v {
					t.Errorf("source of %s = %q, want %q", k, src[k], v)
				}
			}
			if len(src) != len(knobs) {
				t.Errorf("sources for %d knobs, want %d", len(src), len(knobs))
			}
		})
	}
}

func TestEmptyPolicyIsStrict(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := p.For(Room{ID: "!a:b"})
	if e.Encryption != EncryptionRequired || e.Plaintext != PlaintextRedact || e.Attachments != AttachmentsEncryptedOnly ||
		e.PublicRooms != Forbid || e.GuestAccess != Forbid || e.Retention != 0 || e.DryRun {
		t.Fatalf("empty policy resolved to %+v", e)
	}
	out := e.Explain()
	for _, want := range []string{"encryption    required           from builtin", "retention     keep (no expiry)"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
}

func TestHashChangesWithContent(t *testing.T) {
	a, _ := Parse("p.yaml", []byte("version: 1\n"))
	b, _ := Parse("p.yaml", []byte("version: 1\ndefaults: {retention: 1h}\n"))
	if a.Hash == b.Hash || len(a.Hash) != 16 {
		t.Fatalf("hashes %s %s", a.Hash, b.Hash)
	}
}

func FuzzParse(f *testing.F) {
	for _, file := range []string{"example-policy.yaml", "testdata/broken.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("version: 1\nrooms:\n  - alias: \"#a*:b\"\n    retention: 1d12h\n"))
	f.Add([]byte("version: 1\ndefaults: &d {dry_run: true}\nrooms: [{space: \"!s:x\", <<: *d}]\n"))
	f.Add([]byte("version: 1\nrooms:\n  - alias: \"#[\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			strictyamltest.ExpectPositions(t, err, "f.yaml")
			return
		}
		if p.Version != 1 {
			t.Fatal("accepted a policy without version 1")
		}
		e := p.For(Room{ID: "!r:x", Aliases: []string{"#a:x"}, Spaces: []string{"!s:x"}})
		if e.Encryption == "" || e.Plaintext == "" || e.Attachments == "" || e.PublicRooms == "" || e.GuestAccess == "" {
			t.Fatalf("a knob resolved to nothing: %+v", e)
		}
		_ = e.Explain()
	})
}

// A room's own m.room.retention (MSC1763 max_lifetime) may shorten its
// messages' lifetime, never below retention_min, and never lengthen it;
// retention_max caps every lifetime.
func TestLifetimeTightenNeverLoosen(t *testing.T) {
	h := time.Hour
	e := func(l, lo, hi time.Duration) Effective {
		return Effective{Retention: config.Duration(l), RetentionMin: config.Duration(lo), RetentionMax: config.Duration(hi), RoomRetention: RoomRetentionHonour}
	}
	ignoring := e(72*h, 0, 0)
	ignoring.RoomRetention = RoomRetentionIgnore
	cases := []struct {
		name    string
		eff     Effective
		roomMax time.Duration
		want    time.Duration
	}{
		{"room retention ignored", ignoring, 1 * h, 72 * h},
		{"builtin ignores the room", Builtin(), 1 * h, 0},
		{"policy only", e(72*h, 0, 0), 0, 72 * h},
		{"room tightens", e(72*h, 0, 0), 24 * h, 24 * h},
		{"room cannot loosen", e(72*h, 0, 0), 200 * h, 72 * h},
		{"room tightens, not below the minimum", e(72*h, 12*h, 0), 1 * h, 12 * h},
		{"policy keeps, room sets a lifetime", e(0, 0, 0), 24 * h, 24 * h},
		{"policy keeps, room's lifetime above the minimum", e(0, 48*h, 0), 24 * h, 48 * h},
		{"maximum caps the policy", e(0, 0, 30*24*h), 0, 30 * 24 * h},
		{"maximum caps a room's longer wish too", e(0, 0, 30*24*h), 90 * 24 * h, 30 * 24 * h},
		{"nothing set: kept", e(0, 0, 0), 0, 0},
	}
	for _, c := range cases {
		if got := c.eff.Lifetime(c.roomMax.Milliseconds()); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestRetentionBoundsValidated(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"min above max", "version: 1\ndefaults:\n  retention_min: 48h\n  retention_max: 24h\n", "retention_min (48h0m0s) is longer than retention_max (24h0m0s)"},
		{"lifetime above max", "version: 1\ndefaults:\n  retention: 30d\n  retention_max: 7d\n", "defaults.retention (720h0m0s) is longer than retention_max (168h0m0s)"},
		{"lifetime below min, in an override", "version: 1\nrooms:\n  - room_id: \"!a:h\"\n    retention: 1h\n    retention_min: 2h\n", "rooms[0].retention (1h0m0s) is shorter than retention_min (2h0m0s)"},
	}
	for _, c := range cases {
		_, err := Parse("p.yaml", []byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 72h\n  retention_min: 24h\n  retention_max: 30d\n")); err != nil {
		t.Fatalf("consistent bounds refused: %v", err)
	}
}

func TestMayExpire(t *testing.T) {
	for src, want := range map[string]bool{
		"version: 1\n": false,
		"version: 1\ndefaults:\n  retention: 0\n":                             false,
		"version: 1\ndefaults:\n  retention: 72h\n":                           true,
		"version: 1\nrooms:\n  - room_id: \"!a:h\"\n    retention_max: 30d\n": true,
		"version: 1\ndefaults:\n  retention_min: 1h\n":                        false,
	} {
		p, err := Parse("p.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		if p.MayExpire() != want {
			t.Errorf("%q: MayExpire %v, want %v", src, p.MayExpire(), want)
		}
	}
}

// A room admin's max_lifetime cannot become mass deletion: values that
// would overflow once converted are clamped to the longest lifetime, never
// wrapped to a tiny one; 1 ms is lifted to retention_min where honoured; and
// by default the room's wish is ignored.
func TestHostileRoomMaxLifetimeIsClampedNotWrapped(t *testing.T) {
	pol, err := Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 30d\n"))
	if err != nil {
		t.Fatal(err)
	}
	honour, err := Parse("p.yaml", []byte("version: 1\ndefaults:\n  retention: 30d\n  room_retention: honour\n"))
	if err != nil {
		t.Fatal(err)
	}
	month := 30 * 24 * time.Hour
	cases := []struct {
		name string
		pol  *Policy
		ms   int64
		want time.Duration
	}{
		{"18446744073710 ms, once 448 µs", honour, 18446744073710, month},
		{"max int64 ms", honour, math.MaxInt64, month},
		{"1 ms, honoured: the built-in minimum", honour, 1, DefaultRetentionMin},
		{"1 ms, built-in: ignored", pol, 1, month},
		{"negative", honour, -5, month},
		{"a day, honoured", honour, 86400000, 24 * time.Hour},
	}
	for _, c := range cases {
		eff := c.pol.For(Room{ID: "!r:h"})
		if got := eff.Lifetime(c.ms); got != c.want {
			t.Errorf("%s: lifetime %s, want %s", c.name, got, c.want)
		}
	}
	for ms, want := range map[int64]time.Duration{18446744073710: MaxLifetime, math.MaxInt64: MaxLifetime, 0: 0, -1: 0, 1500: 1500 * time.Millisecond} {
		if got := RoomLifetime(ms); got != want || got < 0 {
			t.Errorf("RoomLifetime(%d) = %s, want %s", ms, got, want)
		}
	}
}

// A room admin can claim any alias or space parent in the room's own state.
// A claim may tighten policy; only a claim the homeserver confirms may bring
// a looser override. validate warns of each override that loosens.
func TestHostileClaimsCannotLoosen(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
defaults:
  retention: 30d
rooms:
  - space: "!cafe:h.org"
    encryption: optional
    plaintext: allow
  - alias: "#icu-*:h.org"
    members: verified
    retention_max: 60d
  - alias: "#research-*:h.org"
    dry_run: true
  - alias: "#strict-*:h.org"
    plaintext: redact
    guest_access: forbid
  - room_id: "!trial:h.org"
    encryption: optional
`))
	if err != nil {
		t.Fatal(err)
	}
	pg, err := Parse("p.yaml", []byte(`version: 1
rooms:
  - alias: "#rapid-*:h.org"
    page: ["role:rapid-response"]
    page_priority: stat
    read_tracking: on
    acknowledge: on
`))
	if err != nil {
		t.Fatal(err)
	}
	// A room that claims the rapid-response alias would page the team (and
	// turn on read tracking): only a verified alias does.
	if e := pg.For(Room{ID: "!x:h.org", Aliases: []string{"#rapid-1:h.org"}}); len(e.Page) != 0 || e.ReadTracking != Off || e.Acknowledge != Off || e.PagePriority != PriorityStat {
		t.Errorf("claimed alias: page %v read_tracking %s acknowledge %s priority %s", e.Page, e.ReadTracking, e.Acknowledge, e.PagePriority)
	}
	if e := pg.For(Room{ID: "!x:h.org", Aliases: []string{"#rapid-1:h.org"}, VerifiedAliases: []string{"#rapid-1:h.org"}}); fmt.Sprint(e.Page) != "[role:rapid-response]" || e.ReadTracking != On || e.Acknowledge != On {
		t.Errorf("verified alias: page %v read_tracking %s acknowledge %s", e.Page, e.ReadTracking, e.Acknowledge)
	}
	cases := []struct {
		name string
		room Room
		want string // encryption/plaintext/members/dry_run/retention_max
	}{
		{"claimed space parent: ignored", Room{ID: "!x:h.org", Spaces: []string{"!cafe:h.org"}}, "required/redact/any/false/0s"},
		{"verified space parent: applies", Room{ID: "!x:h.org", Spaces: []string{"!cafe:h.org"}, VerifiedSpaces: []string{"!cafe:h.org"}}, "optional/allow/any/false/0s"},
		{"claimed alias that tightens members: applies", Room{ID: "!x:h.org", Aliases: []string{"#icu-2:h.org"}}, "required/redact/verified/false/0s"},
		{"claimed alias that changes lifetimes: ignored", Room{ID: "!x:h.org", Aliases: []string{"#icu-2:h.org"}}, "required/redact/verified/false/0s"},
		{"verified icu alias: all of it", Room{ID: "!x:h.org", Aliases: []string{"#icu-2:h.org"}, VerifiedAliases: []string{"#icu-2:h.org"}}, "required/redact/verified/false/1440h0m0s"},
		{"claimed research alias cannot turn on dry run", Room{ID: "!x:h.org", Aliases: []string{"#research-1:h.org"}}, "required/redact/any/false/0s"},
		{"a strict alias restating the defaults applies on a claim", Room{ID: "!x:h.org", Aliases: []string{"#strict-1:h.org"}}, "required/redact/any/false/0s"},
		{"room_id needs no verification", Room{ID: "!trial:h.org"}, "optional/redact/any/false/0s"},
	}
	for _, c := range cases {
		e := p.For(c.room)
		if got := fmt.Sprintf("%s/%s/%s/%v/%s", e.Encryption, e.Plaintext, e.Members, e.DryRun, e.RetentionMax.D()); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	for i, want := range [][]string{{"encryption", "plaintext"}, {"retention_max"}, {"dry_run"}, nil, {"encryption"}} {
		if got := p.Loosens(i); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("rooms[%d] loosens %v, want %v", i, got, want)
		}
	}
	w := p.Warnings()
	if len(w) != 3 || !strings.Contains(w[0], "rooms[0] (space !cafe:h.org) loosens or changes lifetimes (encryption, plaintext)") ||
		!strings.Contains(w[1], "rooms[1] (alias #icu-*:h.org) loosens or changes lifetimes (retention_max)") || !strings.Contains(w[2], "dry_run") {
		t.Fatalf("warnings:\n%s", strings.Join(w, "\n"))
	}
}

// Every knob an override can loosen is withheld on a claim: with all of
// them set loose, what remains tightens nothing back.
func TestWithheldKnobsCoverEveryLooseKnob(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
defaults:
  members: verified
  roles: [physician]
  retention: 30d
rooms:
  - alias: "#x:h"
    encryption: optional
    plaintext: allow
    attachments: allow
    public_rooms: allow
    guest_access: allow
    retention: 0
    room_retention: honour
    retention_min: 1m
    retention_max: 90d
    retroactive: true
    dry_run: true
    members: any
    plaintext_allowed_types: [org.x]
    page: ["role:icu"]
    read_tracking: on
    acknowledge: on
  - alias: "#y:h"
    roles: [physician, nurse]
`))
	if err != nil {
		t.Fatal(err)
	}
	base := Builtin()
	base.apply(&p.Defaults, "defaults")
	if n := len(p.Rooms[0].loosens) + len(p.Rooms[1].loosens); n != 17 {
		t.Fatalf("loosens %v and %v, want all 17 knobs", p.Rooms[0].loosens, p.Rooms[1].loosens)
	}
	for _, o := range p.Rooms {
		if rest := o.tightening.looserThan(base); len(rest) != 0 {
			t.Fatalf("withheld on a claim, yet still loosening: %v", rest)
		}
	}
	claimed := p.For(Room{ID: "!r:h", Aliases: []string{"#x:h", "#y:h"}})
	strict := p.For(Room{ID: "!r:h"})
	claimed.Source, strict.Source = nil, nil
	if fmt.Sprintf("%+v", claimed) != fmt.Sprintf("%+v", strict) {
		t.Fatalf("a claimed alias changed the room's policy:\n%+v\n%+v", claimed, strict)
	}
}

// TestClaimCannotTurnArchiveOnOrOff: archive: on lets the service read a
// room and off ends its record, so a room's claimed alias or space changes
// neither, nor the record's retention; a verified one does.
func TestClaimCannotTurnArchiveOnOrOff(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
defaults:
  archive: on
  archive_retention: 2190d
rooms:
  - alias: "#scratch-*:h.org"
    archive: off
  - alias: "#legal-*:h.org"
    archive_retention: 3650d
  - room_id: "!lobby:h.org"
    archive: off
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		room      Room
		archive   Toggle
		retention time.Duration
	}{
		{"defaults", Room{ID: "!a:h.org"}, On, 2190 * 24 * time.Hour},
		{"claimed alias cannot turn it off", Room{ID: "!a:h.org", Aliases: []string{"#scratch-1:h.org"}}, On, 2190 * 24 * time.Hour},
		{"verified alias turns it off", Room{ID: "!a:h.org", Aliases: []string{"#scratch-1:h.org"}, VerifiedAliases: []string{"#scratch-1:h.org"}}, Off, 2190 * 24 * time.Hour},
		{"claimed alias cannot change retention", Room{ID: "!a:h.org", Aliases: []string{"#legal-1:h.org"}}, On, 2190 * 24 * time.Hour},
		{"verified alias changes retention", Room{ID: "!a:h.org", VerifiedAliases: []string{"#legal-1:h.org"}}, On, 3650 * 24 * time.Hour},
		{"room ID turns it off", Room{ID: "!lobby:h.org"}, Off, 2190 * 24 * time.Hour},
	}
	for _, tc := range cases {
		e := p.For(tc.room)
		if e.Archive != tc.archive || e.ArchiveRetention.D() != tc.retention {
			t.Errorf("%s: archive %s retention %s, want %s %s", tc.name, e.Archive, e.ArchiveRetention.D(), tc.archive, tc.retention)
		}
	}
	if !p.MayArchive() || p.Notice() != DefaultArchiveNotice {
		t.Errorf("MayArchive %v, notice %q", p.MayArchive(), p.Notice())
	}
	on, err := Parse("p.yaml", []byte("version: 1\nrooms:\n  - alias: \"#rec-*:h.org\"\n    archive: on\narchive_notice: Kept for the record.\n"))
	if err != nil {
		t.Fatal(err)
	}
	if e := on.For(Room{ID: "!b:h.org", Aliases: []string{"#rec-1:h.org"}}); e.Archive != Off {
		t.Errorf("a claimed alias turned archive on")
	}
	if !on.MayArchive() || on.Notice() != "Kept for the record." || len(on.Warnings()) != 1 {
		t.Errorf("MayArchive %v notice %q warnings %q", on.MayArchive(), on.Notice(), on.Warnings())
	}
}

// TestClaimCannotOpenBreakGlass: break_glass: allow lets more people into
// a verified room, and a longer window keeps them there longer, so a
// room's claimed alias or space can do neither; it can shorten the window
// or deny. Bounds are checked.
func TestClaimCannotOpenBreakGlass(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
defaults:
  members: verified
  break_glass: allow
  break_glass_max: 2h
rooms:
  - alias: "#icu-*:h.org"
    break_glass_max: 8h
  - alias: "#psych-*:h.org"
    break_glass: deny
    break_glass_max: 30m
  - alias: "#er-*:h.org"
    break_glass: allow
`))
	if err != nil {
		t.Fatal(err)
	}
	deny, err := Parse("p.yaml", []byte("version: 1\nrooms:\n  - space: \"!er:h.org\"\n    break_glass: allow\n"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		pol  *Policy
		room Room
		bg   BreakGlass
		max  time.Duration
	}{
		{"defaults", p, Room{ID: "!a:h.org"}, BreakGlassAllow, 2 * time.Hour},
		{"claimed alias cannot lengthen", p, Room{ID: "!a:h.org", Aliases: []string{"#icu-1:h.org"}}, BreakGlassAllow, 2 * time.Hour},
		{"verified alias lengthens", p, Room{ID: "!a:h.org", VerifiedAliases: []string{"#icu-1:h.org"}}, BreakGlassAllow, 8 * time.Hour},
		{"claimed alias may deny and shorten", p, Room{ID: "!a:h.org", Aliases: []string{"#psych-1:h.org"}}, BreakGlassDeny, 30 * time.Minute},
		{"built in: deny, 1h", deny, Room{ID: "!a:h.org"}, BreakGlassDeny, time.Hour},
		{"claimed space cannot allow", deny, Room{ID: "!a:h.org", Spaces: []string{"!er:h.org"}}, BreakGlassDeny, time.Hour},
		{"verified space allows", deny, Room{ID: "!a:h.org", VerifiedSpaces: []string{"!er:h.org"}}, BreakGlassAllow, time.Hour},
	}
	for _, tc := range cases {
		e := tc.pol.For(tc.room)
		if e.BreakGlass != tc.bg || e.BreakGlassMax.D() != tc.max {
			t.Errorf("%s: break_glass %s max %s, want %s %s", tc.name, e.BreakGlass, e.BreakGlassMax.D(), tc.bg, tc.max)
		}
	}
	for _, bad := range []string{"break_glass: maybe", "break_glass_max: 10s", "break_glass_max: 48h"} {
		if _, err := Parse("p.yaml", []byte("version: 1\ndefaults:\n  "+bad+"\n")); err == nil || !strings.Contains(err.Error(), "p.yaml:3:") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	for _, bad := range []string{"training_interval: 10m", "training: maybe"} {
		if _, err := Parse("p.yaml", []byte("version: 1\n"+bad+"\n")); err == nil || !strings.Contains(err.Error(), "p.yaml:2:") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if p.Interval() != DefaultTrainingInterval {
		t.Errorf("training interval %s", p.Interval())
	}
}
