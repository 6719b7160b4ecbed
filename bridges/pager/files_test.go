package pager

import (
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

const weekly = `version: 1
zone: America/Chicago
roles:
  - name: hospitalist
    backup: role:chief
    shifts:
      - user: "@day:h"
        days: [mon, tue, wed, thu, fri]
        from: "07:00"
        to: "19:00"
      - user: "@night:h"
        days: [mon, tue, wed, thu, fri]
        from: "19:00"
        to: "07:00"
      - user: "@cover:h"
        from: "2026-12-24T07:00"
        to: "2026-12-25T07:00"
  - name: chief
    shifts:
      - user: "@chief:h"
        days: [sun, mon, tue, wed, thu, fri, sat]
        from: "00:00"
        to: "00:00"
`

func TestOnCall(t *testing.T) {
	s, err := ParseSchedule("oncall.yaml", []byte(weekly))
	if err != nil {
		t.Fatal(err)
	}
	chicago, _ := time.LoadLocation("America/Chicago")
	at := func(v string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", v, chicago)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	cases := []struct{ role, when, want string }{
		{"hospitalist", "2026-12-07 07:00", "@day:h"},   // Monday, the shift's first minute
		{"hospitalist", "2026-12-07 18:59", "@day:h"},   // its last
		{"hospitalist", "2026-12-07 19:00", "@night:h"}, // night begins
		{"hospitalist", "2026-12-08 06:59", "@night:h"}, // Monday's night, into Tuesday
		{"hospitalist", "2026-12-12 06:00", "@night:h"}, // Friday's night, into Saturday
		{"hospitalist", "2026-12-12 12:00", ""},         // Saturday day: nobody
		{"hospitalist", "2026-12-24 12:00", "@cover:h"}, // the one-off cover wins over the weekday
		{"hospitalist", "2026-12-25 06:59", "@cover:h"},
		{"hospitalist", "2026-12-25 07:00", "@day:h"}, // Christmas is a Friday
		{"chief", "2026-12-13 03:00", "@chief:h"},     // all day, every day
		{"nobody", "2026-12-07 12:00", ""},            // no such role
	}
	for _, c := range cases {
		if got := s.OnCall(c.role, at(c.when)); got != c.want {
			t.Errorf("%s at %s: %q, want %q", c.role, c.when, got, c.want)
		}
	}
	// The zone is the schedule's, whatever the clock's: 13:00 UTC is 07:00 in Chicago.
	if got := s.OnCall("hospitalist", time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC)); got != "@day:h" {
		t.Errorf("13:00 UTC: %q", got)
	}
	if s.Backup("hospitalist") != "role:chief" {
		t.Errorf("backup %q", s.Backup("hospitalist"))
	}
}

func TestScheduleErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"zone", "version: 1\nzone: Mars/Olympus\nroles: []\n", `oncall.yaml:2:7: zone "Mars/Olympus" is not a time zone`},
		{"day", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    shifts:\n      - user: \"@a:h\"\n        days: [monday]\n        from: \"07:00\"\n        to: \"19:00\"\n", `oncall.yaml:7:16: roles[0].shifts[0].days[0] "monday" is not a day`},
		{"time", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    shifts:\n      - user: \"@a:h\"\n        days: [mon]\n        from: \"7am\"\n        to: \"19:00\"\n", `roles[0].shifts[0].from "7am" is not a time of day`},
		{"dated backwards", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    shifts:\n      - user: \"@a:h\"\n        from: \"2026-12-05T10:00\"\n        to: \"2026-12-05T09:00\"\n", `to is not after its from`},
		{"user", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    shifts:\n      - user: alice\n        from: \"2026-12-05T10:00\"\n        to: \"2026-12-05T11:00\"\n", `roles[0].shifts[0].user "alice" is not a user ID`},
		{"backup role missing", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    backup: role:ghost\n", `roles[0].backup names role ghost`},
		{"unknown key", "version: 1\nzone: UTC\nroles:\n  - name: icu\n    shfits: []\n", `unknown key "shfits"`},
		{"twice", "version: 1\nzone: UTC\nroles:\n  - name: icu\n  - name: icu\n", `roles[1].name icu is listed twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSchedule("oncall.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want %q", err, c.want)
			}
		})
	}
}

func TestDirectory(t *testing.T) {
	gw := map[string]bool{"spok": true}
	d, err := ParseDirectory("pagers.yaml", []byte("version: 1\npagers:\n  - user: \"@a:h\"\n    gateway: spok\n    recipient: \"555\"\n"), gw)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := d.Lookup("@a:h"); !ok || p.Recipient != "555" {
		t.Fatalf("lookup: %+v %v", p, ok)
	}
	if _, ok := d.Lookup("@b:h"); ok {
		t.Fatal("a user with no pager found")
	}
	cases := []struct{ name, src, want string }{
		{"gateway", "version: 1\npagers:\n  - user: \"@a:h\"\n    gateway: pagenet\n    recipient: \"5\"\n", `pagers.yaml:4:14: pagers[0].gateway "pagenet" is not a gateway in the config`},
		{"twice", "version: 1\npagers:\n  - user: \"@a:h\"\n    gateway: spok\n    recipient: \"5\"\n  - user: \"@a:h\"\n    gateway: spok\n    recipient: \"6\"\n", `pagers[1].user @a:h is listed twice`},
		{"recipient", "version: 1\npagers:\n  - user: \"@a:h\"\n    gateway: spok\n    recipient: \"5 5\"\n", `pagers[0].recipient must be the pager's ID`},
		{"version", "pagers: []\n", `version: 1 is required`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseDirectory("pagers.yaml", []byte(c.src), gw)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want %q", err, c.want)
			}
		})
	}
}

func TestRenderFitsTheDevice(t *testing.T) {
	id := PageID("page:$e:@a:h")
	if len(id) > 32 || id != PageID("page:$e:@a:h") || id == PageID("page:$e:@b:h") {
		t.Fatalf("page ID %q", id)
	}
	ref := Ref(id)
	if len(ref) != 5 || strings.ContainsAny(ref, "01OIL") {
		t.Fatalf("ref %q", ref)
	}
	if got := Render("{priority}: new secure message (ref {ref})", ref, policy.PriorityStat, 240); got != "STAT: new secure message (ref "+ref+")" {
		t.Fatalf("render %q", got)
	}
	long := strings.Repeat("é", 300) + " (ref {ref})"
	if got := Render(long, ref, policy.PriorityRoutine, 160); len([]rune(got)) != 160 || !strings.HasSuffix(got, "(ref "+ref+")") {
		t.Fatalf("%q: %d characters for a 160-character device, or the reference cut", got, len([]rune(got)))
	}
	if got := Render("{ref} "+strings.Repeat("x", 100), ref, policy.PriorityRoutine, 50); len([]rune(got)) != 50 || !strings.HasPrefix(got, ref) {
		t.Fatalf("%q", got)
	}
}

func FuzzParseSchedule(f *testing.F) {
	f.Add([]byte(weekly))
	f.Add([]byte("version: 1\nzone: UTC\nroles:\n  - name: a\n    shifts:\n      - user: \"@a:h\"\n        days: [mon]\n        from: \"23:59\"\n        to: \"00:00\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSchedule("f.yaml", data)
		if err != nil {
			return
		}
		for _, r := range s.Roles {
			s.OnCall(r.Name, time.Unix(0, 0))
		}
	})
}

func FuzzParseDirectory(f *testing.F) {
	f.Add([]byte("version: 1\npagers:\n  - user: \"@a:h\"\n    gateway: spok\n    recipient: \"555\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDirectory("f.yaml", data, map[string]bool{"spok": true})
		if err == nil && d.Len() != len(d.Pagers) {
			t.Fatalf("%d pagers, %d looked up", len(d.Pagers), d.Len())
		}
	})
}

