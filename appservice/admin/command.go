package admin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

// Command is one management-room command, parsed.
type Command struct {
	Name   string // help, devices, wipe, offboard, hold, holds, release, whois, verify, revoke, roster
	Target string // a user ID, or for hold a room ID
	Device string
	Scope  string // wipe redaction scope: phi, all, none
	Since  time.Time
	Reason string
	ID     int64 // release: the hold
	// verify: the clinician's roster fields.
	NPI, Role, Department string
	LicenceExpires        time.Time
	// page: its priority (stat, urgent, routine).
	Priority string
}

// Mutates reports whether the command changes anything (and so must run
// at most once).
func (c Command) Mutates() bool {
	switch c.Name {
	case "wipe", "offboard", "hold", "release", "verify", "revoke", "page":
		return true
	}
	return false
}

// Help is the reply to !help.
const Help = `Commands (admins listed in the service's config only):
!devices @user:server — the user's sessions, last seen, cross-signed or not
!wipe @user:server [--device ID] [--redact phi|all|none] [--since TIME] REASON — sign the user out everywhere and redact their messages (default: in PHI rooms)
!offboard @user:server [--redact phi|all|none] [--since TIME] REASON — a wipe that also removes the user from every room
!hold @user:server REASON, !hold !room:server REASON — stop messages from expiring (legal hold)
!holds — standing holds
!release N — end hold N
!whois @user:server — their verification: role, department, NPI, licence
!verify @user:server NPI ROLE [--department D] [--licence-expires YYYY-MM-DD] — add or update a verified clinician
!revoke @user:server REASON — withdraw a verification (they are removed from rooms limited to verified clinicians)
!roster — the verified clinicians
!pushers — users whose phones may show message text (pushers sent whole events; Synapse)
!page @user:server|role:NAME [stat|urgent|routine] — page someone (or whoever is on call) through the pager bridge; the page carries no text of this room
TIME is RFC 3339, a date (2026-11-01) or a duration ago (24h).`

