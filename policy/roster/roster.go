// Package roster is the hospital's list of verified clinicians: who each is
// on Matrix, their NPI (checked), role, department, licence expiry and who
// verified them. It parses the roster file (YAML or CSV) and FHIR R4
// Bundles of Practitioner resources; it does no I/O of its own.
package roster

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Clinician is one verified person.
type Clinician struct {
	UserID     string
	NPI        string
	Role       string // physician, nurse, pharmacist, … (lowercase)
	Department string
	// LicenceExpires is the last day the licence is valid (UTC date); the
	// person stops being verified when it has passed. Zero: no expiry known.
	LicenceExpires time.Time
	VerifiedBy     string
	VerifiedAt     time.Time
}

// Valid reports whether c counts as verified at now.
func (c *Clinician) Valid(now time.Time) bool {
	return c.LicenceExpires.IsZero() || now.Before(c.LicenceExpires.AddDate(0, 0, 1))
}

// CheckNPI validates a National Provider Identifier: ten digits, the last a
// Luhn check digit computed over the card-issuer prefix 80840 and the first
// nine (CMS's NPI check digit standard).
func CheckNPI(npi string) error {
	if len(npi) != 10 {
		return fmt.Errorf("NPI %q must be 10 digits", npi)
	}
	for _, r := range npi {
		if r < '0' || r > '9' {
			return fmt.Errorf("NPI %q must be 10 digits", npi)
		}
	}
	if npi[0] != '1' && npi[0] != '2' {
		return fmt.Errorf("NPI %q must start with 1 (a person) or 2 (an organisation)", npi)
	}
	if want := npiCheckDigit(npi[:9]); npi[9] != want {
		// Never which digit would pass: that turns a typo into a
		// plausible, wrong NPI someone could paste back in.
		return fmt.Errorf("NPI %q fails its check digit: mistyped? check it against the NPI registry", npi)
	}
	return nil
}

// npiCheckDigit is the Luhn check digit of "80840" followed by base (nine
// digits): from the right, every other digit starting with the rightmost is
// doubled (digits of products summed), and the check digit brings the total
// to a multiple of ten.
func npiCheckDigit(base string) byte {
	digits := "80840" + base
	sum := 0
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if (len(digits)-1-i)%2 == 0 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return byte('0' + (10-sum%10)%10)
}

var (
	roleRE   = regexp.MustCompile(`^[a-z][a-z0-9_-]{1,39}$`)
	userIDRE = regexp.MustCompile(`^@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:[0-9]{1,5})?$`)
)

// CheckUserID validates a Matrix user ID as rosters must write it.
func CheckUserID(u string) error {
	if !userIDRE.MatchString(u) {
		return fmt.Errorf("%q is not a Matrix user ID (@name:server)", u)
	}
	return nil
}

// CheckRole validates a role name: lowercase, like physician or charge-nurse.
func CheckRole(r string) error {
	if !roleRE.MatchString(r) {
		return fmt.Errorf("role %q must be a lowercase word like physician, nurse or pharmacist", r)
	}
	return nil
}

// ParseDate reads a licence expiry or verification date: YYYY-MM-DD, or an
// RFC 3339 time (its UTC date is used for expiry).
func ParseDate(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a date (YYYY-MM-DD)", s)
}

// check validates one clinician's fields and returns what is wrong, field by
// field, so a file's errors can point at each.
func (c *Clinician) check() map[string]string {
	bad := map[string]string{}
	if err := CheckUserID(c.UserID); err != nil {
		bad["user_id"] = err.Error()
	}
	if err := CheckNPI(c.NPI); err != nil {
		bad["npi"] = err.Error()
	}
	if err := CheckRole(c.Role); err != nil {
		bad["role"] = err.Error()
	}
	if c.VerifiedBy == "" {
		bad["verified_by"] = "verified_by is required: who checked this person's identity and licence"
	}
	return bad
}

// fields lists the columns of a roster row, in CSV order.
var fields = []string{"user_id", "npi", "role", "department", "licence_expires", "verified_by", "verified_at"}

// duplicates reports entries that repeat a user ID or an NPI.
func duplicates(cs []Clinician) map[int]string {
	out := map[int]string{}
	users, npis := map[string]int{}, map[string]int{}
	for i, c := range cs {
		if j, ok := users[c.UserID]; ok && c.UserID != "" {
			out[i] = fmt.Sprintf("%s is listed twice (entry %d and %d)", c.UserID, j+1, i+1)
		}
		if j, ok := npis[c.NPI]; ok && c.NPI != "" {
			out[i] = fmt.Sprintf("NPI %s is listed twice (entry %d and %d)", c.NPI, j+1, i+1)
		}
		users[c.UserID], npis[c.NPI] = i, i
	}
	return out
}
