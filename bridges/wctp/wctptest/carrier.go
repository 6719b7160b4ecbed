// Package wctptest is a WCTP carrier for tests: an HTTPS gateway on
// loopback that validates every document it is sent against the official
// v1r3 DTD (with xmllint), keeps every byte it was sent (for canary scans),
// pushes StatusInfo and MessageReply to the service's endpoint (each twice,
// as real gateways re-send, and until a wctp-Confirmation Success), or holds
// them for PollForMessages, and can be taken down for an outage.
package wctptest

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
)

// DTD is the vendored v1r3 DTD's path.
func DTD() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "wctp-dtd-v1r3.dtd")
}

// Validate checks doc against the v1r3 DTD with xmllint; the error holds
// xmllint's report.
func Validate(doc []byte) error {
	xmllint, err := exec.LookPath("xmllint")
	if err != nil {
		return fmt.Errorf("xmllint is not installed (Debian: libxml2-utils): %w", err)
	}
	cmd := exec.Command(xmllint, "--noout", "--nonet", "--dtdvalid", DTD(), "-")
	cmd.Stdin = bytes.NewReader(doc)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("not valid against %s: %v\n%s\n%s", wctp.Version, err, out, doc)
	}
	return nil
}

// Submitted is a page the carrier took.
type Submitted struct {
	MessageID string
	Recipient string
	Text      string
	Choices   []string
	Priority  string
	At        time.Time
}

// T is what the carrier needs of its caller: a test's testing.TB has it,
// and a load tool passes its own.
type T interface {
	Helper()
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Carrier is the gateway. Its zero value is not usable: call Start.
type Carrier struct {
	t      T
	Server *httptest.Server
	// SenderID and SecurityCode are what the service must send.
	SenderID, SecurityCode string
	// PushURL is the service's endpoint; PushCode the securityCode the
	// carrier sends in pushes. Empty PushURL: statuses and replies wait
	// for PollForMessages.
	PushURL, PushCode string
	// Pushes is how many times each status or reply is pushed after the
	// first confirmation (real gateways re-send): 2 in all by default.
	Pushes int
	// LookupLength is the device length LookupSubscriber reports (240).
	LookupLength int

	mu        sync.Mutex
	raw       [][]byte
	submitted []Submitted
	invalid   []error
	down      bool
	unknown   int
	queue     []queued
	nextSeq   int
	pushErrs  []error
	confirmed int
}

type queued struct {
	seq int
	op  *wctp.Operation
}

// Start runs a carrier on loopback with its own certificate authority.
func Start(t T, senderID, securityCode string) *Carrier {
	c := &Carrier{t: t, SenderID: senderID, SecurityCode: securityCode, Pushes: 2, LookupLength: 240}
	c.Server = httptest.NewTLSServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.Server.Close)
	return c
}

// CAFile writes the carrier's certificate to dir as PEM and returns its
// path, for the service's ca_file.
func (c *Carrier) CAFile(dir string) string {
	path := filepath.Join(dir, "wctp-carrier-ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Server.Certificate().Raw})
	if err := os.WriteFile(path, pemBytes, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// Pool is a certificate pool holding the carrier's certificate.
func (c *Carrier) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Server.Certificate())
	return p
}

// SetDown makes the carrier answer every request with 503 (an outage).
func (c *Carrier) SetDown(down bool) {
	c.mu.Lock()
	c.down = down
	c.mu.Unlock()
}

// DropNextAfterTaking makes the next n submits be taken and then the
// connection closed without an answer: the sender cannot know the outcome.
func (c *Carrier) DropNextAfterTaking(n int) {
	c.mu.Lock()
	c.unknown = n
	c.mu.Unlock()
}

// Raw is every request body the carrier was sent.
func (c *Carrier) Raw() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.raw...)
}

// Submitted is every page taken, in order.
func (c *Carrier) Submitted() []Submitted {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Submitted(nil), c.submitted...)
}

// Problems is every document that failed DTD validation and every push the
// service did not confirm properly.
func (c *Carrier) Problems() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(append([]error(nil), c.invalid...), c.pushErrs...)
}

