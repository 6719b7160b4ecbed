package wctp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
)

func text(s string) *string { return &s }

// Every kind of document this side emits validates against the official
// v1r3 DTD.
func TestEmittedDocumentsValidateAgainstDTD(t *testing.T) {
	hdr := wctp.ResponseHeader{ResponseToMessageID: "p1", Originator: wctp.Originator{SenderID: "5551234"}, MessageControl: wctp.MessageControl{MessageID: "g1"}, Recipient: wctp.Recipient{RecipientID: "hipaa"}}
	cases := map[string]*wctp.Operation{
		"confirmation success": {Confirmation: &wctp.Confirmation{Success: &wctp.Success{Code: "200", Text: "Accepted"}}},
		"confirmation failure": {Confirmation: &wctp.Confirmation{Failure: &wctp.Failure{Code: "301", Text: "cannot parse"}}},
		"version response":     {VersionResponse: &wctp.VersionResponse{Responder: "hipaa", DTDSupport: []wctp.DTDSupport{{DTDName: wctp.Version, SupportType: "Supported"}}}},
		"status info":          {StatusInfo: &wctp.StatusInfo{Header: hdr, Notification: &wctp.Notification{Type: wctp.Read}}},
		"status failure":       {StatusInfo: &wctp.StatusInfo{Header: hdr, Failure: &wctp.Failure{Code: "503", Text: "expired"}}},
		"message reply":        {MessageReply: &wctp.MessageReply{MCRMessageReply: "true", Header: hdr, Payload: wctp.Payload{Alphanumeric: text("Accept")}}},
		"poll response":        {PollResponse: &wctp.PollResponse{Messages: []wctp.PolledMessage{{SequenceNo: "1", StatusInfo: &wctp.StatusInfo{Header: hdr, Notification: &wctp.Notification{Type: wctp.Delivered}}}}}},
		"poll response empty":  {PollResponse: &wctp.PollResponse{NoMessages: &struct{}{}}},
	}
	// The check can fail: header children out of the DTD's order.
	bad := `<?xml version="1.0"?><!DOCTYPE wctp-Operation SYSTEM "` + wctp.DTDURL + `"><wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-StatusInfo><wctp-ResponseHeader responseToMessageID="p"><wctp-Recipient recipientID="h"/><wctp-Originator senderID="5"/><wctp-MessageControl messageID="g"/></wctp-ResponseHeader><wctp-Notification type="READ"/></wctp-StatusInfo></wctp-Operation>`
	if err := wctptest.Validate([]byte(bad)); err == nil {
		t.Fatal("a document out of the DTD's order validated")
	}
	for name, op := range cases {
		t.Run(name, func(t *testing.T) {
			doc, err := wctp.Marshal(op)
			if err != nil {
				t.Fatal(err)
			}
			if err := wctptest.Validate(doc); err != nil {
				t.Fatal(err)
			}
		})
	}
	// What the client sends, captured from the wire.
	var mu sync.Mutex
	var sent [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		sent = append(sent, b)
		mu.Unlock()
		w.Write([]byte(`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-Confirmation><wctp-Success successCode="200"/></wctp-Confirmation></wctp-Operation>`))
	}))
	defer srv.Close()
	c := &wctp.Client{URL: srv.URL, SenderID: "hipaa", SecurityCode: "s3cret"}
	ctx := context.Background()
	c.Submit(ctx, wctp.Message{ID: "p1", Recipient: "5551234", Text: "New secure message (ref K7Q2)", Priority: wctp.High, AllowResponse: true, NotifyDelivered: true, NotifyRead: true, Submitted: time.Now()})
	c.Submit(ctx, wctp.Message{ID: "p2", Recipient: "5551234", Text: "Page (ref K7Q2)", Choices: []string{"Accept", "Decline"}})
	c.Poll(ctx, []string{"1", "2"}, 10)
	c.VersionQuery(ctx, time.Now())
	c.Lookup(ctx, "l1", "5551234")
	if len(sent) != 5 {
		t.Fatalf("%d documents sent, want 5", len(sent))
	}
	for _, doc := range sent {
		if err := wctptest.Validate(doc); err != nil {
			t.Error(err)
		}
	}
}

