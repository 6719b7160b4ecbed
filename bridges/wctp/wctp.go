// Package wctp speaks WCTP 1.3 (Wireless Communication Transfer Protocol,
// DTD wctp-dtd-v1r3), the XML-over-HTTPS protocol hospital paging gateways
// (Spok, Amtelco, American Messaging and others) accept pages with: a client
// for SubmitRequest, PollForMessages, VersionQuery and LookupSubscriber, and
// a handler for the StatusInfo and MessageReply operations a gateway pushes
// back.
//
// It emits strictly (every document validates against the official DTD, in
// the DTD's element order) and parses leniently (any content type, children
// in any order, odd attribute values, ISO-8859-1), because real gateways
// differ.
package wctp

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Version is the DTD this package speaks, as the wctpVersion attribute
// names it.
const Version = "wctp-dtd-v1r3"

// DTDURL is the system identifier of the v1r3 DTD.
const DTDURL = "http://dtd.wctp.org/wctp-dtd-v1r3.dtd"

// MaxMessageID is the longest messageID WCTP allows.
const MaxMessageID = 32

// TimeLayout is WCTP's timestamp format (UTC, no zone).
const TimeLayout = "2006-01-02T15:04:05"

// Operation is the root element. Exactly one of the operation fields is set.
type Operation struct {
	XMLName xml.Name `xml:"wctp-Operation"`
	Version string   `xml:"wctpVersion,attr"`
	Token   string   `xml:"wctpToken,attr,omitempty"`

	Confirmation     *Confirmation     `xml:"wctp-Confirmation"`
	LookupSubscriber *LookupSubscriber `xml:"wctp-LookupSubscriber"`
	LookupResponse   *LookupResponse   `xml:"wctp-LookupResponse"`
	MessageReply     *MessageReply     `xml:"wctp-MessageReply"`
	PollForMessages  *PollForMessages  `xml:"wctp-PollForMessages"`
	PollResponse     *PollResponse     `xml:"wctp-PollResponse"`
	StatusInfo       *StatusInfo       `xml:"wctp-StatusInfo"`
	SubmitRequest    *SubmitRequest    `xml:"wctp-SubmitRequest"`
	VersionQuery     *VersionQuery     `xml:"wctp-VersionQuery"`
	VersionResponse  *VersionResponse  `xml:"wctp-VersionResponse"`
}

// Confirmation answers a push or a submit: Success or Failure.
type Confirmation struct {
	Failure *Failure `xml:"wctp-Failure"`
	Success *Success `xml:"wctp-Success"`
}

// Success carries a 2xx code.
type Success struct {
	Code string `xml:"successCode,attr"`
	Text string `xml:"successText,attr,omitempty"`
	Body string `xml:",chardata"`
}

// Failure carries an error code (3xx protocol, 4xx content, 5xx message
// processing, 6xx system) and text.
type Failure struct {
	Code string `xml:"errorCode,attr"`
	Text string `xml:"errorText,attr,omitempty"`
	Body string `xml:",chardata"`
}

// Originator identifies the sender; SecurityCode is its password.
type Originator struct {
	SenderID     string `xml:"senderID,attr"`
	SecurityCode string `xml:"securityCode,attr,omitempty"`
	MiscInfo     string `xml:"miscInfo,attr,omitempty"`
}

// Recipient is the pager (or, on a reply, the party replied to).
type Recipient struct {
	RecipientID       string `xml:"recipientID,attr"`
	AuthorizationCode string `xml:"authorizationCode,attr,omitempty"`
}

