package roster

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml/strictyamltest"
)

func TestCheckNPI(t *testing.T) {
	cases := []struct {
		npi  string
		want string // "" valid, else part of the error
	}{
		// Real NPIs from the NPPES registry and CMS's own worked example.
		{"1234567893", ""}, {"1003000126", ""}, {"1245319599", ""}, {"1679576722", ""}, {"1588667638", ""}, {"1497758544", ""},
		{"1234567890", "fails its check digit: mistyped?"},
		{"1003000127", "fails its check digit: mistyped?"},
		{"1245319959", "check digit"}, // two digits swapped
		{"123456789", "10 digits"},
		{"12345678931", "10 digits"},
		{"12345678a3", "10 digits"},
		{"", "10 digits"},
		{" 123456789", "10 digits"},
		{"３２３４５６７８９３", "10 digits"}, // full-width digits are not digits here
		{"3234567893", "start with 1"},
		{"0000000000", "start with 1"},
	}
	for _, c := range cases {
		err := CheckNPI(c.npi)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.npi, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: error %v, want one saying %q", c.npi, err, c.want)
		}
	}
}

func date(s string) time.Time { t, _ := time.Parse("2006-01-02", s); return t }

func TestParseGoodRosters(t *testing.T) {
	want := []Clinician{
		{UserID: "@jdoe:hospital.example", NPI: "1234567893", Role: "physician", Department: "Cardiology", LicenceExpires: date("2027-06-30"),
			VerifiedBy: "credentialing office", VerifiedAt: date("2026-11-02")},
		{UserID: "@rn.smith:hospital.example", NPI: "1003000126", Role: "nurse", VerifiedBy: "HR badge desk"},
	}
	for _, f := range []string{"testdata/roster.yaml", "testdata/roster.csv"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(f, data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d clinicians", f, len(got))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s entry %d:\n got %+v\nwant %+v", f, i, got[i], want[i])
			}
		}
	}
}

func TestParseYAMLErrors(t *testing.T) {
	data, _ := os.ReadFile("testdata/broken.yaml")
	_, err := Parse("testdata/broken.yaml", data)
	strictyamltest.ExpectLines(t, err, []string{
		`testdata/broken.yaml:2:14: clinicians[0].user_id: "jdoe" is not a Matrix user ID (@name:server)`,
		`testdata/broken.yaml:3:10: clinicians[0].npi: NPI "1234567890" fails its check digit: mistyped? check it against the NPI registry`,
		`testdata/broken.yaml:8:11: clinicians[1].role: role "head nurse!" must be a lowercase word like physician, nurse or pharmacist`,
		`testdata/broken.yaml:9:22: clinicians[1].licence_expires: "June 2027" is not a date (YYYY-MM-DD)`,
		`testdata/broken.yaml:11:5: unknown key "colour" in clinicians[1]`,
		`testdata/broken.yaml:12:5: clinicians[2].verified_by: verified_by is required: who checked this person's identity and licence`,
		`testdata/broken.yaml:12:5: @a:h is listed twice (entry 2 and 3)`,
	})
}

func TestParseCSVErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"empty", "", "r.csv:1: file is empty"},
		{"unknown column", "user_id,npi,role,verified_by,shoe_size\n", `r.csv:1: unknown column "shoe_size"`},
		{"missing column", "user_id,npi,verified_by\n", `r.csv:1: column "role" is missing`},
		{"twice", "user_id,npi,role,verified_by,npi\n", `r.csv:1: column "npi" appears twice`},
		{"short row", "user_id,npi,role,verified_by\n@a:h,1234567893,nurse\n", "r.csv:2: 3 fields, but the header names 4"},
		{"bad npi", "user_id,npi,role,verified_by\n@a:h,1234567893,nurse,x\n@b:h,1234567894,nurse,x\n", `r.csv:3: npi: NPI "1234567894" fails its check digit`},
		{"bad date", "user_id,npi,role,verified_by,licence_expires\n@a:h,1234567893,nurse,x,31/12/2027\n", `r.csv:2: licence_expires: "31/12/2027" is not a date`},
		{"no verifier", "user_id,npi,role,verified_by\n@a:h,1234567893,nurse,\n", "r.csv:2: verified_by: verified_by is required"},
		{"duplicate npi", "user_id,npi,role,verified_by\n@a:h,1234567893,nurse,x\n@b:h,1234567893,nurse,x\n", "r.csv:3: NPI 1234567893 is listed twice"},
		{"bad quoting", "user_id,npi,role,verified_by\n\"@a:h,1234567893,nurse,x\n", "r.csv:2:"},
		{"every problem", "user_id,npi,role,verified_by\nbob,1234567890,Nurse?,x\n", "r.csv:2: npi"},
	}
	for _, c := range cases {
		_, err := Parse("r.csv", []byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// All of a row's problems are reported, each on its own line.
	_, err := Parse("r.csv", []byte("user_id,npi,role,verified_by\nbob,1234567890,Nurse?,x\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Fatalf("want three problems, got %v", err)
	}
}

func TestParseFHIRBundle(t *testing.T) {
	data, err := os.ReadFile("testdata/bundle.json")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	got, err := ParseFHIRBundle("bundle.json", data, "fhir-import:bundle.json", now)
	if err != nil {
		t.Fatal(err)
	}
	want := []Clinician{
		{UserID: "@kpatel:hospital.example", NPI: "1679576722", Role: "physician", LicenceExpires: date("2026-12-31"), VerifiedBy: "fhir-import:bundle.json", VerifiedAt: now},
		{UserID: "@lnguyen:hospital.example", NPI: "1588667638", Role: "pharmacist", LicenceExpires: date("2028-03-31"), VerifiedBy: "fhir-import:bundle.json", VerifiedAt: now},
	}
	if got.Inactive != 1 || len(got.Clinicians) != 2 || got.Clinicians[0] != want[0] || got.Clinicians[1] != want[1] {
		t.Fatalf("got %+v", got)
	}
	cases := []struct{ name, src, want string }{
		{"not JSON", `{"resourceType": "Bundle",`, "b.json:1:27: unexpected end of JSON input"},
		{"syntax on line 3", "{\n \"resourceType\": \"Bundle\",\n \"entry\": [}", "b.json:3:"},
		{"wrong type", `{"resourceType": "Bundle", "entry": {}}`, "b.json:1:"},
		{"not a bundle", `{"resourceType": "Practitioner"}`, `resourceType is "Practitioner", not Bundle`},
		{"no NPI", `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner","id":"x","identifier":[{"system":"urn:matrix:user-id","value":"@a:h"}],"qualification":[{"code":{"text":"RN"}}]}}]}`,
			"entry[0] (Practitioner/x): no NPI identifier"},
		{"no Matrix ID", `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner","id":"x","identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"}],"qualification":[{"code":{"text":"RN"}}]}}]}`,
			"no Matrix user ID identifier"},
		{"bad NPI", `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner","id":"x","identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567890"},{"system":"urn:matrix:user-id","value":"@a:h"}],"qualification":[{"code":{"text":"RN"}}]}}]}`,
			"npi: NPI \"1234567890\" fails its check digit"},
		{"no qualification", `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner","id":"x","identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"},{"system":"urn:matrix:user-id","value":"@a:h"}]}}]}`,
			"no qualification"},
		{"bad period", `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner","id":"x","identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"},{"system":"urn:matrix:user-id","value":"@a:h"}],"qualification":[{"code":{"text":"RN"},"period":{"end":"soon"}}]}}]}`,
			`qualification period end: "soon" is not a date`},
		{"entry not a resource", `{"resourceType":"Bundle","entry":[{"resource":7}]}`, "entry[0]: not a Practitioner resource"},
	}
	for _, c := range cases {
		_, err := ParseFHIRBundle("b.json", []byte(c.src), "x", now)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestClinicianValid(t *testing.T) {
	c := Clinician{LicenceExpires: date("2026-12-31")}
	for at, want := range map[string]bool{"2026-12-31T23:59:59Z": true, "2027-01-01T00:00:00Z": false, "2020-01-01T00:00:00Z": true} {
		now, _ := time.Parse(time.RFC3339, at)
		if c.Valid(now) != want {
			t.Errorf("valid at %s: %v", at, !want)
		}
	}
	if !(&Clinician{}).Valid(time.Now()) {
		t.Error("no expiry known counts as expired")
	}
}

// Rosters come from files people edit by hand and from other systems:
// whatever they hold, parsing never panics, and what it accepts is valid.
func FuzzRoster(f *testing.F) {
	for _, p := range []string{"testdata/roster.yaml", "testdata/broken.yaml", "testdata/roster.csv"} {
		data, _ := os.ReadFile(p)
		f.Add(p[len(p)-4:], data)
	}
	f.Fuzz(func(t *testing.T, ext string, data []byte) {
		name := "r.yaml"
		if strings.HasSuffix(ext, "csv") {
			name = "r.csv"
		}
		got, err := Parse(name, data)
		if err != nil {
			return
		}
		for _, c := range got {
			if CheckNPI(c.NPI) != nil || CheckUserID(c.UserID) != nil || CheckRole(c.Role) != nil || c.VerifiedBy == "" {
				t.Fatalf("accepted %+v", c)
			}
		}
	})
}

func FuzzFHIRBundle(f *testing.F) {
	data, _ := os.ReadFile("testdata/bundle.json")
	f.Add(data)
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Practitioner"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseFHIRBundle("b.json", data, "fuzz", time.Now())
		if err != nil {
			return
		}
		for _, c := range got.Clinicians {
			if CheckNPI(c.NPI) != nil || CheckUserID(c.UserID) != nil || CheckRole(c.Role) != nil {
				t.Fatalf("accepted %+v", c)
			}
		}
	})
}

// A refused NPI's error never tells which check digit would pass: it would
// turn a typo into a plausible, wrong NPI that someone pastes back in.
func TestNPIErrorDoesNotRevealTheCheckDigit(t *testing.T) {
	for _, base := range []string{"123456789", "100300012", "167957672", "999999999", "100000000"} {
		good := base + string(npiCheckDigit(base))
		for d := '0'; d <= '9'; d++ {
			npi := base + string(d)
			if npi == good {
				continue
			}
			err := CheckNPI(npi)
			if err == nil {
				t.Fatalf("%s accepted", npi)
			}
			if strings.Contains(err.Error(), good) || strings.Contains(err.Error(), "expected") {
				t.Fatalf("error for %s reveals the valid NPI: %v", npi, err)
			}
		}
	}
}