// ParseCommand reads a management-room message. ok is false when the text
// is not a command at all (it does not start with "!"); err explains a
// command that is malformed. now resolves "--since 24h".
func ParseCommand(body string, now time.Time) (c Command, ok bool, err error) {
	body = strings.TrimSpace(body)
	if !strings.HasPrefix(body, "!") {
		return c, false, nil
	}
	words := strings.Fields(body)
	c.Name = strings.ToLower(strings.TrimPrefix(words[0], "!"))
	args := words[1:]
	c.Scope = "phi"
	var positional []string
	// Commands with a free-text reason after their target: from there on,
	// "--" is just text.
	_, hasReason := map[string]bool{"wipe": true, "offboard": true, "hold": true, "revoke": true}[c.Name]
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") || (hasReason && len(positional) > 1) {
			// Flags come before the reason; after it, "--" is just text.
			positional = append(positional, a)
			continue
		}
		flag, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !hasVal {
			if i+1 >= len(args) {
				return c, true, fmt.Errorf("--%s needs a value", flag)
			}
			i++
			val = args[i]
		}
		switch flag {
		case "device":
			c.Device = val
		case "redact":
			if val != "phi" && val != "all" && val != "none" {
				return c, true, fmt.Errorf("--redact is phi, all or none, not %q", val)
			}
			c.Scope = val
		case "department":
			c.Department = val
		case "licence-expires", "license-expires":
			if c.LicenceExpires, err = roster.ParseDate(val); err != nil {
				return c, true, err
			}
		case "since":
			if c.Since, err = ParseTime(val, now); err != nil {
				return c, true, err
			}
		default:
			return c, true, fmt.Errorf("unknown option --%s", flag)
		}
	}
	target := func() error {
		if len(positional) == 0 {
			return fmt.Errorf("!%s needs a user ID: %s", c.Name, usage[c.Name])
		}
		c.Target = positional[0]
		if !isUserID(c.Target) && !(c.Name == "hold" && isRoomID(c.Target)) {
			return fmt.Errorf("%q is not a user ID (@name:server): %s", c.Target, usage[c.Name])
		}
		return nil
	}
	reason := func() error {
		c.Reason = strings.Join(positional[1:], " ")
		if c.Reason == "" {
			return fmt.Errorf("!%s needs a reason: %s", c.Name, usage[c.Name])
		}
		return nil
	}
	wipeFlags := c.Device != "" || c.Scope != "phi" || !c.Since.IsZero()
	rosterFlags := c.Department != "" || !c.LicenceExpires.IsZero()
	if (wipeFlags && c.Name != "wipe" && c.Name != "offboard") || (rosterFlags && c.Name != "verify") {
		return c, true, fmt.Errorf("!%s does not take those options: %s", c.Name, usageOf(c.Name))
	}
	switch c.Name {
	case "whois":
		if err := target(); err != nil {
			return c, true, err
		}
		if len(positional) > 1 {
			return c, true, fmt.Errorf("!whois takes one user ID")
		}
	case "verify":
		if err := target(); err != nil {
			return c, true, err
		}
		if len(positional) != 3 {
			return c, true, fmt.Errorf("usage: %s", usage["verify"])
		}
		c.NPI, c.Role = positional[1], strings.ToLower(positional[2])
		if err := roster.CheckNPI(c.NPI); err != nil {
			return c, true, err
		}
		if err := roster.CheckRole(c.Role); err != nil {
			return c, true, err
		}
	case "revoke":
		if err := target(); err != nil {
			return c, true, err
		}
		if err := reason(); err != nil {
			return c, true, err
		}
	case "help", "holds", "roster", "pushers":
		if len(positional) > 0 {
			return c, true, fmt.Errorf("!%s takes no arguments", c.Name)
		}
	case "devices":
		if err := target(); err != nil {
			return c, true, err
		}
		if len(positional) > 1 {
			return c, true, fmt.Errorf("!devices takes one user ID")
		}
	case "wipe", "offboard", "hold":
		if err := target(); err != nil {
			return c, true, err
		}
		if err := reason(); err != nil {
			return c, true, err
		}
		if c.Name == "offboard" && c.Device != "" {
			return c, true, fmt.Errorf("!offboard is for a whole account; use !wipe --device for one device")
		}
	case "page":
		if len(positional) == 0 || len(positional) > 2 {
			return c, true, fmt.Errorf("usage: %s", usage["page"])
		}
		c.Target = positional[0]
		if err := policy.CheckPageTarget(c.Target); err != nil {
			return c, true, fmt.Errorf("%v: %s", err, usage["page"])
		}
		c.Priority = string(policy.PriorityRoutine)
		if len(positional) == 2 {
			c.Priority = strings.ToLower(positional[1])
			if c.Priority != string(policy.PriorityStat) && c.Priority != string(policy.PriorityUrgent) && c.Priority != string(policy.PriorityRoutine) {
				return c, true, fmt.Errorf("%q is not a priority (stat, urgent, routine): %s", positional[1], usage["page"])
			}
		}
	case "release":
		if len(positional) != 1 {
			return c, true, fmt.Errorf("usage: %s", usage["release"])
		}
		c.ID, err = strconv.ParseInt(strings.TrimPrefix(positional[0], "#"), 10, 64)
		if err != nil || c.ID <= 0 {
			return c, true, fmt.Errorf("%q is not a hold number: %s", positional[0], usage["release"])
		}
	default:
		return c, true, fmt.Errorf("unknown command !%s; !help lists them", c.Name)
	}
	return c, true, nil
}

var usage = map[string]string{
	"devices":  "!devices @user:server",
	"wipe":     "!wipe @user:server [--device ID] [--redact phi|all|none] [--since TIME] REASON",
	"offboard": "!offboard @user:server [--redact phi|all|none] [--since TIME] REASON",
	"hold":     "!hold @user:server REASON, or !hold !room:server REASON",
	"release":  "!release N",
	"whois":    "!whois @user:server",
	"verify":   "!verify @user:server NPI ROLE [--department D] [--licence-expires YYYY-MM-DD]",
	"revoke":   "!revoke @user:server REASON",
	"page":     "!page @user:server|role:NAME [stat|urgent|routine]",
}

func usageOf(name string) string {
	if u, ok := usage[name]; ok {
		return u
	}
	return "!" + name
}

func isUserID(s string) bool {
	local, server, ok := strings.Cut(strings.TrimPrefix(s, "@"), ":")
	return strings.HasPrefix(s, "@") && ok && local != "" && server != "" && !strings.ContainsAny(s, " \t")
}

func isRoomID(s string) bool {
	local, server, ok := strings.Cut(strings.TrimPrefix(s, "!"), ":")
	return strings.HasPrefix(s, "!") && ok && local != "" && server != ""
}

// ParseTime reads a point in time as admins write it: RFC 3339, a bare
// date or date-time (UTC), or a duration ago ("24h", "7d"). Empty is zero.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if d, err := config.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-01-02T15:04:05Z), a date, or a duration ago like 24h", s)
}
