package roster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// NPISystem is the FHIR identifier system of US National Provider Identifiers.
const NPISystem = "http://hl7.org/fhir/sid/us-npi"

// MatrixIDSystem is the identifier system under which a Practitioner carries
// their Matrix user ID (the hospital's directory adds it).
const MatrixIDSystem = "urn:matrix:user-id"

// roleForQualification maps HL7 v2 table 0360 degree codes to roster roles;
// other codes become the role as written, lowercased.
var roleForQualification = map[string]string{
	"MD": "physician", "DO": "physician", "MBBS": "physician",
	"RN": "nurse", "NP": "nurse", "LPN": "nurse", "LVN": "nurse", "CNS": "nurse", "CNM": "nurse", "CRNA": "nurse", "BSN": "nurse", "MSN": "nurse",
	"PHARMD": "pharmacist", "RPH": "pharmacist",
	"PA": "physician-assistant",
}

type fhirBundle struct {
	ResourceType string `json:"resourceType"`
	Entry        []struct {
		Resource json.RawMessage `json:"resource"`
	} `json:"entry"`
}

type fhirPractitioner struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Active       *bool  `json:"active"`
	Meta         struct {
		LastUpdated string `json:"lastUpdated"`
	} `json:"meta"`
	Identifier []struct {
		System string `json:"system"`
		Value  string `json:"value"`
	} `json:"identifier"`
	Qualification []struct {
		Code struct {
			Coding []struct {
				System string `json:"system"`
				Code   string `json:"code"`
			} `json:"coding"`
			Text string `json:"text"`
		} `json:"code"`
		Period struct {
			End string `json:"end"`
		} `json:"period"`
	} `json:"qualification"`
}

// Imported is what a FHIR import found.
type Imported struct {
	Clinicians []Clinician
	Inactive   int // Practitioners marked active: false, left out
}

// ParseFHIRBundle reads a FHIR R4 Bundle of Practitioner resources. Each
// active Practitioner needs an NPI identifier (system NPISystem), a Matrix
// user ID identifier (system MatrixIDSystem) and a qualification; the role
// comes from the qualification's code, the licence expiry from the latest
// qualification period end. verifiedBy names the import's source for the
// record; now stamps it. Every problem is reported; on any, nothing is
// returned.
func ParseFHIRBundle(file string, data []byte, verifiedBy string, now time.Time) (Imported, error) {
	var out Imported
	var b fhirBundle
	if err := json.Unmarshal(data, &b); err != nil {
		return out, jsonError(file, data, err)
	}
	if b.ResourceType != "Bundle" {
		return out, fmt.Errorf("%s: resourceType is %q, not Bundle", file, b.ResourceType)
	}
	var problems []string
	for i, e := range b.Entry {
		var p fhirPractitioner
		if err := json.Unmarshal(e.Resource, &p); err != nil || p.ResourceType != "Practitioner" {
			if err == nil && p.ResourceType != "" && p.ResourceType != "Practitioner" {
				continue // other resources (Organization, PractitionerRole…) are not read here
			}
			problems = append(problems, fmt.Sprintf("%s: entry[%d]: not a Practitioner resource", file, i))
			continue
		}
		at := fmt.Sprintf("%s: entry[%d] (Practitioner/%s)", file, i, p.ID)
		if p.Active != nil && !*p.Active {
			out.Inactive++
			continue
		}
		c := Clinician{VerifiedBy: verifiedBy, VerifiedAt: now}
		for _, id := range p.Identifier {
			switch id.System {
			case NPISystem:
				c.NPI = strings.TrimSpace(id.Value)
			case MatrixIDSystem:
				c.UserID = strings.TrimSpace(id.Value)
			}
		}
		if c.NPI == "" {
			problems = append(problems, at+": no NPI identifier (system "+NPISystem+")")
		}
		if c.UserID == "" {
			problems = append(problems, at+": no Matrix user ID identifier (system "+MatrixIDSystem+")")
		}
		type qual struct {
			role string
			end  time.Time
		}
		var quals []qual
		for _, q := range p.Qualification {
			var code string
			for _, cd := range q.Code.Coding {
				if cd.Code != "" {
					code = cd.Code
					break
				}
			}
			if code == "" {
				code = q.Code.Text
			}
			role, ok := roleForQualification[strings.ToUpper(code)]
			if !ok {
				role = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(code), " ", "-"))
			}
			var end time.Time
			if q.Period.End != "" {
				var err error
				if end, err = ParseDate(q.Period.End); err != nil {
					problems = append(problems, fmt.Sprintf("%s: qualification period end: %v", at, err))
				}
			}
			quals = append(quals, qual{role, end})
		}
		if len(quals) == 0 {
			problems = append(problems, at+": no qualification (the role and licence come from it)")
		} else {
			// The qualification valid longest stands; one without an end date outlasts all.
			sort.SliceStable(quals, func(a, b int) bool {
				ea, eb := quals[a].end, quals[b].end
				return (ea.IsZero() && !eb.IsZero()) || (!ea.IsZero() && !eb.IsZero() && ea.After(eb))
			})
			c.Role, c.LicenceExpires = quals[0].role, quals[0].end
		}
		if c.NPI != "" && c.UserID != "" && len(quals) > 0 {
			for f, msg := range c.check() {
				problems = append(problems, fmt.Sprintf("%s: %s: %s", at, f, msg))
			}
		}
		out.Clinicians = append(out.Clinicians, c)
	}
	for i, msg := range duplicates(out.Clinicians) {
		problems = append(problems, fmt.Sprintf("%s: Practitioner %d: %s", file, i+1, msg))
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return Imported{}, errors.New(strings.Join(problems, "\n"))
	}
	return out, nil
}

// jsonError places a JSON syntax or type error at file:line:col.
func jsonError(file string, data []byte, err error) error {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(data)) {
		return fmt.Errorf("%s: %v", file, err)
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return fmt.Errorf("%s:%d:%d: %v", file, line, col, err)
}
