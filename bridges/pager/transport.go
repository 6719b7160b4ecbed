package pager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Outgoing is one page as a transport sends it.
type Outgoing struct {
	ID        string // our message ID (WCTP messageID)
	Recipient string
	PIN       string
	Text      string
	Priority  policy.PagePriority
	// Choices are offered where the device shows them.
	Choices   []string
	TwoWay    bool
	Submitted time.Time
}

// Transport is one gateway's protocol. Send reports what the gateway said
// of the page (a tag to ask about it later, where the protocol has one).
// Its error says, through Temporary and OutcomeUnknown, whether a retry
// may help and whether the page may have gone out anyway.
type Transport interface {
	Send(ctx context.Context, p Outgoing) (tag string, err error)
	Protocol() string
}

// SendError is a transport's failure, classed.
type SendError struct {
	Err       error
	Temporary bool
	Unknown   bool
}

func (e *SendError) Error() string { return e.Err.Error() }
func (e *SendError) Unwrap() error { return e.Err }

// wctpTransport sends SubmitRequest.
type wctpTransport struct{ c *wctp.Client }

func (t *wctpTransport) Protocol() string { return "wctp" }

var wctpPriority = map[policy.PagePriority]wctp.Priority{policy.PriorityStat: wctp.High, policy.PriorityUrgent: wctp.High, policy.PriorityRoutine: wctp.Normal}

func (t *wctpTransport) Send(ctx context.Context, p Outgoing) (string, error) {
	_, err := t.c.Submit(ctx, wctp.Message{
		ID: p.ID, Recipient: p.Recipient, Text: p.Text, Choices: p.Choices, Priority: wctpPriority[p.Priority],
		AllowResponse: p.TwoWay, NotifyDelivered: true, NotifyRead: true, Submitted: p.Submitted,
	})
	if err != nil {
		return "", &SendError{Err: err, Temporary: wctp.IsTemporary(err), Unknown: wctp.OutcomeUnknown(err)}
	}
	return p.ID, nil
}

// snppTransport pages over one SNPP connection per page.
type snppTransport struct{ c *snpp.Client }

func (t *snppTransport) Protocol() string { return "snpp" }

// snppLevel is SNPP's service level: 0 is the most urgent.
var snppLevel = map[policy.PagePriority]int{policy.PriorityStat: 0, policy.PriorityUrgent: 1, policy.PriorityRoutine: 2}

func (t *snppTransport) Send(ctx context.Context, p Outgoing) (string, error) {
	choices := p.Choices
	if !p.TwoWay {
		choices = nil
	}
	sent, err := t.c.Send(ctx, snpp.Page{Pager: p.Recipient, PIN: p.PIN, Text: p.Text, Level: snppLevel[p.Priority], Choices: choices})
	if err != nil {
		return "", &SendError{Err: err, Temporary: snpp.IsTemporary(err), Unknown: snpp.OutcomeUnknown(err)}
	}
	if sent.Tag != "" {
		return sent.Tag + " " + sent.Pass, nil
	}
	return "", nil
}

// lookup asks a WCTP gateway what a recipient's device shows.
func (t *wctpTransport) lookup(ctx context.Context, recipient string) (*wctp.Capabilities, error) {
	return t.c.Lookup(ctx, PageID("lookup:"+recipient), recipient)
}

// status asks a level 3 gateway about a page by its tag ("tag pass"), as
// an Inbound the bridge stores like a WCTP status or reply.
func (t *snppTransport) status(ctx context.Context, pageID, tag string) (wctp.Inbound, error) {
	msgTag, pass, _ := strings.Cut(tag, " ")
	st, err := t.c.Status(ctx, msgTag, pass)
	if err != nil {
		return wctp.Inbound{}, err
	}
	in := wctp.Inbound{Kind: wctp.KindStatus, MessageID: pageID}
	switch {
	case st.Response != "":
		in.Kind, in.Text, in.Choice = wctp.KindReply, st.Response, st.ResponseCode != ""
	case st.Read:
		in.Status = wctp.Read
	case st.Delivered:
		in.Status = wctp.Delivered
	default:
		in.Status = wctp.Queued
	}
	return in, nil
}

// NewTransport makes g's transport.
func NewTransport(g config.Gateway) (Transport, error) {
	timeout := g.Timeout.D()
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	switch g.Protocol {
	case "wctp":
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
		if g.CAFile != "" {
			pem, err := os.ReadFile(g.CAFile)
			if err != nil {
				return nil, fmt.Errorf("gateway %s: ca_file: %w", g.Name, err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("gateway %s: ca_file %s holds no PEM certificate", g.Name, g.CAFile)
			}
			tlsConf.RootCAs = pool
		}
		hc := &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: tlsConf, Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 4}}
		return &wctpTransport{c: &wctp.Client{URL: g.URL, SenderID: g.SenderID, SecurityCode: g.SecurityCode.Reveal(), HTTP: hc}}, nil
	case "snpp":
		return &snppTransport{c: &snpp.Client{Addr: g.Address, Login: g.Login, Password: g.Password.Reveal(), TwoWay: g.TwoWay, Site: g.SiteCommands, Timeout: timeout}}, nil
	}
	return nil, fmt.Errorf("gateway %s: protocol %q", g.Name, g.Protocol)
}
