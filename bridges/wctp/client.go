package wctp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Client submits to one gateway. SecurityCode is a secret: it is sent in
// the document and never appears in an error.
type Client struct {
	URL          string
	SenderID     string
	SecurityCode string
	// HTTP is the client used (its TLS verifies the gateway's
	// certificate); nil is a client with a 30-second timeout.
	HTTP *http.Client
}

// Priority is WCTP's deliveryPriority.
type Priority string

const (
	High   Priority = "HIGH"
	Normal Priority = "NORMAL"
	Low    Priority = "LOW"
)

// Message is one page to submit.
type Message struct {
	// ID is the message's ID at the gateway (at most 32 characters): it
	// names the message in every status and reply.
	ID        string
	Recipient string
	Text      string
	// Choices, when set, are offered as multiple-choice responses.
	Choices                     []string
	Priority                    Priority
	AllowResponse               bool
	NotifyDelivered, NotifyRead bool
	Submitted                   time.Time
}

// Error is a failure the gateway answered (or a transport failure, Code 0).
type Error struct {
	Code int
	Text string
	// Unknown is set where the request may have reached the gateway
	// before the failure (a timeout, a dropped connection): a retry may
	// deliver the page twice.
	Unknown bool
	err     error
}

func (e *Error) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("wctp: %v", e.err)
	}
	return fmt.Sprintf("wctp: gateway failure %d: %s", e.Code, e.Text)
}

func (e *Error) Unwrap() error { return e.err }

// Temporary reports whether a retry may succeed: transport failures and the
// 6xx (system) codes. 3xx, 4xx and 5xx are the request's fault or the
// recipient's, and retrying changes nothing.
func (e *Error) Temporary() bool { return e.Code == 0 || (e.Code >= 600 && e.Code < 700) }

// IsTemporary reports whether err is a temporary WCTP failure.
func IsTemporary(err error) bool {
	var we *Error
	return errors.As(err, &we) && we.Temporary()
}

// OutcomeUnknown reports whether err leaves it unknown whether the gateway
// took the message.
func OutcomeUnknown(err error) bool {
	var we *Error
	return errors.As(err, &we) && we.Unknown
}

// Submit sends m and returns the gateway's success code and text.
func (c *Client) Submit(ctx context.Context, m Message) (*Success, error) {
	if m.ID == "" || len(m.ID) > MaxMessageID {
		return nil, &Error{Code: 400, Text: fmt.Sprintf("messageID must be 1 to %d characters", MaxMessageID)}
	}
	pri := m.Priority
	if pri == "" {
		pri = Normal
	}
	req := &SubmitRequest{Header: SubmitHeader{
		Originator: Originator{SenderID: c.SenderID, SecurityCode: c.SecurityCode},
		MessageControl: MessageControl{
			MessageID: m.ID, AllowResponse: boolAttr(m.AllowResponse),
			NotifyWhenDelivered: boolAttr(m.NotifyDelivered), NotifyWhenRead: boolAttr(m.NotifyRead),
			DeliveryPriority: string(pri),
		},
		Recipient: Recipient{RecipientID: m.Recipient},
	}}
	if !m.Submitted.IsZero() {
		req.Header.SubmitTimestamp = Timestamp(m.Submitted)
	}
	if len(m.Choices) > 0 {
		req.Payload.MCR = &MCR{MessageText: m.Text, Choices: m.Choices}
	} else {
		text := m.Text
		req.Payload.Alphanumeric = &text
	}
	resp, err := c.do(ctx, &Operation{SubmitRequest: req})
	if err != nil {
		return nil, err
	}
	return confirmed(resp)
}

// confirmed reads a Confirmation: its Success, or its Failure as an Error.
func confirmed(resp *Operation) (*Success, error) {
	if resp.Confirmation == nil {
		return nil, &Error{Code: 302, Text: "the gateway answered " + resp.Kind() + ", not wctp-Confirmation"}
	}
	if f := resp.Confirmation.Failure; f != nil {
		return nil, failure(f)
	}
	if s := resp.Confirmation.Success; s != nil {
		return s, nil
	}
	return nil, &Error{Code: 302, Text: "the gateway's confirmation holds neither success nor failure"}
}

func failure(f *Failure) *Error {
	code, err := strconv.Atoi(strings.TrimSpace(f.Code))
	if err != nil || code < 100 || code > 999 {
		code = 604 // an unreadable code is the gateway's trouble: retry
	}
	text := f.Text
	if text == "" {
		text = strings.TrimSpace(f.Body)
	}
	return &Error{Code: code, Text: text}
}

// Polled is one message a poll returned, with its sequence number for the
// acknowledgement in the next poll.
type Polled struct {
	Seq     string
	Inbound Inbound
}