// MessageControl is a message's ID and delivery options. The booleans are
// strings because the DTD gives them as enumerations and gateways send
// what they like; Bool reads them.
type MessageControl struct {
	MessageID           string `xml:"messageID,attr"`
	TransactionID       string `xml:"transactionID,attr,omitempty"`
	SendResponsesToID   string `xml:"sendResponsesToID,attr,omitempty"`
	AllowResponse       string `xml:"allowResponse,attr,omitempty"`
	NotifyWhenQueued    string `xml:"notifyWhenQueued,attr,omitempty"`
	NotifyWhenDelivered string `xml:"notifyWhenDelivered,attr,omitempty"`
	NotifyWhenRead      string `xml:"notifyWhenRead,attr,omitempty"`
	DeliveryPriority    string `xml:"deliveryPriority,attr,omitempty"`
	DeliveryAfter       string `xml:"deliveryAfter,attr,omitempty"`
	DeliveryBefore      string `xml:"deliveryBefore,attr,omitempty"`
	Preformatted        string `xml:"preformatted,attr,omitempty"`
	AllowTruncation     string `xml:"allowTruncation,attr,omitempty"`
}

// SubmitRequest sends one message to one recipient.
type SubmitRequest struct {
	Header  SubmitHeader `xml:"wctp-SubmitHeader"`
	Payload Payload      `xml:"wctp-Payload"`
}

// SubmitHeader is who, what ID and to whom, in the DTD's order.
type SubmitHeader struct {
	SubmitTimestamp string         `xml:"submitTimestamp,attr,omitempty"`
	Originator      Originator     `xml:"wctp-Originator"`
	MessageControl  MessageControl `xml:"wctp-MessageControl"`
	Recipient       Recipient      `xml:"wctp-Recipient"`
}

// Payload is plain text, or text with multiple-choice responses (MCR).
type Payload struct {
	MCR             *MCR    `xml:"wctp-MCR"`
	Alphanumeric    *string `xml:"wctp-Alphanumeric"`
	TransparentData *string `xml:"wctp-TransparentData"`
}

// MCR is a message with the responses the pager offers.
type MCR struct {
	MessageText string       `xml:"wctp-MessageText"`
	Choices     []string     `xml:"wctp-Choice"`
	ChoicePairs []ChoicePair `xml:"wctp-ChoicePair"`
}

// ChoicePair is a choice shown on the pager and the text sent back.
type ChoicePair struct {
	Send  string `xml:"wctp-SendChoice"`
	Reply string `xml:"wctp-ReplyChoice,omitempty"`
}

// ResponseHeader heads a StatusInfo or MessageReply: which message it is
// about.
type ResponseHeader struct {
	ResponseToMessageID   string         `xml:"responseToMessageID,attr"`
	ResponseTimestamp     string         `xml:"responseTimestamp,attr,omitempty"`
	RespondingToTimestamp string         `xml:"respondingToTimestamp,attr,omitempty"`
	OnBehalfOfRecipientID string         `xml:"onBehalfOfRecipientID,attr,omitempty"`
	Originator            Originator     `xml:"wctp-Originator"`
	MessageControl        MessageControl `xml:"wctp-MessageControl"`
	Recipient             Recipient      `xml:"wctp-Recipient"`
}

// StatusInfo reports a message's progress (Notification) or its failure.
type StatusInfo struct {
	Header       ResponseHeader `xml:"wctp-ResponseHeader"`
	Failure      *Failure       `xml:"wctp-Failure"`
	Notification *Notification  `xml:"wctp-Notification"`
}

// Notification types: there is no FAILED (a failure is a Failure).
const (
	Queued    = "QUEUED"
	Delivered = "DELIVERED"
	Read      = "READ"
)

// Notification is QUEUED, DELIVERED or READ.
type Notification struct {
	Type string `xml:"type,attr"`
}

// MessageReply is the pager user's answer: free text, or (MCRMessageReply)
// one of the offered choices.
type MessageReply struct {
	MCRMessageReply string         `xml:"MCRMessageReply,attr,omitempty"`
	Header          ResponseHeader `xml:"wctp-ResponseHeader"`
	Payload         Payload        `xml:"wctp-Payload"`
}

// PollForMessages asks a gateway that cannot push for what it holds, and
// acknowledges what the last poll returned.
type PollForMessages struct {
	PollerID           string            `xml:"pollerID,attr"`
	SecurityCode       string            `xml:"securityCode,attr,omitempty"`
	MaxMessagesInBatch string            `xml:"maxMessagesInBatch,attr,omitempty"`
	Received           []MessageReceived `xml:"wctp-MessageReceived"`
}

