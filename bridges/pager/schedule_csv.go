package pager

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// scheduleColumns are a CSV schedule's columns: one shift per row. days
// is space-separated (empty for a one-off cover); zone is the same on
// every row; backup, where given, is the role's.
var scheduleColumns = []string{"role", "user", "days", "from", "to", "zone", "backup"}

// ParseScheduleCSV reads a schedule as CSV, with a header row naming the
// columns (role, user, from, to and zone required; days and backup
// optional). It is checked as the YAML form is; errors are file:line:col.
func ParseScheduleCSV(file string, data []byte) (*Schedule, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	var problems []string
	at := func(line, col int, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d:%d: %s", file, line, col, fmt.Sprintf(format, args...)))
	}
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s:1:1: file is empty: the first line names the columns (%s)", file, strings.Join(scheduleColumns, ","))
	}
	if err != nil {
		return nil, csvProblem(file, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		switch {
		case !slices.Contains(scheduleColumns, h):
			at(1, i+1, "unknown column %q (columns: %s)", h, strings.Join(scheduleColumns, ", "))
		case col[h] != 0:
			at(1, i+1, "column %q appears twice", h)
		}
		col[h] = i + 1 // 1-based; 0 is absent
	}
	for _, need := range []string{"role", "user", "from", "to", "zone"} {
		if col[need] == 0 {
			at(1, 1, "column %q is missing", need)
		}
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	s := &Schedule{Version: 1}
	pos := map[string][2]int{}
	byRole := map[string]int{}
	zoneLine := 0
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvProblem(file, err)
		}
		line, _ := r.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if len(rec) != len(header) {
			at(line, 1, "%d fields, but the header names %d", len(rec), len(header))
			continue
		}
		get := func(c string) string {
			if col[c] == 0 {
				return ""
			}
			return strings.TrimSpace(rec[col[c]-1])
		}
		cell := func(c string) [2]int {
			if col[c] == 0 {
				return [2]int{line, 1}
			}
			l, cc := r.FieldPos(col[c] - 1)
			return [2]int{l, cc}
		}
		if z := get("zone"); zoneLine == 0 {
			s.Zone, zoneLine = z, line
			pos["zone"] = cell("zone")
		} else if z != s.Zone {
			zc := cell("zone")
			at(zc[0], zc[1], "zone %q differs from line %d's %q: a schedule has one zone", z, zoneLine, s.Zone)
		}
		name := get("role")
		i, ok := byRole[name]
		if !ok {
			i = len(s.Roles)
			byRole[name] = i
			s.Roles = append(s.Roles, Role{Name: name})
			pos[fmt.Sprintf("roles[%d].name", i)] = cell("role")
		}
		role := &s.Roles[i]
		if b := get("backup"); b != "" {
			if role.Backup != "" && role.Backup != b {
				bc := cell("backup")
				at(bc[0], bc[1], "role %s's backup is %s on an earlier line", name, role.Backup)
			}
			role.Backup = b
			pos[fmt.Sprintf("roles[%d].backup", i)] = cell("backup")
		}
		sh := Shift{User: get("user"), From: get("from"), To: get("to")}
		if d := get("days"); d != "" {
			sh.Days = strings.Fields(strings.ReplaceAll(d, ",", " "))
		}
		base := fmt.Sprintf("roles[%d].shifts[%d]", i, len(role.Shifts))
		pos[base] = cell("user")
		for _, f := range []string{"user", "days", "from", "to"} {
			pos[base+"."+f] = cell(f)
		}
		role.Shifts = append(role.Shifts, sh)
	}
	s.validate(func(path, format string, args ...any) {
		p, ok := nearestPos(pos, path)
		if !ok {
			p = [2]int{1, 1}
		}
		at(p[0], p[1], format, args...)
	})
	if len(problems) > 0 {
		sort.SliceStable(problems, func(i, j int) bool { return lineOf(problems[i]) < lineOf(problems[j]) })
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return s, nil
}

// nearestPos is the position of path, or of the nearest enclosing path
// recorded ("roles[0].shifts[1].days[2]" falls back to its days cell).
func nearestPos(pos map[string][2]int, path string) ([2]int, bool) {
	for p := path; p != ""; {
		if v, ok := pos[p]; ok {
			return v, true
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			break
		}
		p = p[:i]
	}
	return [2]int{}, false
}

func lineOf(problem string) int {
	var line int
	if i := strings.Index(problem, ":"); i >= 0 {
		fmt.Sscanf(problem[i+1:], "%d", &line)
	}
	return line
}

func csvProblem(file string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d:%d: %v", file, pe.Line, pe.Column, pe.Err)
	}
	return fmt.Errorf("%s: %v", file, err)
}
