package snpp_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp/snpptest"
)

func TestReadReply(t *testing.T) {
	cases := []struct {
		in   string
		code int
		text string
		bad  bool
	}{
		{"220 SNPP Gateway Ready\r\n", 220, "SNPP Gateway Ready", false},
		{"250\r\n", 250, "", false},
		{"214-line one\r\n214-line two\r\n214 end\r\n", 214, "line one\nline two\nend", false},
		{"960 123 456 OK, Message QUEUED for Delivery\n", 960, "123 456 OK, Message QUEUED for Delivery", false},
		{"hello\r\n", 0, "", true},
		{"25\r\n", 0, "", true},
		{"-12 x\r\n", 0, "", true},
		{"250x\r\n", 0, "", true},
		{"250 " + strings.Repeat("a", snpp.MaxLine) + "\r\n", 0, "", true},
		{"", 0, "", true},
	}
	for _, c := range cases {
		r, err := snpp.ReadReply(bufio.NewReader(strings.NewReader(c.in)))
		if c.bad {
			if err == nil {
				t.Errorf("%q read as %+v", c.in, r)
			}
			continue
		}
		if err != nil || r.Code != c.code || r.Text != c.text {
			t.Errorf("%q: %+v %v", c.in, r, err)
		}
	}
}

func TestParseStatus(t *testing.T) {
	cases := []struct {
		rep             snpp.Reply
		delivered, read bool
		code, response  string
	}{
		{snpp.Reply{Code: 960, Text: "12 0 OK, Message QUEUED"}, false, false, "", ""},
		{snpp.Reply{Code: 860, Text: "1 20261205100000 Delivered, Awaiting Read Confirmation"}, true, false, "", ""},
		{snpp.Reply{Code: 880, Text: "1 20261205100000 Read"}, true, true, "", ""},
		{snpp.Reply{Code: 889, Text: "1 20261205100000 01 Accept"}, true, true, "01", "Accept"},
	}
	for _, c := range cases {
		st := snpp.ParseStatus(c.rep)
		if st.Delivered != c.delivered || st.Read != c.read || st.ResponseCode != c.code || st.Response != c.response {
			t.Errorf("%+v: %+v", c.rep, st)
		}
	}
}

func FuzzReadReply(f *testing.F) {
	f.Add([]byte("220 ready\r\n"))
	f.Add([]byte("214-a\r\n214 b\r\n"))
	f.Add([]byte("889 1 2 01 Accept\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := snpp.ReadReply(bufio.NewReader(strings.NewReader(string(data))))
		if err == nil && (r.Code < 100 || r.Code > 999) {
			t.Fatalf("code %d read from %q", r.Code, data)
		}
		snpp.ParseStatus(r)
	})
}

// Level 3 against Debian's Net::SNPP::Server: 2WAy, multiple-choice
// responses, LEVEl and MSTAtus.
func TestLevelThreeAgainstNetSNPPServer(t *testing.T) {
	srv := snpptest.StartPerl(t)
	ctx := context.Background()
	c := &snpp.Client{Addr: srv.Addr, Login: srv.Login, Password: srv.Password, TwoWay: true, Timeout: 10 * time.Second}
	sent, err := c.Send(ctx, snpp.Page{Pager: "5551234", Text: "New secure message in Element (ref K7Q2)", Level: 0, Choices: []string{"Accept", "Decline"}})
	if err != nil {
		t.Fatal(err)
	}
	if sent.Code != 960 || sent.Tag == "" || sent.Pass == "" {
		t.Fatalf("a two-way send answered %+v", sent)
	}
	pages := srv.Pages(t)
	if len(pages) != 1 {
		t.Fatalf("%d pages taken", len(pages))
	}
	p := pages[0]
	if p.Pager != "5551234" || p.Message != "New secure message in Element (ref K7Q2)" || fmt.Sprint(p.Level) != "0" || p.Login != "hipaa" ||
		// (the Perl server keeps each response with its code in front)
		!strings.HasSuffix(p.Responses["01"], "Accept") || !strings.HasSuffix(p.Responses["02"], "Decline") || p.TwoWay == nil {
		t.Fatalf("the server took %+v", p)
	}
	st, err := c.Status(ctx, sent.Tag, sent.Pass)
	if err != nil || st.Delivered {
		t.Fatalf("status of a queued page: %+v %v", st, err)
	}
	srv.SetStatus(t, sent.Tag, "889 1 20261205100000 01 Accept")
	st, err = c.Status(ctx, sent.Tag, sent.Pass)
	if err != nil || !st.Read || st.ResponseCode != "01" || st.Response != "Accept" {
		t.Fatalf("status after the reply: %+v %v", st, err)
	}
	// A line break in the text cannot start a command of its own.
	if _, err := c.Send(ctx, snpp.Page{Pager: "5551234", Text: "a\r\nPAGE 666\r\nSEND", Level: -1}); err != nil {
		t.Fatal(err)
	}
	pages = srv.Pages(t)
	if len(pages) != 2 || pages[1].Pager != "5551234" || strings.ContainsAny(pages[1].Message, "\r\n") {
		t.Fatalf("an injected command: %+v", pages)
	}
	// A wrong password is refused for good, and the password is in no error.
	bad := &snpp.Client{Addr: srv.Addr, Login: srv.Login, Password: "wrong-secret", Timeout: 10 * time.Second}
	_, err = bad.Send(ctx, snpp.Page{Pager: "5551234", Text: "x", Level: -1})
	if err == nil || snpp.IsTemporary(err) || strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("a wrong password: %v", err)
	}
}

