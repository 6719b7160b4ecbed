package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

func TestDecideMember(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	day := func(s string) time.Time { d, _ := time.Parse("2006-01-02", s); return d }
	doctor := &roster.Clinician{UserID: "@doc:h", Role: "physician", LicenceExpires: day("2027-06-30")}
	nurse := &roster.Clinician{UserID: "@rn:h", Role: "nurse"}
	lapsed := &roster.Clinician{UserID: "@old:h", Role: "physician", LicenceExpires: day("2026-11-25")}
	lastDay := &roster.Clinician{UserID: "@today:h", Role: "physician", LicenceExpires: day("2026-11-26")}
	open := Effective{Members: MembersAny}
	gated := Effective{Members: MembersVerified}
	doctorsOnly := Effective{Members: MembersVerified, Roles: []string{"physician", "physician-assistant"}}
	cases := []struct {
		name     string
		room     Effective
		member   Member
		wantCode string // "" allowed
		reason   string
	}{
		{"open room, stranger", open, Member{User: "@x:h"}, "", ""},
		{"open room, revoked", open, Member{User: "@x:h", Clinician: doctor, Revoked: true}, "", ""},
		{"gated, verified doctor", gated, Member{User: "@doc:h", Clinician: doctor}, "", ""},
		{"gated, verified nurse without expiry", gated, Member{User: "@rn:h", Clinician: nurse}, "", ""},
		{"gated, not on the roster", gated, Member{User: "@x:h"}, RefusedNotVerified, "not on the verified clinician roster"},
		{"gated, revoked", gated, Member{User: "@doc:h", Clinician: doctor, Revoked: true}, RefusedRevoked, "withdrawn"},
		{"gated, licence lapsed yesterday", gated, Member{User: "@old:h", Clinician: lapsed}, RefusedExpired, "expired on 2026-11-25"},
		{"gated, last valid day", gated, Member{User: "@today:h", Clinician: lastDay}, "", ""},
		{"gated, bot exempt", gated, Member{User: "@hipaa:h", Exempt: true}, "", ""},
		{"gated, admin exempt even when lapsed", gated, Member{User: "@old:h", Clinician: lapsed, Exempt: true}, "", ""},
		{"role-gated, physician", doctorsOnly, Member{User: "@doc:h", Clinician: doctor}, "", ""},
		{"role-gated, nurse", doctorsOnly, Member{User: "@rn:h", Clinician: nurse}, RefusedRole, "this room is for physician, physician-assistant; your verified role is nurse"},
		{"role-gated, stranger", doctorsOnly, Member{User: "@x:h"}, RefusedNotVerified, ""},
		{"role-gated, lapsed physician", doctorsOnly, Member{User: "@old:h", Clinician: lapsed}, RefusedExpired, ""},
	}
	for _, c := range cases {
		v := DecideMember(c.room, c.member, now)
		if v.Allowed != (c.wantCode == "") || v.Code != c.wantCode || !strings.Contains(v.Reason, c.reason) {
			t.Errorf("%s: %+v, want code %q with %q", c.name, v, c.wantCode, c.reason)
		}
	}
}

func TestMembersKnobs(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: 1\nrooms:\n  - alias: \"#icu-*:h\"\n    members: verified\n    roles: [physician, nurse]\n    announce_roles: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := p.For(Room{ID: "!a:h", Aliases: []string{"#icu-1:h"}})
	if e.Members != MembersVerified || strings.Join(e.Roles, ",") != "physician,nurse" || !e.Announce {
		t.Fatalf("icu: %+v", e)
	}
	if e := p.For(Room{ID: "!b:h"}); e.Members != MembersAny || len(e.Roles) != 0 || e.Announce {
		t.Fatalf("other room: %+v", e)
	}
	for src, want := range map[string]string{
		"version: 1\ndefaults:\n  members: everyone\n":                     `"everyone" is not one of any, verified`,
		"version: 1\ndefaults:\n  members: verified\n  roles: [Doctor!]\n": `p.yaml:4:11: defaults.roles[0]: role "Doctor!" must be a lowercase word`,
		"version: 1\ndefaults:\n  members: any\n  roles: [nurse]\n":        "defaults.roles only applies with members: verified",
		"version: 1\ndefaults:\n  announce_roles: sometimes\n":             "announce_roles",
	} {
		if _, err := Parse("p.yaml", []byte(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}
