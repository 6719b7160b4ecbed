package admin

import (
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in      string
		isCmd   bool
		want    Command
		wantErr string
	}{
		{in: "good morning", isCmd: false},
		{in: "  ", isCmd: false},
		{in: "!help", isCmd: true, want: Command{Name: "help", Scope: "phi"}},
		{in: "!HELP", isCmd: true, want: Command{Name: "help", Scope: "phi"}},
		{in: "!help me", isCmd: true, wantErr: "takes no arguments"},
		{in: "!devices @bob:hs", isCmd: true, want: Command{Name: "devices", Target: "@bob:hs", Scope: "phi"}},
		{in: "!devices", isCmd: true, wantErr: "needs a user ID"},
		{in: "!devices bob", isCmd: true, wantErr: "not a user ID"},
		{in: "!devices @bob:hs @eve:hs", isCmd: true, wantErr: "one user ID"},
		{in: "!wipe @bob:hs lost phone", isCmd: true, want: Command{Name: "wipe", Target: "@bob:hs", Scope: "phi", Reason: "lost phone"}},
		{in: "!wipe @bob:hs", isCmd: true, wantErr: "needs a reason"},
		{in: "!wipe @bob:hs --redact all --since 2026-11-01 left the trust", isCmd: true,
			want: Command{Name: "wipe", Target: "@bob:hs", Scope: "all", Since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Reason: "left the trust"}},
		{in: "!wipe --since=24h @bob:hs stolen", isCmd: true, want: Command{Name: "wipe", Target: "@bob:hs", Scope: "phi", Since: now.Add(-24 * time.Hour), Reason: "stolen"}},
		{in: "!wipe @bob:hs --device ABCDEF stolen tablet", isCmd: true, want: Command{Name: "wipe", Target: "@bob:hs", Device: "ABCDEF", Scope: "phi", Reason: "stolen tablet"}},
		{in: "!wipe @bob:hs stolen --redact all", isCmd: true, want: Command{Name: "wipe", Target: "@bob:hs", Scope: "phi", Reason: "stolen --redact all"}},
		{in: "!wipe @bob:hs --redact some stolen", isCmd: true, wantErr: "phi, all or none"},
		{in: "!wipe @bob:hs --since yesterday stolen", isCmd: true, wantErr: "not a time"},
		{in: "!wipe @bob:hs --colour red stolen", isCmd: true, wantErr: "unknown option --colour"},
		{in: "!wipe @bob:hs --device", isCmd: true, wantErr: "--device needs a value"},
		{in: "!offboard @bob:hs retired", isCmd: true, want: Command{Name: "offboard", Target: "@bob:hs", Scope: "phi", Reason: "retired"}},
		{in: "!offboard @bob:hs --device X retired", isCmd: true, wantErr: "whole account"},
		{in: "!hold !ward:hs case 2026-114", isCmd: true, want: Command{Name: "hold", Target: "!ward:hs", Scope: "phi", Reason: "case 2026-114"}},
		{in: "!hold @bob:hs case 2026-114", isCmd: true, want: Command{Name: "hold", Target: "@bob:hs", Scope: "phi", Reason: "case 2026-114"}},
		{in: "!hold #ward:hs case", isCmd: true, wantErr: "not a user ID"},
		{in: "!hold @bob:hs --redact all case", isCmd: true, wantErr: "!hold does not take those options"},
		{in: "!whois @rn:hs", isCmd: true, want: Command{Name: "whois", Target: "@rn:hs", Scope: "phi"}},
		{in: "!whois", isCmd: true, wantErr: "needs a user ID"},
		{in: "!whois @a:hs @b:hs", isCmd: true, wantErr: "one user ID"},
		{in: "!verify @rn:hs 1003000126 Nurse --department ICU --licence-expires 2027-06-30", isCmd: true,
			want: Command{Name: "verify", Target: "@rn:hs", Scope: "phi", NPI: "1003000126", Role: "nurse", Department: "ICU", LicenceExpires: time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)}},
		{in: "!verify --department=ICU @rn:hs 1003000126 nurse", isCmd: true, want: Command{Name: "verify", Target: "@rn:hs", Scope: "phi", NPI: "1003000126", Role: "nurse", Department: "ICU"}},
		{in: "!verify @rn:hs 1003000127 nurse", isCmd: true, wantErr: "fails its check digit"},
		{in: "!verify @rn:hs 1003000126", isCmd: true, wantErr: "usage: !verify"},
		{in: "!verify @rn:hs 1003000126 head-nurse! ", isCmd: true, wantErr: "must be a lowercase word"},
		{in: "!verify @rn:hs 1003000126 nurse --licence-expires soon", isCmd: true, wantErr: "not a date"},
		{in: "!verify @rn:hs 1003000126 nurse --redact all", isCmd: true, wantErr: "!verify does not take those options"},
		{in: "!wipe @rn:hs --department ICU lost", isCmd: true, wantErr: "!wipe does not take those options"},
		{in: "!revoke @rn:hs licence suspended --pending review", isCmd: true, want: Command{Name: "revoke", Target: "@rn:hs", Scope: "phi", Reason: "licence suspended --pending review"}},
		{in: "!revoke @rn:hs", isCmd: true, wantErr: "needs a reason"},
		{in: "!roster", isCmd: true, want: Command{Name: "roster", Scope: "phi"}},
		{in: "!devices !ward:hs", isCmd: true, wantErr: "not a user ID"},
		{in: "!holds", isCmd: true, want: Command{Name: "holds", Scope: "phi"}},
		{in: "!page role:icu STAT", isCmd: true, want: Command{Name: "page", Target: "role:icu", Scope: "phi", Priority: "stat"}},
		{in: "!page @rn:hs", isCmd: true, want: Command{Name: "page", Target: "@rn:hs", Scope: "phi", Priority: "routine"}},
		{in: "!page icu", isCmd: true, wantErr: "neither a user ID"},
		{in: "!page role:icu asap", isCmd: true, wantErr: "not a priority"},
		{in: "!page role:icu stat now please", isCmd: true, wantErr: "usage: !page"},
		{in: "!release 12", isCmd: true, want: Command{Name: "release", Scope: "phi", ID: 12}},
		{in: "!release #12", isCmd: true, want: Command{Name: "release", Scope: "phi", ID: 12}},
		{in: "!release twelve", isCmd: true, wantErr: "not a hold number"},
		{in: "!release -3", isCmd: true, wantErr: "not a hold number"},
		{in: "!release", isCmd: true, wantErr: "usage"},
		{in: "!reboot", isCmd: true, wantErr: "unknown command !reboot"},
		{in: "!", isCmd: true, wantErr: "unknown command"},
	}
	for _, c := range cases {
		got, isCmd, err := ParseCommand(c.in, now)
		if isCmd != c.isCmd {
			t.Errorf("%q: command %v, want %v", c.in, isCmd, c.isCmd)
			continue
		}
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: error %v, want one saying %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if isCmd && got != c.want {
			t.Errorf("%q:\n got %+v\nwant %+v", c.in, got, c.want)
		}
	}
}

