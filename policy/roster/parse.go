package roster

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

// Parse reads a roster file by its extension: .csv, or YAML (.yaml, .yml).
// Every problem is reported, each as file:line[:col]: message; on any
// problem no roster is returned (the caller keeps the last good one).
func Parse(file string, data []byte) ([]Clinician, error) {
	if strings.EqualFold(filepath.Ext(file), ".csv") {
		return ParseCSV(file, data)
	}
	return ParseYAML(file, data)
}

type yamlRoster struct {
	Clinicians []yamlClinician `yaml:"clinicians"`
}

type yamlClinician struct {
	UserID         string `yaml:"user_id"`
	NPI            string `yaml:"npi"`
	Role           string `yaml:"role"`
	Department     string `yaml:"department"`
	LicenceExpires string `yaml:"licence_expires"`
	VerifiedBy     string `yaml:"verified_by"`
	VerifiedAt     string `yaml:"verified_at"`
}

// ParseYAML reads a YAML roster:
//
//	clinicians:
//	  - user_id: "@jdoe:hospital.example"
//	    npi: "1234567893"
//	    role: physician
//	    department: Cardiology
//	    licence_expires: 2027-06-30
//	    verified_by: credentialing office
//	    verified_at: 2026-11-02
func ParseYAML(file string, data []byte) ([]Clinician, error) {
	var r yamlRoster
	doc := strictyaml.Decode(file, data, &r)
	if doc.Root == nil {
		return nil, doc.Err()
	}
	out := make([]Clinician, len(r.Clinicians))
	for i, y := range r.Clinicians {
		at := fmt.Sprintf("clinicians[%d]", i)
		c, bad := build([]string{y.UserID, y.NPI, y.Role, y.Department, y.LicenceExpires, y.VerifiedBy, y.VerifiedAt})
		for _, f := range fields {
			if msg, ok := bad[f]; ok {
				doc.Errorf(at+"."+f, "%s.%s: %s", at, f, msg)
			}
		}
		out[i] = c
	}
	for i, msg := range duplicates(out) {
		doc.Errorf(fmt.Sprintf("clinicians[%d]", i), "%s", msg)
	}
	if err := doc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// build makes a clinician from the seven roster fields in CSV order, with
// what is wrong per field.
func build(v []string) (Clinician, map[string]string) {
	for i := range v {
		v[i] = strings.TrimSpace(v[i])
	}
	c := Clinician{UserID: v[0], NPI: v[1], Role: strings.ToLower(v[2]), Department: v[3], VerifiedBy: v[5]}
	bad := c.check()
	var err error
	if v[4] != "" {
		if c.LicenceExpires, err = ParseDate(v[4]); err != nil {
			bad["licence_expires"] = err.Error()
		}
	}
	if v[6] != "" {
		if c.VerifiedAt, err = ParseDate(v[6]); err != nil {
			bad["verified_at"] = err.Error()
		}
	}
	return c, bad
}

// ParseCSV reads a CSV roster with a header row naming the columns
// user_id, npi, role, department, licence_expires, verified_by, verified_at
// (in any order; department, licence_expires and verified_at may be left
// out). Errors are file:line: message.
func ParseCSV(file string, data []byte) ([]Clinician, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	var problems []string
	fail := func(line int, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d: %s", file, line, fmt.Sprintf(format, args...)))
	}
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s:1: file is empty: the first line names the columns (%s)", file, strings.Join(fields, ","))
	}
	if err != nil {
		return nil, csvError(file, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if !contains(fields, h) {
			fail(1, "unknown column %q (columns: %s)", h, strings.Join(fields, ", "))
			continue
		}
		if _, dup := col[h]; dup {
			fail(1, "column %q appears twice", h)
		}
		col[h] = i
	}
	for _, need := range []string{"user_id", "npi", "role", "verified_by"} {
		if _, ok := col[need]; !ok {
			fail(1, "column %q is missing", need)
		}
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	var out []Clinician
	var lines []int
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvError(file, err)
		}
		line, _ := r.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		v := make([]string, len(fields))
		for i, f := range fields {
			if j, ok := col[f]; ok && j < len(rec) {
				v[i] = rec[j]
			}
		}
		if len(rec) != len(header) {
			fail(line, "%d fields, but the header names %d", len(rec), len(header))
			continue
		}
		c, bad := build(v)
		for _, f := range fields {
			if msg, ok := bad[f]; ok {
				fail(line, "%s: %s", f, msg)
			}
		}
		out = append(out, c)
		lines = append(lines, line)
	}
	for i, msg := range duplicates(out) {
		fail(lines[i], "%s", msg)
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return out, nil
}

func csvError(file string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d:%d: %v", file, pe.Line, pe.Column, pe.Err)
	}
	return fmt.Errorf("%s: %v", file, err)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