func (c *Carrier) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, wctp.MaxDocument))
	c.mu.Lock()
	c.raw = append(c.raw, body)
	down := c.down
	c.mu.Unlock()
	if down {
		http.Error(w, "gateway down", http.StatusServiceUnavailable)
		return
	}
	if err := Validate(body); err != nil {
		c.mu.Lock()
		c.invalid = append(c.invalid, err)
		c.mu.Unlock()
		c.answer(w, &wctp.Operation{Confirmation: &wctp.Confirmation{Failure: &wctp.Failure{Code: "302", Text: "XML validation error"}}})
		return
	}
	op, err := wctp.Parse(body)
	if err != nil {
		c.answer(w, &wctp.Operation{Confirmation: &wctp.Confirmation{Failure: &wctp.Failure{Code: "301", Text: "cannot parse"}}})
		return
	}
	switch {
	case op.SubmitRequest != nil:
		c.submit(w, op.SubmitRequest)
	case op.PollForMessages != nil:
		c.poll(w, op.PollForMessages)
	case op.VersionQuery != nil:
		c.answer(w, &wctp.Operation{VersionResponse: &wctp.VersionResponse{Responder: "wctptest", DTDSupport: []wctp.DTDSupport{{DTDName: wctp.Version}}}})
	case op.LookupSubscriber != nil:
		c.answer(w, &wctp.Operation{LookupResponse: &wctp.LookupResponse{
			ResponseToMessageID: op.LookupSubscriber.MessageControl.MessageID, Originator: wctp.Originator{SenderID: "wctptest"},
			Recipient: op.LookupSubscriber.Recipient, LookupData: &wctp.LookupData{MaxMessageLength: strconv.Itoa(c.LookupLength), MCRSupported: "true", CanRespond: "true"},
		}})
	default:
		c.answer(w, &wctp.Operation{Confirmation: &wctp.Confirmation{Failure: &wctp.Failure{Code: "300", Text: "operation not supported"}}})
	}
}

func (c *Carrier) submit(w http.ResponseWriter, s *wctp.SubmitRequest) {
	h := s.Header
	if h.Originator.SenderID != c.SenderID || h.Originator.SecurityCode != c.SecurityCode {
		c.answer(w, &wctp.Operation{Confirmation: &wctp.Confirmation{Failure: &wctp.Failure{Code: "402", Text: "invalid security code"}}})
		return
	}
	sub := Submitted{MessageID: h.MessageControl.MessageID, Recipient: h.Recipient.RecipientID, Text: s.Payload.Text(), Priority: h.MessageControl.DeliveryPriority, At: time.Now()}
	if s.Payload.MCR != nil {
		sub.Choices = s.Payload.MCR.Choices
	}
	c.mu.Lock()
	c.submitted = append(c.submitted, sub)
	drop := c.unknown > 0
	if drop {
		c.unknown--
	}
	c.mu.Unlock()
	if drop {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
	}
	c.answer(w, &wctp.Operation{Confirmation: &wctp.Confirmation{Success: &wctp.Success{Code: "200", Text: "Message queued for delivery"}}})
}

// Status has the carrier report a status for a page: QUEUED, DELIVERED or
// READ, or (failCode > 0) a failure.
func (c *Carrier) Status(messageID, recipient, status string, failCode int) {
	si := &wctp.StatusInfo{Header: c.header(messageID, recipient)}
	if failCode > 0 {
		si.Failure = &wctp.Failure{Code: strconv.Itoa(failCode), Text: "delivery failed"}
	} else {
		si.Notification = &wctp.Notification{Type: status}
	}
	c.deliver(&wctp.Operation{StatusInfo: si})
}

// Reply has the carrier deliver the pager user's reply to a page; choice
// marks it as one of the offered responses.
func (c *Carrier) Reply(messageID, recipient, text string, choice bool) {
	mr := &wctp.MessageReply{Header: c.header(messageID, recipient), Payload: wctp.Payload{Alphanumeric: &text}}
	if choice {
		mr.MCRMessageReply = "true"
	}
	c.deliver(&wctp.Operation{MessageReply: mr})
}

