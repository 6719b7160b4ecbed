package wctp

import (
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Inbound kinds.
const (
	KindStatus = "status"
	KindReply  = "reply"
	KindOther  = "other"
)

// Inbound is a status or reply from the gateway, pushed or polled.
type Inbound struct {
	Kind string
	// MessageID is the page it is about (our messageID).
	MessageID string
	// Status is QUEUED, DELIVERED or READ; for a failure it is empty and
	// FailureCode is set.
	Status      string
	FailureCode int
	FailureText string
	// Text is a reply's text; Choice is set when it is one of the offered
	// multiple-choice responses.
	Text   string
	Choice bool
	// From is the pager (or gateway) it came from.
	From string
	// At is the gateway's timestamp, zero when it gave none or an
	// unreadable one.
	At time.Time
}

func statusInbound(s *StatusInfo) Inbound {
	in := Inbound{Kind: KindStatus, MessageID: s.Header.ResponseToMessageID, From: s.Header.Originator.SenderID, At: parseTime(s.Header.ResponseTimestamp)}
	switch {
	case s.Failure != nil:
		e := failure(s.Failure)
		in.FailureCode, in.FailureText = e.Code, e.Text
	case s.Notification != nil:
		in.Status = strings.ToUpper(strings.TrimSpace(s.Notification.Type))
	}
	return in
}

func replyInbound(r *MessageReply) Inbound {
	return Inbound{
		Kind: KindReply, MessageID: r.Header.ResponseToMessageID, From: r.Header.Originator.SenderID,
		At: parseTime(r.Header.ResponseTimestamp), Text: r.Payload.Text(), Choice: Bool(r.MCRMessageReply, false),
	}
}

func parseTime(s string) time.Time {
	t, err := time.Parse(TimeLayout, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}
	}
	return t
}

// Handler is the endpoint a gateway pushes StatusInfo and MessageReply
// to. Every request gets a wctp-Confirmation: Success once Receive has
// stored it (a gateway re-sends until confirmed, so Receive must treat a
// repeat as already done), a Failure otherwise.
type Handler struct {
	// SecurityCode, when set, must be the securityCode of the push's
	// originator (or the password of HTTP Basic authentication).
	SecurityCode string
	// Responder names this side in a VersionResponse.
	Responder string
	// Receive stores one inbound message. An error is answered with 604
	// (temporary), so the gateway sends it again.
	Receive func(ctx context.Context, in Inbound) error
	// Now is the clock for VersionResponse (nil: time.Now).
	Now func() time.Time
}

// ServeHTTP answers one posted operation. Bad XML, an operation this side
// does not take and a wrong security code get a WCTP failure, never a
// crash.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		reply(w, http.StatusMethodNotAllowed, confirmFailure(300, "WCTP operations are posted"))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxDocument))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			reply(w, http.StatusRequestEntityTooLarge, confirmFailure(301, "the document is larger than this endpoint accepts"))
			return
		}
		reply(w, http.StatusBadRequest, confirmFailure(301, "the document could not be read"))
		return
	}
	op, err := Parse(data)
	if err != nil {
		reply(w, http.StatusOK, confirmFailure(301, "input cannot be parsed as a WCTP operation"))
		return
	}
	if op.VersionQuery != nil {
		now := time.Now
		if h.Now != nil {
			now = h.Now
		}
		reply(w, http.StatusOK, &Operation{VersionResponse: &VersionResponse{
			Responder: h.Responder, DateTimeOfRsp: Timestamp(now()), Inquirer: op.VersionQuery.Inquirer, DateTimeOfReq: op.VersionQuery.DateTime,
			DTDSupport: []DTDSupport{{DTDName: Version, SupportType: "Supported"}},
		}})
		return
	}
	var in Inbound
	var origin Originator
	switch {
	case op.StatusInfo != nil:
		in, origin = statusInbound(op.StatusInfo), op.StatusInfo.Header.Originator
	case op.MessageReply != nil:
		in, origin = replyInbound(op.MessageReply), op.MessageReply.Header.Originator
	default:
		reply(w, http.StatusOK, confirmFailure(300, op.Kind()+" is not accepted here"))
		return
	}
	if !h.authorised(r, origin) {
		reply(w, http.StatusOK, confirmFailure(402, "invalid security code"))
		return
	}
	if in.MessageID == "" {
		reply(w, http.StatusOK, confirmFailure(302, "responseToMessageID is required"))
		return
	}
	if err := h.Receive(r.Context(), in); err != nil {
		reply(w, http.StatusOK, confirmFailure(604, "not stored; send it again"))
		return
	}
	reply(w, http.StatusOK, &Operation{Confirmation: &Confirmation{Success: &Success{Code: "200", Text: "Accepted"}}})
}

func (h *Handler) authorised(r *http.Request, o Originator) bool {
	if h.SecurityCode == "" {
		return true
	}
	if subtle.ConstantTimeCompare([]byte(o.SecurityCode), []byte(h.SecurityCode)) == 1 {
		return true
	}
	_, pass, ok := r.BasicAuth()
	return ok && subtle.ConstantTimeCompare([]byte(pass), []byte(h.SecurityCode)) == 1
}

func confirmFailure(code int, text string) *Operation {
	return &Operation{Confirmation: &Confirmation{Failure: &Failure{Code: strconv.Itoa(code), Text: text}}}
}

func reply(w http.ResponseWriter, status int, op *Operation) {
	body, err := Marshal(op)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	w.Write(body)
}
