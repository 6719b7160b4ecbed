// Package pager is the pager bridge: it pages people and on-call roles
// through the hospital's paging gateways (WCTP, SNPP) when a message
// arrives in a room linked to them, and takes the gateways' statuses and
// replies back to the room. A page carries no PHI: its text is a template
// with an opaque reference to the message, never a room name, a sender or
// message text.
package pager

import (
	"fmt"
	"os"
	"strings"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

// Pager is one person's pager: which gateway reaches it, and its ID there.
type Pager struct {
	User      string `yaml:"user"`
	Gateway   string `yaml:"gateway"`
	Recipient string `yaml:"recipient"`
	// PIN is sent with SNPP's PAGEr where the gateway wants one.
	PIN string `yaml:"pin"`
	// MaxLength, when set, is shorter than the gateway's (an SMS-backed
	// device: 160).
	MaxLength int `yaml:"max_length"`
	// TwoWay: the device can answer; MultipleChoice: it shows choices
	// (Accept / Decline).
	TwoWay         bool `yaml:"two_way"`
	MultipleChoice bool `yaml:"multiple_choice"`
}

// Directory is who carries which pager.
type Directory struct {
	Version int     `yaml:"version"`
	Pagers  []Pager `yaml:"pagers"`

	byUser map[string]Pager
}

// Lookup is user's pager.
func (d *Directory) Lookup(user string) (Pager, bool) {
	if d == nil {
		return Pager{}, false
	}
	p, ok := d.byUser[user]
	return p, ok
}

// Len is how many people have a pager.
func (d *Directory) Len() int {
	if d == nil {
		return 0
	}
	return len(d.byUser)
}

// LoadDirectory reads and validates a directory file; gateways are the
// names the config defines. Errors are file:line:col.
func LoadDirectory(file string, gateways map[string]bool) (*Directory, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return ParseDirectory(file, data, gateways)
}

// ParseDirectory validates directory YAML.
func ParseDirectory(file string, data []byte, gateways map[string]bool) (*Directory, error) {
	d := &Directory{}
	doc := strictyaml.Decode(file, data, d)
	if doc.Root != nil {
		if d.Version != 1 {
			doc.Errorf("version", "version: 1 is required")
		}
		d.byUser = map[string]Pager{}
		for i, p := range d.Pagers {
			at := fmt.Sprintf("pagers[%d]", i)
			switch {
			case !validUser(p.User):
				doc.Errorf(at+".user", "%s.user %q is not a user ID (@user:server)", at, p.User)
			case d.byUser[p.User] != (Pager{}):
				doc.Errorf(at+".user", "%s.user %s is listed twice", at, p.User)
			}
			if !gateways[p.Gateway] {
				doc.Errorf(at+".gateway", "%s.gateway %q is not a gateway in the config (pager.gateways)", at, p.Gateway)
			}
			if p.Recipient == "" || strings.ContainsAny(p.Recipient, " \t\r\n") {
				doc.Errorf(at+".recipient", "%s.recipient must be the pager's ID at the gateway, without spaces", at)
			}
			if strings.ContainsAny(p.PIN, " \t\r\n") {
				doc.Errorf(at+".pin", "%s.pin must not hold spaces", at)
			}
			if p.MaxLength < 0 || (p.MaxLength > 0 && p.MaxLength < 40) {
				doc.Errorf(at+".max_length", "%s.max_length must be 0 (the gateway's) or at least 40", at)
			}
			d.byUser[p.User] = p
		}
	}
	if err := doc.Err(); err != nil {
		return nil, err
	}
	return d, nil
}

func validUser(u string) bool {
	return strings.HasPrefix(u, "@") && strings.Index(u, ":") > 1 && !strings.ContainsAny(u, " \t\r\n")
}