// Poll asks the gateway for the statuses and replies it holds,
// acknowledging ack (the sequence numbers of the last poll's messages, once
// they are stored). Max limits the batch (0: the gateway's choice). It
// returns the messages and the gateway's minimum next poll interval.
func (c *Client) Poll(ctx context.Context, ack []string, max int) ([]Polled, time.Duration, error) {
	p := &PollForMessages{PollerID: c.SenderID, SecurityCode: c.SecurityCode}
	if max > 0 {
		p.MaxMessagesInBatch = strconv.Itoa(max)
	}
	for _, s := range ack {
		p.Received = append(p.Received, MessageReceived{SequenceNo: s, Success: &Success{Code: "200", Text: "Accepted"}})
	}
	resp, err := c.do(ctx, &Operation{PollForMessages: p})
	if err != nil {
		return nil, 0, err
	}
	pr := resp.PollResponse
	if pr == nil {
		if resp.Confirmation != nil && resp.Confirmation.Failure != nil {
			return nil, 0, failure(resp.Confirmation.Failure)
		}
		return nil, 0, &Error{Code: 302, Text: "the gateway answered " + resp.Kind() + ", not wctp-PollResponse"}
	}
	if pr.Failure != nil {
		return nil, 0, failure(pr.Failure)
	}
	var next time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(pr.MinNextPollInterval)); err == nil && n > 0 && n < 86400 {
		next = time.Duration(n) * time.Second
	}
	var out []Polled
	for _, m := range pr.Messages {
		var in Inbound
		switch {
		case m.StatusInfo != nil:
			in = statusInbound(m.StatusInfo)
		case m.MessageReply != nil:
			in = replyInbound(m.MessageReply)
		default:
			in = Inbound{Kind: KindOther}
		}
		out = append(out, Polled{Seq: m.SequenceNo, Inbound: in})
	}
	return out, next, nil
}

// VersionQuery asks the gateway which DTDs it supports.
func (c *Client) VersionQuery(ctx context.Context, now time.Time) (*VersionResponse, error) {
	resp, err := c.do(ctx, &Operation{VersionQuery: &VersionQuery{Inquirer: c.SenderID, DateTime: Timestamp(now)}})
	if err != nil {
		return nil, err
	}
	if resp.VersionResponse == nil {
		if resp.Confirmation != nil && resp.Confirmation.Failure != nil {
			return nil, failure(resp.Confirmation.Failure)
		}
		return nil, &Error{Code: 302, Text: "the gateway answered " + resp.Kind() + ", not wctp-VersionResponse"}
	}
	if f := resp.VersionResponse.Failure; f != nil {
		return nil, failure(f)
	}
	return resp.VersionResponse, nil
}

// Capabilities is what LookupSubscriber says a recipient's device can do.
type Capabilities struct {
	MaxLength      int
	MultipleChoice bool
	CanRespond     bool
}

// Lookup asks what recipient's device can do; id names the lookup.
func (c *Client) Lookup(ctx context.Context, id, recipient string) (*Capabilities, error) {
	resp, err := c.do(ctx, &Operation{LookupSubscriber: &LookupSubscriber{
		Originator:     Originator{SenderID: c.SenderID, SecurityCode: c.SecurityCode},
		MessageControl: LookupMessageControl{MessageID: id},
		Recipient:      Recipient{RecipientID: recipient},
	}})
	if err != nil {
		return nil, err
	}
	lr := resp.LookupResponse
	if lr == nil {
		if resp.Confirmation != nil && resp.Confirmation.Failure != nil {
			return nil, failure(resp.Confirmation.Failure)
		}
		return nil, &Error{Code: 302, Text: "the gateway answered " + resp.Kind() + ", not wctp-LookupResponse"}
	}
	if lr.Failure != nil {
		return nil, failure(lr.Failure)
	}
	if lr.LookupData == nil {
		return nil, &Error{Code: 302, Text: "the lookup response holds no data"}
	}
	n, _ := strconv.Atoi(strings.TrimSpace(lr.LookupData.MaxMessageLength))
	return &Capabilities{MaxLength: n, MultipleChoice: Bool(lr.LookupData.MCRSupported, false), CanRespond: Bool(lr.LookupData.CanRespond, false)}, nil
}

// do posts op and parses the answer. A failure to connect is temporary and
// certainly not delivered; one after the request went out leaves the
// outcome unknown.
func (c *Client) do(ctx context.Context, op *Operation) (*Operation, error) {
	body, err := Marshal(op)
	if err != nil {
		return nil, &Error{Code: 400, Text: err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Code: 400, Text: "bad gateway URL"}
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &Error{err: scrub(err), Unknown: !notSent(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxDocument+1))
	if err != nil {
		return nil, &Error{err: scrub(err), Unknown: true}
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
		// The gateway's web server is in trouble: retry. 503 and 429 say
		// the request was not processed; after a 500 or a proxy's 502 or
		// 504, whether the gateway took the message is unknown.
		notTaken := resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests
		return nil, &Error{err: fmt.Errorf("HTTP %d", resp.StatusCode), Unknown: !notTaken}
	}
	parsed, perr := Parse(data)
	if resp.StatusCode >= 300 && perr != nil {
		return nil, &Error{Code: 400, Text: fmt.Sprintf("HTTP %d from the gateway", resp.StatusCode)}
	}
	if perr != nil {
		return nil, &Error{Code: 301, Text: "the gateway's answer is not WCTP: " + perr.Error()}
	}
	return parsed, nil
}

// notSent reports a failure before any byte of the request left: nothing
// can have been delivered.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// scrub keeps an HTTP error's cause but not the request it came from (the
// URL can carry credentials some gateways put in a query string).
func scrub(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}
