package pager

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

// Schedule is who is on call for each role, in one time zone.
type Schedule struct {
	Version int    `yaml:"version"`
	Zone    string `yaml:"zone"`
	Roles   []Role `yaml:"roles"`

	loc    *time.Location
	byName map[string]*Role
}

// Role is an on-call role: its shifts and its backup (a user, or another
// role), who is paged when the person on call does not answer.
type Role struct {
	Name   string  `yaml:"name"`
	Backup string  `yaml:"backup"`
	Shifts []Shift `yaml:"shifts"`

	shifts []shift
}

// Shift is one person's time on call. With Days it repeats weekly, From
// and To being times of day (HH:MM; To at or before From runs overnight
// into the next day). Without Days, From and To are dates and times
// (YYYY-MM-DDTHH:MM) in the schedule's zone: a one-off cover, which wins
// over the weekly shifts. Among shifts of one kind, the later listed wins.
type Shift struct {
	User string   `yaml:"user"`
	Days []string `yaml:"days"`
	From string   `yaml:"from"`
	To   string   `yaml:"to"`
}

type shift struct {
	user string
	// weekly: days set, from/to minutes of the day
	days     [7]bool
	from, to int
	// dated
	start, end time.Time
	dated      bool
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// LoadSchedule reads and validates a schedule file: YAML, or CSV where
// the name ends in .csv. Errors are file:line:col.
func LoadSchedule(file string) (*Schedule, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if strings.EqualFold(filepath.Ext(file), ".csv") {
		return ParseScheduleCSV(file, data)
	}
	return ParseSchedule(file, data)
}

// reporter records a problem at a path of the schedule (roles[0].shifts[1].from).
type reporter func(path, format string, args ...any)

// ParseSchedule validates schedule YAML.
func ParseSchedule(file string, data []byte) (*Schedule, error) {
	s := &Schedule{}
	doc := strictyaml.Decode(file, data, s)
	if doc.Root != nil {
		s.validate(doc.Errorf)
	}
	if err := doc.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Schedule) validate(report reporter) {
	if s.Version != 1 {
		report("version", "version: 1 is required")
	}
	loc, err := time.LoadLocation(s.Zone)
	if s.Zone == "" || err != nil {
		report("zone", "zone %q is not a time zone (an IANA name such as America/Chicago)", s.Zone)
		loc = time.UTC
	}
	s.loc = loc
	s.byName = map[string]*Role{}
	for i := range s.Roles {
		r := &s.Roles[i]
		at := fmt.Sprintf("roles[%d]", i)
		if r.Name == "" || strings.Trim(r.Name, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			report(at+".name", "%s.name %q: a role name is lower case letters, digits, '-' and '_'", at, r.Name)
		} else if s.byName[r.Name] != nil {
			report(at+".name", "%s.name %s is listed twice", at, r.Name)
		}
		s.byName[r.Name] = r
		if r.Backup != "" && !validUser(r.Backup) && !strings.HasPrefix(r.Backup, "role:") {
			report(at+".backup", "%s.backup %q is neither a user ID nor role:name", at, r.Backup)
		}
		for j, sh := range r.Shifts {
			sat := fmt.Sprintf("%s.shifts[%d]", at, j)
			v := shift{user: sh.User}
			if !validUser(sh.User) {
				report(sat+".user", "%s.user %q is not a user ID (@user:server)", sat, sh.User)
			}
			if len(sh.Days) > 0 {
				for k, d := range sh.Days {
					wd, ok := dayNames[strings.ToLower(d)]
					if !ok {
						report(fmt.Sprintf("%s.days[%d]", sat, k), "%s.days[%d] %q is not a day (mon, tue, wed, thu, fri, sat, sun)", sat, k, d)
					}
					v.days[wd] = ok
				}
				var ok1, ok2 bool
				v.from, ok1 = clock(sh.From)
				v.to, ok2 = clock(sh.To)
				if !ok1 {
					report(sat+".from", "%s.from %q is not a time of day (HH:MM)", sat, sh.From)
				}
				if !ok2 {
					report(sat+".to", "%s.to %q is not a time of day (HH:MM)", sat, sh.To)
				}
			} else {
				v.dated = true
				var err1, err2 error
				v.start, err1 = time.ParseInLocation("2006-01-02T15:04", sh.From, loc)
				v.end, err2 = time.ParseInLocation("2006-01-02T15:04", sh.To, loc)
				switch {
				case err1 != nil:
					report(sat+".from", "%s.from %q is not a date and time (YYYY-MM-DDTHH:MM); a weekly shift lists its days", sat, sh.From)
				case err2 != nil:
					report(sat+".to", "%s.to %q is not a date and time (YYYY-MM-DDTHH:MM)", sat, sh.To)
				case !v.end.After(v.start):
					report(sat+".to", "%s.to is not after its from", sat)
				}
			}
			r.shifts = append(r.shifts, v)
		}
	}
	for i := range s.Roles {
		if b, ok := strings.CutPrefix(s.Roles[i].Backup, "role:"); ok && s.byName[b] == nil {
			report(fmt.Sprintf("roles[%d].backup", i), "roles[%d].backup names role %s, which the schedule does not have", i, b)
		}
	}
}

func clock(s string) (int, bool) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, false
	}
	return t.Hour()*60 + t.Minute(), true
}

// OnCall is who is on call for role at t ("" when nobody is).
func (s *Schedule) OnCall(role string, t time.Time) string {
	if s == nil {
		return ""
	}
	r := s.byName[role]
	if r == nil {
		return ""
	}
	t = t.In(s.loc)
	who := ""
	for _, sh := range r.shifts { // dated cover first: it wins
		if sh.dated && !t.Before(sh.start) && t.Before(sh.end) {
			who = sh.user
		}
	}
	if who != "" {
		return who
	}
	mins := t.Hour()*60 + t.Minute()
	for _, sh := range r.shifts {
		if sh.dated {
			continue
		}
		switch {
		case sh.from < sh.to: // same day
			if sh.days[t.Weekday()] && mins >= sh.from && mins < sh.to {
				who = sh.user
			}
		default: // overnight (or all day when from == to): started today or yesterday
			if sh.days[t.Weekday()] && mins >= sh.from {
				who = sh.user
			}
			if sh.days[(t.Weekday()+6)%7] && mins < sh.to {
				who = sh.user
			}
		}
	}
	return who
}

// Backup is role's backup: a user ID, or role:name.
func (s *Schedule) Backup(role string) string {
	if s == nil || s.byName[role] == nil {
		return ""
	}
	return s.byName[role].Backup
}