// Whatever an admin (or anyone in the room) writes, parsing never panics, and
// a command it accepts is one the handler can act on.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"!wipe @bob:hs --redact all --since 24h lost", "!hold !r:hs x", "!release 1", "!devices @a:b", "!wipe --device= @a:b x", "hello"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		c, isCmd, err := ParseCommand(s, now)
		if !isCmd || err != nil {
			return
		}
		switch c.Name {
		case "help", "holds", "roster":
		case "devices", "whois":
			if !isUserID(c.Target) {
				t.Fatalf("%q: devices of %q", s, c.Target)
			}
		case "verify":
			if !isUserID(c.Target) || c.NPI == "" || c.Role == "" {
				t.Fatalf("%q: accepted %+v", s, c)
			}
		case "wipe", "offboard", "hold", "revoke":
			if c.Reason == "" || (!isUserID(c.Target) && !(c.Name == "hold" && isRoomID(c.Target))) {
				t.Fatalf("%q: accepted %+v", s, c)
			}
		case "release":
			if c.ID <= 0 {
				t.Fatalf("%q: release %d", s, c.ID)
			}
		default:
			t.Fatalf("%q: accepted unknown command %q", s, c.Name)
		}
		if c.Scope != "phi" && c.Scope != "all" && c.Scope != "none" {
			t.Fatalf("%q: scope %q", s, c.Scope)
		}
	})
}
