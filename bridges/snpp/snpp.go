// Package snpp is a client of the Simple Network Paging Protocol (RFC 1861)
// that older paging gateways speak over plain TCP: LOGIn, PAGEr, LEVEl,
// MESSage or DATA, SEND and QUIT, and, where the gateway offers level 3,
// 2WAy with multiple-choice responses (MCREsponse) and MSTAtus for delivery,
// read and reply.
//
// SNPP has no encryption: whatever is sent can be read on the network, so
// the pager bridge sends only its PHI-free template text this way.
package snpp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Reply is one server reply: a three-digit code and its text.
type Reply struct {
	Code int
	Text string
}

// MaxLine is the longest reply line read.
const MaxLine = 4096

// ReadReply reads one reply. Continuation lines ("214-...") are joined to
// the final one ("214 ..."). A line that is not a code and text, or one
// longer than MaxLine, is an error.
func ReadReply(r *bufio.Reader) (Reply, error) {
	var texts []string
	for n := 0; n < 100; n++ {
		line, err := readLine(r)
		if err != nil {
			return Reply{}, err
		}
		if len(line) < 3 {
			return Reply{}, fmt.Errorf("snpp: reply %q is not a code and text", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 100 || line[0] == '+' || line[0] == '-' {
			return Reply{}, fmt.Errorf("snpp: reply %q is not a code and text", line)
		}
		rest := line[3:]
		switch {
		case rest == "":
			return Reply{Code: code, Text: strings.Join(texts, "\n")}, nil
		case rest[0] == ' ':
			texts = append(texts, rest[1:])
			return Reply{Code: code, Text: strings.Join(texts, "\n")}, nil
		case rest[0] == '-':
			texts = append(texts, rest[1:])
		default:
			return Reply{}, fmt.Errorf("snpp: reply %q is not a code and text", line)
		}
	}
	return Reply{}, errors.New("snpp: a reply of more than 100 lines")
}

func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > MaxLine {
			return "", fmt.Errorf("snpp: a reply line longer than %d bytes", MaxLine)
		}
		if !isPrefix {
			return strings.TrimRight(string(b), "\r"), nil
		}
	}
}

// Error is a failed exchange: the server's reply code and text, or a
// transport failure (Code 0).
type Error struct {
	Command string
	Code    int
	Text    string
	// Unknown is set where SEND may have reached the server before the
	// failure: a retry may page twice.
	Unknown bool
	err     error
}

func (e *Error) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("snpp: %s: %v", e.Command, e.err)
	}
	return fmt.Sprintf("snpp: %s: %d %s", e.Command, e.Code, e.Text)
}

func (e *Error) Unwrap() error { return e.err }

// Temporary reports whether a retry may succeed: transport failures and
// 4xx (421: the gateway is unavailable or closing). 5xx (a bad pager ID,
// a message refused) and 7xx (a failed two-way transaction) are not.
func (e *Error) Temporary() bool { return e.Code == 0 || (e.Code >= 400 && e.Code < 500) }

// IsTemporary reports whether err is a temporary SNPP failure.
func IsTemporary(err error) bool {
	var se *Error
	return errors.As(err, &se) && se.Temporary()
}

// OutcomeUnknown reports whether err leaves it unknown whether the page
// went out.
func OutcomeUnknown(err error) bool {
	var se *Error
	return errors.As(err, &se) && se.Unknown
}