// Level 2 against HylaFAX's hfaxd: it needs LOGIn, has no level 3 (the
// client falls back), and the page lands in its spool.
func TestAgainstHylaFAX(t *testing.T) {
	h := snpptest.StartHylaFAX(t)
	ctx := context.Background()
	c := &snpp.Client{Addr: h.Addr, Login: h.Login, Password: h.Password, Site: []string{"JQUEUE YES"}, TwoWay: true, Timeout: 20 * time.Second}
	for _, pager := range []string{"5551234", "5559876"} {
		sent, err := c.Send(ctx, snpp.Page{Pager: pager, Text: "New secure message in Element (ref K7Q2)", Level: 1, Choices: []string{"Accept"}})
		if err != nil {
			t.Fatal(err)
		}
		if sent.Code != 250 || sent.Tag != "" {
			t.Fatalf("hfaxd answered %+v", sent)
		}
	}
	pages := h.Pages(t)
	if len(pages) != 2 {
		t.Fatalf("%d page jobs in the spool, want 2: %+v", len(pages), pages)
	}
	seen := map[string]bool{}
	for _, p := range pages {
		if p.Text != "New secure message in Element (ref K7Q2)" || p.Sender != "hipaa" {
			t.Fatalf("page job %+v", p)
		}
		seen[p.Pager] = true
	}
	if !seen["5551234"] || !seen["5559876"] {
		t.Fatalf("pagers %v", seen)
	}
	// Without logging in, hfaxd refuses the page: permanent.
	_, err := (&snpp.Client{Addr: h.Addr, Timeout: 10 * time.Second}).Send(ctx, snpp.Page{Pager: "5551234", Text: "x", Level: -1})
	if err == nil || snpp.IsTemporary(err) {
		t.Fatalf("a page without LOGIn: %v", err)
	}
	_, err = (&snpp.Client{Addr: h.Addr, Login: h.Login, Password: "wrong-secret", Timeout: 10 * time.Second}).Send(ctx, snpp.Page{Pager: "5551234", Text: "x", Level: -1})
	if err == nil || strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("a wrong password: %v", err)
	}
}

// A gateway that is not there, or says it is unavailable, is worth a
// retry; nothing can have been sent.
func TestUnavailableGatewayIsTemporary(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("421 Gateway Service Unavailable\r\n"))
			c.Close()
		}
	}()
	_, err := (&snpp.Client{Addr: addr, Timeout: 5 * time.Second}).Send(context.Background(), snpp.Page{Pager: "1", Text: "x", Level: -1})
	if !snpp.IsTemporary(err) || snpp.OutcomeUnknown(err) {
		t.Fatalf("421 greeting: %v", err)
	}
	l.Close()
	_, err = (&snpp.Client{Addr: addr, Timeout: 5 * time.Second}).Send(context.Background(), snpp.Page{Pager: "1", Text: "x", Level: -1})
	if !snpp.IsTemporary(err) || snpp.OutcomeUnknown(err) {
		t.Fatalf("connection refused: %v", err)
	}
	// A server that takes SEND and drops the line: the outcome is unknown.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l2.Close()
	go func() {
		c, err := l2.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("220 ready\r\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil || strings.HasPrefix(line, "SEND") {
				return
			}
			c.Write([]byte("250 OK\r\n"))
		}
	}()
	_, err = (&snpp.Client{Addr: l2.Addr().String(), Timeout: 5 * time.Second}).Send(context.Background(), snpp.Page{Pager: "1", Text: "x", Level: -1})
	if !snpp.OutcomeUnknown(err) || !snpp.IsTemporary(err) {
		t.Fatalf("dropped after SEND: %v", err)
	}
}
