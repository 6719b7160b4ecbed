package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

// Pager is the pager bridge: the gateways it pages through, the directory
// of who carries which pager, and the on-call schedule. With no gateways
// the bridge is off.
type Pager struct {
	// Directory maps Matrix users to their pagers (YAML), relative to this
	// file's folder; reloaded when it changes.
	Directory string `yaml:"directory"`
	// Schedule names who is on call for each role (YAML, or CSV where the
	// name ends in .csv), relative to this file's folder; reloaded when it
	// changes.
	Schedule string `yaml:"schedule"`
	// EndpointSecurityCode, when set, is what a WCTP gateway must send (as
	// its originator's securityCode or the HTTP Basic password) with the
	// statuses and replies it pushes to /_hipaa/wctp/<gateway>.
	EndpointSecurityCode Secret `yaml:"endpoint_security_code"`
	// Template is the text of every page; {ref} is the page's opaque
	// reference and {priority} its priority. Nothing else can be put in:
	// no room name, sender or message text reaches a pager.
	Template string    `yaml:"template"`
	Gateways []Gateway `yaml:"gateways"`
}

// Gateway is one paging gateway.
type Gateway struct {
	// Name names the gateway in the directory, audit records and metrics.
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"` // wctp or snpp

	// WCTP: the gateway's URL (https://; http:// only to loopback), the
	// sender ID and security code it knows this service by, and a CA file
	// to verify its certificate with besides the system's. PollInterval
	// > 0 polls for statuses and replies (PollForMessages) instead of
	// waiting for pushes.
	URL          string   `yaml:"url"`
	SenderID     string   `yaml:"sender_id"`
	SecurityCode Secret   `yaml:"security_code"`
	CAFile       string   `yaml:"ca_file"`
	PollInterval Duration `yaml:"poll_interval"`

	// SNPP: host:port, the login and password (LOGIn), whether to ask
	// for level 3 (two_way), and SITE commands sent after login. With
	// two_way and poll_interval > 0, level 3 pages' status and replies
	// are asked for (MSTAtus) every poll_interval.
	Address      string   `yaml:"address"`
	Login        string   `yaml:"login"`
	Password     Secret   `yaml:"password"`
	TwoWay       bool     `yaml:"two_way"`
	SiteCommands []string `yaml:"site_commands"`

	// MaxLength is the longest page text the gateway's pagers show (0:
	// 240; SMS-backed gateways: 160).
	MaxLength int `yaml:"max_length"`
	// Timeout bounds one send (0: 30s).
	Timeout Duration `yaml:"timeout"`
}

// DefaultPageTemplate is the page text unless the config sets another.
const DefaultPageTemplate = "New secure message in Element (ref {ref})"

// DefaultPageLength is a gateway's page length unless it sets max_length.
const DefaultPageLength = 240

// Length is the gateway's page length.
func (g *Gateway) Length() int {
	if g.MaxLength > 0 {
		return g.MaxLength
	}
	return DefaultPageLength
}

var gatewayNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// PageTemplatePlaceholders are what a page template may hold.
var PageTemplatePlaceholders = []string{"{ref}", "{priority}"}

func (p *Pager) resolvePaths(c *Config) {
	p.Directory, p.Schedule = c.Resolve(p.Directory), c.Resolve(p.Schedule)
	for i := range p.Gateways {
		p.Gateways[i].CAFile = c.Resolve(p.Gateways[i].CAFile)
	}
}

func (p *Pager) validate(d *strictyaml.Doc) {
	if p.Template == "" {
		p.Template = DefaultPageTemplate
	}
	rest := p.Template
	for _, ph := range PageTemplatePlaceholders {
		rest = strings.ReplaceAll(rest, ph, "")
	}
	if strings.ContainsAny(rest, "{}") {
		d.Errorf("pager.template", "pager.template may hold only %s: pages carry no room names, senders or message text", strings.Join(PageTemplatePlaceholders, " and "))
	}
	if !strings.Contains(p.Template, "{ref}") {
		d.Errorf("pager.template", "pager.template must hold {ref}, so a page can be traced to its message")
	}
	if len(p.Gateways) > 0 && p.Directory == "" && p.Schedule == "" {
		d.Errorf("pager.directory", "pager.directory is required with gateways (who carries which pager)")
	}
	names := map[string]bool{}
	for i := range p.Gateways {
		g := &p.Gateways[i]
		at := fmt.Sprintf("pager.gateways[%d]", i)
		if !gatewayNameRE.MatchString(g.Name) {
			d.Errorf(at+".name", "%s.name %q must be 1-40 lowercase letters, digits, - or _", at, g.Name)
		} else if names[g.Name] {
			d.Errorf(at+".name", "%s.name %q is used twice", at, g.Name)
		}
		names[g.Name] = true
		if g.MaxLength < 0 || (g.MaxLength > 0 && g.MaxLength < 40) {
			d.Errorf(at+".max_length", "%s.max_length must be 0 (240) or at least 40", at)
		}
		switch g.Protocol {
		case "wctp":
			u, err := url.Parse(g.URL)
			switch {
			case g.URL == "" || err != nil || u.Host == "":
				d.Errorf(at+".url", "%s.url must be the gateway's https:// URL", at)
			case u.Scheme == "http" && !loopback(u.Hostname()):
				d.Errorf(at+".url", "%s.url: WCTP carries the security code: use https:// (http:// only to a loopback address)", at)
			case u.Scheme != "https" && u.Scheme != "http":
				d.Errorf(at+".url", "%s.url must be https://", at)
			case u.User != nil:
				d.Errorf(at+".url", "%s.url must not hold credentials (use sender_id and security_code)", at)
			}
			if g.SenderID == "" {
				d.Errorf(at+".sender_id", "%s.sender_id is required for WCTP", at)
			}
			if g.PollInterval != 0 && g.PollInterval.D().Seconds() < 1 {
				d.Errorf(at+".poll_interval", "%s.poll_interval must be 0 (the gateway pushes) or at least 1s", at)
			}
			if g.PollInterval == 0 && len(p.EndpointSecurityCode.Reveal()) < 16 {
				// Without it, anyone who reaches the endpoint could mark
				// pages delivered or accepted, ending escalations.
				d.Errorf("pager.endpoint_security_code", "pager.endpoint_security_code must be at least 16 characters when a WCTP gateway pushes to the service (%s)", at)
			}
		case "snpp":
			if _, _, err := net.SplitHostPort(g.Address); err != nil {
				d.Errorf(at+".address", "%s.address must be host:port", at)
			}
			if g.PollInterval != 0 && (!g.TwoWay || g.PollInterval.D().Seconds() < 1) {
				d.Errorf(at+".poll_interval", "%s.poll_interval (MSTAtus) needs two_way and must be at least 1s", at)
			}
			for j, s := range g.SiteCommands {
				if s == "" || strings.ContainsAny(s, "\r\n") {
					d.Errorf(fmt.Sprintf("%s.site_commands[%d]", at, j), "%s.site_commands[%d] must be one line", at, j)
				}
			}
		default:
			d.Errorf(at+".protocol", "%s.protocol must be wctp or snpp", at)
		}
	}
}