// MessageReceived acknowledges one polled message by its sequence number.
type MessageReceived struct {
	SequenceNo string   `xml:"sequenceNo,attr"`
	Failure    *Failure `xml:"wctp-Failure"`
	Success    *Success `xml:"wctp-Success"`
}

// PollResponse is the gateway's batch, NoMessages or a Failure.
type PollResponse struct {
	MinNextPollInterval string          `xml:"minNextPollInterval,attr,omitempty"`
	Messages            []PolledMessage `xml:"wctp-Message"`
	Failure             *Failure        `xml:"wctp-Failure"`
	NoMessages          *struct{}       `xml:"wctp-NoMessages"`
}

// PolledMessage is one message of a poll, numbered for acknowledgement.
type PolledMessage struct {
	SequenceNo     string          `xml:"sequenceNo,attr"`
	SubmitRequest  *SubmitRequest  `xml:"wctp-SubmitRequest"`
	MessageReply   *MessageReply   `xml:"wctp-MessageReply"`
	StatusInfo     *StatusInfo     `xml:"wctp-StatusInfo"`
	LookupResponse *LookupResponse `xml:"wctp-LookupResponse"`
}

// VersionQuery asks which DTDs the other side supports.
type VersionQuery struct {
	Inquirer string `xml:"inquirer,attr"`
	DateTime string `xml:"dateTime,attr,omitempty"`
}

// VersionResponse lists supported DTDs.
type VersionResponse struct {
	Responder     string       `xml:"responder,attr"`
	DateTimeOfRsp string       `xml:"dateTimeOfRsp,attr,omitempty"`
	Inquirer      string       `xml:"inquirer,attr,omitempty"`
	DateTimeOfReq string       `xml:"dateTimeOfReq,attr,omitempty"`
	ContactInfo   *ContactInfo `xml:"wctp-ContactInfo"`
	Failure       *Failure     `xml:"wctp-Failure"`
	DTDSupport    []DTDSupport `xml:"wctp-DTDSupport"`
}

// ContactInfo is how to reach the gateway's operator.
type ContactInfo struct {
	Email string `xml:"email,attr,omitempty"`
	Phone string `xml:"phone,attr,omitempty"`
	WWW   string `xml:"www,attr,omitempty"`
	Info  string `xml:"info,attr,omitempty"`
}

// DTDSupport is one supported DTD.
type DTDSupport struct {
	DTDName      string `xml:"dtdName,attr"`
	VerToken     string `xml:"verToken,attr,omitempty"`
	SupportType  string `xml:"supportType,attr,omitempty"`
	Exceptions   string `xml:"exceptions,attr,omitempty"`
	SupportUntil string `xml:"supportUntil,attr,omitempty"`
	Replacement  string `xml:"replacement,attr,omitempty"`
}

// LookupSubscriber asks what a recipient's device can do.
type LookupSubscriber struct {
	Originator     Originator           `xml:"wctp-Originator"`
	MessageControl LookupMessageControl `xml:"wctp-LookupMessageControl"`
	Recipient      Recipient            `xml:"wctp-Recipient"`
}

// LookupMessageControl is a lookup's ID.
type LookupMessageControl struct {
	MessageID         string `xml:"messageID,attr"`
	TransactionID     string `xml:"transactionID,attr,omitempty"`
	SendResponsesToID string `xml:"sendResponsesToID,attr,omitempty"`
}

// LookupResponse is the device's capabilities or a Failure.
type LookupResponse struct {
	ResponseToMessageID string      `xml:"responseToMessageID,attr"`
	TransactionID       string      `xml:"transactionID,attr,omitempty"`
	Originator          Originator  `xml:"wctp-Originator"`
	Recipient           Recipient   `xml:"wctp-Recipient"`
	LookupData          *LookupData `xml:"wctp-LookupData"`
	Failure             *Failure    `xml:"wctp-Failure"`
}