// Client pages through one gateway; each Send is one connection (some
// gateways, HylaFAX's hfaxd among them, take one PAGEr per SEND).
type Client struct {
	Addr string
	// Login and Password, when Login is set, are sent with LOGIn first.
	// Password is a secret, never in an error.
	Login, Password string
	// Site are SITE commands sent after login, for what a gateway needs
	// beyond RFC 1861: HylaFAX's hfaxd holds SEND until the page job has
	// ended (minutes, on a modem) unless told "JQUEUE YES".
	Site []string
	// TwoWay asks for level 3 (2WAy) where the gateway offers it; a
	// gateway that refuses it gets a level 2 page.
	TwoWay bool
	// Timeout bounds one whole exchange (0: 30 s).
	Timeout time.Duration
	// Dial, when set, replaces net.Dialer (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Page is one page.
type Page struct {
	Pager string
	PIN   string
	Text  string
	// Level is the SNPP service level, 0 to 11 (-1: not sent). Gateways
	// that do not know LEVEl are paged without it.
	Level int
	// Choices are offered as multiple-choice responses on a level 3
	// gateway (at most 16).
	Choices []string
}

// Sent is what a gateway said of a page it took. Tag and Pass name a
// level 3 page for MSTAtus; both are empty at level 2.
type Sent struct {
	Code      int
	Text      string
	Tag, Pass string
}

type conn struct {
	c net.Conn
	r *bufio.Reader
}

func (c *Client) open(ctx context.Context) (*conn, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := c.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	nc, err := dial(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, &Error{Command: "connect", err: err}
	}
	nc.SetDeadline(time.Now().Add(timeout))
	cn := &conn{c: nc, r: bufio.NewReader(nc)}
	greet, err := ReadReply(cn.r)
	if err != nil {
		nc.Close()
		return nil, &Error{Command: "greeting", err: err}
	}
	if greet.Code != 220 {
		nc.Close()
		return nil, &Error{Command: "greeting", Code: greet.Code, Text: greet.Text}
	}
	if c.Login != "" {
		args := []string{c.Login}
		if c.Password != "" {
			args = append(args, c.Password)
		}
		if _, err := cn.cmd("LOGI", args, 250); err != nil {
			nc.Close()
			var se *Error
			if errors.As(err, &se) && c.Password != "" {
				// Some servers echo the command line in their error.
				se.Text = strings.ReplaceAll(se.Text, c.Password, "<secret>")
			}
			return nil, err
		}
	}
	for _, site := range c.Site {
		if _, err := cn.cmd("SITE", []string{site}, 250); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return cn, nil
}

// cmd sends a command and reads its reply, which must have one of the
// codes ok. Arguments are cleaned of line breaks (a text cannot start a
// command of its own). The error names the command, never its arguments.
func (cn *conn) cmd(verb string, args []string, ok ...int) (Reply, error) {
	line := verb
	for _, a := range args {
		line += " " + oneLine(a)
	}
	if _, err := io.WriteString(cn.c, line+"\r\n"); err != nil {
		return Reply{}, &Error{Command: verb, err: err, Unknown: verb == "SEND"}
	}
	rep, err := ReadReply(cn.r)
	if err != nil {
		return Reply{}, &Error{Command: verb, err: err, Unknown: verb == "SEND"}
	}
	for _, o := range ok {
		if rep.Code == o {
			return rep, nil
		}
	}
	return rep, &Error{Command: verb, Code: rep.Code, Text: rep.Text}
}

func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}

// Send pages p, over one connection of its own.
func (c *Client) Send(ctx context.Context, p Page) (Sent, error) {
	cn, err := c.open(ctx)
	if err != nil {
		return Sent{}, err
	}
	defer cn.c.Close()
	twoWay := false
	if c.TwoWay {
		rep, err := cn.cmd("2WAY", nil, 250)
		switch {
		case err == nil:
			twoWay = true
		case rep.Code >= 500 && rep.Code < 600:
			// Level 2 only (500 unimplemented, 550 refused): page without.
		default:
			return Sent{}, err
		}
	}
	args := []string{p.Pager}
	if p.PIN != "" {
		args = append(args, p.PIN)
	}
	if _, err := cn.cmd("PAGE", args, 250); err != nil {
		return Sent{}, err
	}
	if p.Level >= 0 && p.Level <= 11 {
		if rep, err := cn.cmd("LEVE", []string{strconv.Itoa(p.Level)}, 250); err != nil && !(rep.Code >= 500 && rep.Code < 600) {
			return Sent{}, err
		}
	}
	if twoWay {
		for i, ch := range p.Choices {
			if i >= 16 {
				break
			}
			if _, err := cn.cmd("MCRE", []string{fmt.Sprintf("%02d", i+1), ch}, 250); err != nil {
				return Sent{}, err
			}
		}
	}
	if _, err := cn.cmd("MESS", []string{p.Text}, 250); err != nil {
		return Sent{}, err
	}
	rep, err := cn.cmd("SEND", nil, 250, 860, 960)
	if err != nil {
		return Sent{}, err
	}
	s := Sent{Code: rep.Code, Text: rep.Text}
	if rep.Code == 860 || rep.Code == 960 {
		if f := strings.Fields(rep.Text); len(f) >= 2 {
			s.Tag, s.Pass = f[0], f[1]
		}
	}
	cn.cmd("QUIT", nil, 221) // the page is sent; a rude goodbye changes nothing
	return s, nil
}

// Status is a level 3 page's state as MSTAtus reports it.
type Status struct {
	// Code is the reply: 960 queued, 860 delivered and awaiting read,
	// 880 read; 889 and a response (ResponseCode, Response) where the
	// device answered.
	Code         int
	Delivered    bool
	Read         bool
	ResponseCode string
	Response     string
}

// Status asks a level 3 gateway about the page tag, pass named.
func (c *Client) Status(ctx context.Context, tag, pass string) (Status, error) {
	cn, err := c.open(ctx)
	if err != nil {
		return Status{}, err
	}
	defer cn.c.Close()
	rep, err := cn.cmd("MSTA", []string{tag, pass}, 860, 880, 888, 889, 960)
	if err != nil {
		return Status{}, err
	}
	cn.cmd("QUIT", nil, 221)
	return ParseStatus(rep), nil
}

// ParseStatus reads an MSTAtus reply: "8xx <sequence> <date&time> <text>".
func ParseStatus(rep Reply) Status {
	st := Status{Code: rep.Code}
	f := strings.Fields(rep.Text)
	switch {
	case rep.Code == 860:
		st.Delivered = true
	case rep.Code == 880:
		st.Delivered, st.Read = true, true
	case rep.Code == 888 || rep.Code == 889:
		st.Delivered, st.Read = true, true
		// "889 <sequence> <date&time> <response code> <response text>"
		if len(f) >= 3 {
			st.ResponseCode = f[2]
			st.Response = strings.Join(f[3:], " ")
		}
	}
	return st
}