// Pages run ahead of routine work; what the room is told of them does not.
func TestJobPriorities(t *testing.T) {
	if appservice.PriorityOf(JobPage) != appservice.PriorityUrgent || appservice.PriorityOf(JobNotice) != appservice.PriorityRoutine {
		t.Fatalf("page %d, page_notice %d", appservice.PriorityOf(JobPage), appservice.PriorityOf(JobNotice))
	}
}

const weeklyCSV = `role,user,days,from,to,zone,backup
hospitalist,@day:h,mon tue wed thu fri,07:00,19:00,America/Chicago,role:chief
hospitalist,@night:h,"mon,tue,wed,thu,fri",19:00,07:00,America/Chicago,
hospitalist,@cover:h,,2026-12-24T07:00,2026-12-25T07:00,America/Chicago,
chief,@chief:h,sun mon tue wed thu fri sat,00:00,00:00,America/Chicago,
`

// The CSV form says what the YAML form says.
func TestScheduleCSV(t *testing.T) {
	y, err := ParseSchedule("oncall.yaml", []byte(weekly))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseScheduleCSV("oncall.csv", []byte(weeklyCSV))
	if err != nil {
		t.Fatal(err)
	}
	for at := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC); at.Before(time.Date(2026, 12, 27, 0, 0, 0, 0, time.UTC)); at = at.Add(30 * time.Minute) {
		for _, role := range []string{"hospitalist", "chief"} {
			if a, b := y.OnCall(role, at), c.OnCall(role, at); a != b {
				t.Fatalf("%s at %s: YAML says %q, CSV %q", role, at, a, b)
			}
		}
	}
	if c.Backup("hospitalist") != "role:chief" {
		t.Fatalf("backup %q", c.Backup("hospitalist"))
	}
	cases := []struct{ name, src, want string }{
		{"bad day", "role,user,days,from,to,zone\nicu,@a:h,monday,07:00,19:00,UTC\n", `oncall.csv:2:10: roles[0].shifts[0].days[0] "monday" is not a day`},
		{"bad time", "role,user,days,from,to,zone\nicu,@a:h,mon,7am,19:00,UTC\n", `oncall.csv:2:14: roles[0].shifts[0].from "7am" is not a time of day`},
		{"two zones", "role,user,days,from,to,zone\nicu,@a:h,mon,07:00,19:00,UTC\nicu,@b:h,tue,07:00,19:00,Europe/Paris\n", `oncall.csv:3:26: zone "Europe/Paris" differs from line 2's "UTC"`},
		{"bad user", "role,user,days,from,to,zone\nicu,alice,mon,07:00,19:00,UTC\n", `oncall.csv:2:5: roles[0].shifts[0].user "alice" is not a user ID`},
		{"missing column", "role,user,from,to\nicu,@a:h,07:00,19:00\n", `oncall.csv:1:1: column "zone" is missing`},
		{"unknown column", "role,user,days,from,to,zone,pager\n", `oncall.csv:1:7: unknown column "pager"`},
		{"short row", "role,user,days,from,to,zone\nicu,@a:h\n", `oncall.csv:2:1: 2 fields, but the header names 6`},
		{"quote", "role,user,days,from,to,zone\nicu,\"@a:h,mon,07:00,19:00,UTC\n", `oncall.csv:2:`},
		{"empty", "", "oncall.csv:1:1: file is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseScheduleCSV("oncall.csv", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParseScheduleCSV(f *testing.F) {
	f.Add([]byte(weeklyCSV))
	f.Add([]byte("role,user,days,from,to,zone\nicu,@a:h,,2026-12-05T10:00,2026-12-05T11:00,UTC\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseScheduleCSV("f.csv", data)
		if err != nil {
			return
		}
		for _, r := range s.Roles {
			s.OnCall(r.Name, time.Unix(0, 0))
		}
	})
}