func (c *Carrier) header(messageID, recipient string) wctp.ResponseHeader {
	return wctp.ResponseHeader{
		ResponseToMessageID: messageID, ResponseTimestamp: wctp.Timestamp(time.Now()),
		Originator:     wctp.Originator{SenderID: recipient, SecurityCode: c.PushCode},
		MessageControl: wctp.MessageControl{MessageID: "gw-" + strconv.FormatInt(time.Now().UnixNano(), 36)},
		Recipient:      wctp.Recipient{RecipientID: c.SenderID},
	}
}

// Confirmed is how many pushes the service confirmed with Success.
func (c *Carrier) Confirmed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.confirmed
}

// deliver pushes op (until confirmed, then again Pushes-1 times) or queues
// it for polling.
func (c *Carrier) deliver(op *wctp.Operation) {
	if c.PushURL == "" {
		c.mu.Lock()
		c.nextSeq++
		c.queue = append(c.queue, queued{c.nextSeq, op})
		c.mu.Unlock()
		return
	}
	doc, err := wctp.Marshal(op)
	if err != nil {
		c.t.Error(err)
		return
	}
	if err := Validate(doc); err != nil {
		c.t.Error(err)
		return
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	sent := 0
	for attempt := 0; sent < c.Pushes && attempt < 200; attempt++ {
		ok, err := c.pushOnce(hc, doc)
		if err != nil {
			c.mu.Lock()
			c.pushErrs = append(c.pushErrs, err)
			c.mu.Unlock()
		}
		if ok {
			sent++
			continue
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Carrier) pushOnce(hc *http.Client, doc []byte) (bool, error) {
	resp, err := hc.Post(c.PushURL, "application/xml", bytes.NewReader(doc))
	if err != nil {
		return false, nil // the service is down: real gateways retry
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, wctp.MaxDocument))
	if err := Validate(body); err != nil {
		return false, fmt.Errorf("the service's answer to a push: %w", err)
	}
	ans, err := wctp.Parse(body)
	if err != nil || ans.Confirmation == nil {
		return false, fmt.Errorf("the service answered a push with %q, not a confirmation", body)
	}
	if ans.Confirmation.Success == nil {
		return false, nil // not stored: send again
	}
	c.mu.Lock()
	c.confirmed++
	c.mu.Unlock()
	return true, nil
}

func (c *Carrier) poll(w http.ResponseWriter, p *wctp.PollForMessages) {
	if p.PollerID != c.SenderID || p.SecurityCode != c.SecurityCode {
		c.answer(w, &wctp.Operation{PollResponse: &wctp.PollResponse{Failure: &wctp.Failure{Code: "402", Text: "invalid security code"}}})
		return
	}
	c.mu.Lock()
	acked := map[int]bool{}
	for _, r := range p.Received {
		if n, err := strconv.Atoi(r.SequenceNo); err == nil && r.Success != nil {
			acked[n] = true
		}
	}
	var left []queued
	for _, q := range c.queue {
		if !acked[q.seq] {
			left = append(left, q)
		}
	}
	c.queue = left
	resp := &wctp.PollResponse{MinNextPollInterval: "1"}
	for _, q := range left {
		m := wctp.PolledMessage{SequenceNo: strconv.Itoa(q.seq), StatusInfo: q.op.StatusInfo, MessageReply: q.op.MessageReply}
		resp.Messages = append(resp.Messages, m)
	}
	c.mu.Unlock()
	if len(resp.Messages) == 0 {
		resp.NoMessages = &struct{}{}
	}
	c.answer(w, &wctp.Operation{PollResponse: resp})
}

// Waiting is how many statuses and replies wait to be polled and
// acknowledged.
func (c *Carrier) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

func (c *Carrier) answer(w http.ResponseWriter, op *wctp.Operation) {
	doc, err := wctp.Marshal(op)
	if err != nil {
		c.t.Error(err)
		return
	}
	if err := Validate(doc); err != nil {
		c.t.Error(err)
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Write(doc)
}