// Real gateways send what the DTD does not quite allow; the parser takes it.
func TestParseIsLenient(t *testing.T) {
	cases := []struct {
		name, doc string
		check     func(*wctp.Operation) bool
	}{
		{"no declaration, no DOCTYPE, children out of order",
			`<wctp-Operation wctpVersion="WCTP-DTD-V1R3"><wctp-StatusInfo><wctp-Notification type="read"/><wctp-ResponseHeader responseToMessageID="p1"><wctp-Recipient recipientID="hipaa"/><wctp-Originator senderID="555"/></wctp-ResponseHeader></wctp-StatusInfo></wctp-Operation>`,
			func(op *wctp.Operation) bool {
				return op.StatusInfo.Header.ResponseToMessageID == "p1" && op.StatusInfo.Notification.Type == "read"
			}},
		{"deliveryPriority=true and unknown attributes",
			`<?xml version="1.0"?><wctp-Operation wctpVersion="wctp-dtd-v1r3" vendor="x"><wctp-SubmitRequest><wctp-SubmitHeader><wctp-Originator senderID="a"/><wctp-MessageControl messageID="m" deliveryPriority="true" extra="1"/><wctp-Recipient recipientID="r"/></wctp-SubmitHeader><wctp-Payload><wctp-Alphanumeric>hi</wctp-Alphanumeric></wctp-Payload></wctp-SubmitRequest></wctp-Operation>`,
			func(op *wctp.Operation) bool {
				return op.SubmitRequest.Header.MessageControl.DeliveryPriority == "true" && op.SubmitRequest.Payload.Text() == "hi"
			}},
		{"ISO-8859-1",
			"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><wctp-Operation wctpVersion=\"wctp-dtd-v1r3\"><wctp-MessageReply><wctp-ResponseHeader responseToMessageID=\"p1\"><wctp-Originator senderID=\"555\"/><wctp-MessageControl messageID=\"g\"/><wctp-Recipient recipientID=\"h\"/></wctp-ResponseHeader><wctp-Payload><wctp-Alphanumeric>D\xe9clin\xe9</wctp-Alphanumeric></wctp-Payload></wctp-MessageReply></wctp-Operation>",
			func(op *wctp.Operation) bool { return op.MessageReply.Payload.Text() == "Décliné" }},
		{"unknown elements beside the operation",
			`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><x-vendor/><wctp-Confirmation><wctp-Success successCode="200">ok</wctp-Success></wctp-Confirmation></wctp-Operation>`,
			func(op *wctp.Operation) bool { return op.Confirmation.Success.Code == "200" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			op, err := wctp.Parse([]byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(op) {
				t.Fatalf("parsed as %+v", op)
			}
		})
	}
	for _, bad := range []string{"", "<", "<html><body>502 Bad Gateway</body></html>", `<wctp-Operation wctpVersion="x"></wctp-Operation>`,
		`<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><wctp-Operation>&b;</wctp-Operation>`} {
		if _, err := wctp.Parse([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestBool(t *testing.T) {
	for _, c := range []struct {
		in       string
		def, out bool
	}{{"true", false, true}, {"TRUE", false, true}, {"yes", false, true}, {"1", false, true}, {"false", true, false}, {"", true, true}, {"", false, false}, {"junk", true, false}} {
		if got := wctp.Bool(c.in, c.def); got != c.out {
			t.Errorf("Bool(%q, %v) = %v", c.in, c.def, got)
		}
	}
}

// How the client classes each answer: which failures are retried, which
// leave the outcome unknown, and that the security code is never in an
// error.
func TestClientClassifiesFailures(t *testing.T) {
	answer := func(status int, body string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			io.WriteString(w, body)
		}))
	}
	conf := func(inner string) string {
		return `<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-Confirmation>` + inner + `</wctp-Confirmation></wctp-Operation>`
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedURL := "http://" + closed.Addr().String() + "/wctp?account=url-secret" // no error may carry it
	closed.Close()
	cases := []struct {
		name           string
		url            string
		srv            *httptest.Server
		ok, temp, unkn bool
		code           int
	}{
		{"success", "", answer(200, conf(`<wctp-Success successCode="200" successText="queued"/>`)), true, false, false, 0},
		{"invalid recipient (403) is permanent", "", answer(200, conf(`<wctp-Failure errorCode="403" errorText="invalid recipientID"/>`)), false, false, false, 403},
		{"message processing (5xx) is permanent", "", answer(200, conf(`<wctp-Failure errorCode="503">too long</wctp-Failure>`)), false, false, false, 503},
		{"system failure (604) is temporary", "", answer(200, conf(`<wctp-Failure errorCode="604" errorText="internal error"/>`)), false, true, false, 604},
		{"unreadable code counts as the gateway's trouble", "", answer(200, conf(`<wctp-Failure errorCode="x"/>`)), false, true, false, 604},
		{"HTTP 503 is temporary, not taken", "", answer(503, "busy"), false, true, false, 0},
		{"HTTP 502 from a proxy is temporary, outcome unknown", "", answer(502, "bad gateway"), false, true, true, 0},
		{"HTML from a proxy is not WCTP", "", answer(200, "<html>hi</html>"), false, false, false, 301},
		{"connection refused: temporary, certainly not sent", closedURL, nil, false, true, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := c.url
			if c.srv != nil {
				defer c.srv.Close()
				url = c.srv.URL
			}
			cl := &wctp.Client{URL: url, SenderID: "hipaa", SecurityCode: "s3cret-code"}
			_, err := cl.Submit(context.Background(), wctp.Message{ID: "p1", Recipient: "555", Text: "x"})
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "s3cret-code") || strings.Contains(err.Error(), "url-secret") {
				t.Fatalf("the security code or the URL is in the error: %v", err)
			}
			var we *wctp.Error
			if !errors.As(err, &we) || we.Code != c.code || wctp.IsTemporary(err) != c.temp || wctp.OutcomeUnknown(err) != c.unkn {
				t.Fatalf("%v: code %d temporary %v unknown %v; want %d %v %v", err, we.Code, wctp.IsTemporary(err), wctp.OutcomeUnknown(err), c.code, c.temp, c.unkn)
			}
		})
	}
	// A gateway that takes the page and drops the connection.
	carrier := wctptest.Start(t, "hipaa", "code")
	carrier.DropNextAfterTaking(1)
	cl := &wctp.Client{URL: carrier.Server.URL, SenderID: "hipaa", SecurityCode: "code", HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: carrier.Pool()}}}}
	_, err := cl.Submit(context.Background(), wctp.Message{ID: "p1", Recipient: "555", Text: "x"})
	if !wctp.OutcomeUnknown(err) || !wctp.IsTemporary(err) {
		t.Fatalf("dropped after taking: %v, want temporary with the outcome unknown", err)
	}
	if len(carrier.Submitted()) != 1 {
		t.Fatal("the carrier did not take the page")
	}
	// Its certificate is verified: a client that does not trust it fails.
	_, err = (&wctp.Client{URL: carrier.Server.URL, SenderID: "hipaa", SecurityCode: "code"}).Submit(context.Background(), wctp.Message{ID: "p2", Recipient: "555", Text: "x"})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted gateway certificate: %v", err)
	}
	if _, err := cl.Submit(context.Background(), wctp.Message{ID: strings.Repeat("x", 33), Recipient: "555", Text: "x"}); err == nil {
		t.Fatal("a 33-character messageID was sent")
	}
}