// LookupData is a device's capabilities.
type LookupData struct {
	MaxMessageLength string `xml:"maxMessageLength,attr"`
	MCRSupported     string `xml:"mcrSupported,attr,omitempty"`
	CanRespond       string `xml:"canRespond,attr,omitempty"`
}

// Marshal renders op as a complete WCTP document: XML declaration, the
// v1r3 DOCTYPE, and the root with wctpVersion set.
func Marshal(op *Operation) ([]byte, error) {
	op.Version = Version
	var b bytes.Buffer
	b.WriteString(xml.Header)
	b.WriteString(`<!DOCTYPE wctp-Operation SYSTEM "` + DTDURL + `">` + "\n")
	if err := xml.NewEncoder(&b).Encode(op); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// MaxDocument is the largest document Parse reads.
const MaxDocument = 1 << 20

// Parse reads a WCTP document leniently: any version attribute, children in
// any order, unknown elements and attributes ignored, UTF-8, ASCII or
// ISO-8859-1. The DOCTYPE is not fetched or expanded. It errors on what is
// not well-formed XML, on a root other than wctp-Operation, and on a
// document with no operation it knows.
func Parse(data []byte) (*Operation, error) {
	if len(data) > MaxDocument {
		return nil, fmt.Errorf("wctp: document of %d bytes is over the %d limit", len(data), MaxDocument)
	}
	d := xml.NewDecoder(bytes.NewReader(data))
	d.CharsetReader = charsetReader
	op := &Operation{}
	if err := d.Decode(op); err != nil {
		return nil, fmt.Errorf("wctp: %w", err)
	}
	if op.Kind() == "" {
		return nil, fmt.Errorf("wctp: the document holds no operation this service knows")
	}
	return op, nil
}

// Kind names the operation the document holds ("" if none).
func (op *Operation) Kind() string {
	switch {
	case op.SubmitRequest != nil:
		return "wctp-SubmitRequest"
	case op.StatusInfo != nil:
		return "wctp-StatusInfo"
	case op.MessageReply != nil:
		return "wctp-MessageReply"
	case op.Confirmation != nil:
		return "wctp-Confirmation"
	case op.PollForMessages != nil:
		return "wctp-PollForMessages"
	case op.PollResponse != nil:
		return "wctp-PollResponse"
	case op.VersionQuery != nil:
		return "wctp-VersionQuery"
	case op.VersionResponse != nil:
		return "wctp-VersionResponse"
	case op.LookupSubscriber != nil:
		return "wctp-LookupSubscriber"
	case op.LookupResponse != nil:
		return "wctp-LookupResponse"
	}
	return ""
}

// charsetReader accepts the encodings gateways declare besides UTF-8:
// ASCII and ISO-8859-1 (and Windows-1252, read as ISO-8859-1).
func charsetReader(label string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(label) {
	case "utf-8", "utf8", "us-ascii", "ascii":
		return in, nil
	case "iso-8859-1", "iso8859-1", "latin1", "latin-1", "windows-1252", "cp1252":
		data, err := io.ReadAll(io.LimitReader(in, MaxDocument+1))
		if err != nil {
			return nil, err
		}
		out := make([]byte, 0, len(data))
		for _, c := range data {
			out = utf8.AppendRune(out, rune(c))
		}
		return bytes.NewReader(out), nil
	}
	return nil, fmt.Errorf("encoding %q is not supported", label)
}

// Bool reads a WCTP boolean attribute leniently (true, yes, 1; any case),
// with def where it is absent.
func Bool(v string, def bool) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "":
		return def
	case "true", "yes", "1", "y":
		return true
	}
	return false
}

func boolAttr(b bool) string { return strconv.FormatBool(b) }

// Timestamp renders t as WCTP does (UTC).
func Timestamp(t time.Time) string { return t.UTC().Format(TimeLayout) }

// Text is a payload's text: the alphanumeric body, or an MCR's message.
func (p *Payload) Text() string {
	switch {
	case p.Alphanumeric != nil:
		return *p.Alphanumeric
	case p.MCR != nil:
		return p.MCR.MessageText
	}
	return ""
}