// The endpoint answers everything with a valid WCTP document: bad XML, a
// wrong security code, an operation it does not take, a body too large, a
// store that failed (604, so the gateway re-sends).
func TestHandlerAnswers(t *testing.T) {
	var got []wctp.Inbound
	fail := false
	h := &wctp.Handler{SecurityCode: "push-code", Responder: "hipaa", Receive: func(ctx context.Context, in wctp.Inbound) error {
		if fail {
			return errors.New("database down")
		}
		got = append(got, in)
		return nil
	}}
	srv := httptest.NewServer(h)
	defer srv.Close()
	status := func(code string) string {
		return `<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-StatusInfo><wctp-ResponseHeader responseToMessageID="p1" responseTimestamp="2026-12-05T10:00:00"><wctp-Originator senderID="555" securityCode="` + code + `"/><wctp-MessageControl messageID="g"/><wctp-Recipient recipientID="hipaa"/></wctp-ResponseHeader><wctp-Notification type="DELIVERED"/></wctp-StatusInfo></wctp-Operation>`
	}
	cases := []struct {
		name, body string
		store      bool
		httpCode   int
		want       string // success code or failure code
	}{
		{"status", status("push-code"), false, 200, "200"},
		{"bad XML", "<wctp-Operation><", false, 200, "301"},
		{"not WCTP", `{"json": true}`, false, 200, "301"},
		{"wrong security code", status("guess"), false, 200, "402"},
		{"operation not taken here", `<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-SubmitRequest><wctp-SubmitHeader><wctp-Originator senderID="a"/><wctp-MessageControl messageID="m"/><wctp-Recipient recipientID="r"/></wctp-SubmitHeader><wctp-Payload><wctp-Alphanumeric>x</wctp-Alphanumeric></wctp-Payload></wctp-SubmitRequest></wctp-Operation>`, false, 200, "300"},
		{"store failed", status("push-code"), true, 200, "604"},
		{"too large", "<wctp-Operation>" + strings.Repeat("a", wctp.MaxDocument) + "</wctp-Operation>", false, 413, "301"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fail = c.store
			resp, err := http.Post(srv.URL, "application/xml", strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.httpCode {
				t.Fatalf("HTTP %d, want %d", resp.StatusCode, c.httpCode)
			}
			if err := wctptest.Validate(body); err != nil {
				t.Fatal(err)
			}
			op, err := wctp.Parse(body)
			if err != nil || op.Confirmation == nil {
				t.Fatalf("answer %s", body)
			}
			code := ""
			if op.Confirmation.Success != nil {
				code = op.Confirmation.Success.Code
			} else {
				code = op.Confirmation.Failure.Code
			}
			if code != c.want {
				t.Fatalf("answered %s, want %s: %s", code, c.want, body)
			}
		})
	}
	if len(got) != 1 || got[0].Kind != wctp.KindStatus || got[0].Status != wctp.Delivered || got[0].MessageID != "p1" || got[0].From != "555" || got[0].At.IsZero() {
		t.Fatalf("stored %+v", got)
	}
	// A VersionQuery is answered with the DTD this side speaks.
	resp, err := http.Post(srv.URL, "text/xml", strings.NewReader(`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-VersionQuery inquirer="gw"/></wctp-Operation>`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := wctptest.Validate(body); err != nil || !strings.Contains(string(body), `dtdName="wctp-dtd-v1r3"`) {
		t.Fatalf("version response %s: %v", body, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-StatusInfo><wctp-ResponseHeader responseToMessageID="p1"><wctp-Originator senderID="555"/><wctp-MessageControl messageID="g"/><wctp-Recipient recipientID="h"/></wctp-ResponseHeader><wctp-Notification type="READ"/></wctp-StatusInfo></wctp-Operation>`))
	f.Add([]byte(`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-PollResponse><wctp-Message sequenceNo="1"><wctp-MessageReply MCRMessageReply="true"><wctp-ResponseHeader responseToMessageID="p"><wctp-Originator senderID="5"/><wctp-MessageControl messageID="g"/><wctp-Recipient recipientID="h"/></wctp-ResponseHeader><wctp-Payload><wctp-Alphanumeric>Accept</wctp-Alphanumeric></wctp-Payload></wctp-MessageReply></wctp-Message></wctp-PollResponse></wctp-Operation>`))
	f.Add([]byte("<?xml version=\"1.0\" encoding=\"latin1\"?><wctp-Operation/>"))
	f.Fuzz(func(t *testing.T, data []byte) {
		op, err := wctp.Parse(data)
		if err != nil {
			return
		}
		if op.Kind() == "" {
			t.Fatal("parsed with no operation")
		}
		// Whatever parsed can be emitted again.
		if _, err := wctp.Marshal(op); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzHandler(f *testing.F) {
	f.Add([]byte(`<wctp-Operation wctpVersion="wctp-dtd-v1r3"><wctp-MessageReply><wctp-ResponseHeader responseToMessageID="p"><wctp-Originator senderID="5"/><wctp-MessageControl messageID="g"/><wctp-Recipient recipientID="h"/></wctp-ResponseHeader><wctp-Payload><wctp-Alphanumeric>Accept</wctp-Alphanumeric></wctp-Payload></wctp-MessageReply></wctp-Operation>`))
	f.Add([]byte("<"))
	h := &wctp.Handler{Receive: func(context.Context, wctp.Inbound) error { return nil }}
	f.Fuzz(func(t *testing.T, data []byte) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(data))))
		op, err := wctp.Parse(w.Body.Bytes())
		if err != nil || op.Confirmation == nil {
			t.Fatalf("answered %q", w.Body.String())
		}
	})
}
