package appservice

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// errBadJSON is valid JSON of the wrong shape.
type errBadJSON struct{ msg string }

func (e errBadJSON) Error() string { return e.msg }

// MaxEventDepth is how deeply one event's JSON may nest (the event object
// itself is level 1). Real events nest a handful of levels. The bound exists
// because gjson's validator recurses once per level: a body of a few million
// '[' (5 MiB, far under the body limit) exhausted the goroutine stack, a
// fatal error that recover cannot catch, and took the whole service down.
const MaxEventDepth = 64

// envelopeDepth is the nesting a transaction adds around its events
// ({"events":[ ... ]}).
const envelopeDepth = 2

// Transaction is a parsed transaction body: the events to store, and the
// ones refused one by one (a hostile or broken server's malformed event must
// not hold back the others, nor make the homeserver retry for ever).
type Transaction struct {
	Events   []*Event
	Rejected []Rejected
	// Receipts are the read receipts among its ephemeral events;
	// ReceiptsDropped how many were over MaxReceiptsPerTransaction.
	Receipts        []Receipt
	ReceiptsDropped int
}

// Rejected is an event refused on its own. Its fields are what could be
// read of it safely, for the audit trail; Reason is from a closed set.
type Rejected struct {
	Index                         int
	EventID, RoomID, Type, Sender string
	Reason                        string
}

// Reasons an event is refused.
const (
	rejectNotObject = "not_object"
	rejectMissing   = "missing_field"
	rejectWrongType = "wrong_type"
	rejectTooDeep   = "too_deep"
	rejectBadText   = "bad_text"
)

// nestingDepth is the deepest nesting of arrays and objects in b, found
// without recursion. Brackets inside strings do not count; the scan agrees
// with any JSON parser on every valid prefix, so no parser that reads b can
// go deeper than this before it finds an error.
func nestingDepth(b []byte) int {
	depth, deepest := 0, 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			// Most of a transaction is long strings (ciphertext): jump to
			// each next quote (IndexByte is vectorised) and take the first
			// one not escaped, that is, not after an odd run of backslashes.
			j := i + 1
			for {
				k := bytes.IndexByte(b[j:], '"')
				if k < 0 {
					return deepest // unterminated: no parser goes further
				}
				j += k
				n := 0
				for m := j - 1; m > i && b[m] == '\\'; m-- {
					n++
				}
				if n%2 == 0 {
					break
				}
				j++
			}
			i = j
		case '[', '{':
			depth++
			deepest = max(deepest, depth)
		case ']', '}':
			depth--
		}
	}
	return deepest
}

// ParseTransaction decodes a transaction body. A body that is not JSON, or
// whose envelope has the wrong shape, is an error (M_NOT_JSON or
// M_BAD_JSON); an event that is malformed on its own, or nests deeper than
// MaxEventDepth, is refused alone and the others are kept. It reads only
// the routing fields of each event, in one pass (gjson): this is the ingest
// hot path, and the content is kept raw for policy to read later.
func ParseTransaction(body []byte) (Transaction, error) {
	var txn Transaction
	var deep map[int]Rejected
	if nestingDepth(body) > MaxEventDepth+envelopeDepth {
		// Too deep for the recursive validator. Find the events that are
		// (gjson's iteration and path lookups do not recurse), set them
		// aside, and validate the body with each replaced by {}.
		var err error
		if body, deep, err = setAsideDeepEvents(body); err != nil {
			return txn, err
		}
	}
	if !gjson.ValidBytes(body) {
		return txn, errors.New("body is not JSON")
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return txn, errBadJSON{"transaction must be a JSON object"}
	}
	// One pass over the top level finds the events and the ephemeral
	// events: a lookup per key would scan the whole body (the events)
	// again for each key after them.
	var list, ephemeral gjson.Result
	root.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "events":
			list = v
		case ephemeralKeys[0]:
			ephemeral = v
		case ephemeralKeys[1]:
			if !ephemeral.Exists() {
				ephemeral = v
			}
		}
		return true
	})
	if list.Exists() && list.Type != gjson.Null && !list.IsArray() {
		return txn, errBadJSON{"events must be a list"}
	}
	txn.Receipts, txn.ReceiptsDropped = parseReceipts(ephemeral)
	if !list.IsArray() {
		return txn, nil
	}
	i := 0
	list.ForEach(func(_, v gjson.Result) bool {
		if r, ok := deep[i]; ok {
			txn.Rejected = append(txn.Rejected, r)
		} else if e, rej := parseEvent(v, i); rej != nil {
			txn.Rejected = append(txn.Rejected, *rej)
		} else {
			txn.Events = append(txn.Events, e)
		}
		i++
		return true
	})
	return txn, nil
}

// setAsideDeepEvents returns body with every event that nests deeper than
// MaxEventDepth replaced by {}, and which indexes those were. What is still
// too deep after that is outside the events: the envelope itself is bad.
func setAsideDeepEvents(body []byte) ([]byte, map[int]Rejected, error) {
	notJSON := errors.New("body is not JSON")
	tooDeep := errBadJSON{fmt.Sprintf("transaction nests deeper than %d levels outside its events", envelopeDepth)}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		if root.IsArray() {
			return nil, nil, errBadJSON{"transaction must be a JSON object"}
		}
		return nil, nil, notJSON
	}
	list := root.Get("events")
	if !list.IsArray() {
		return nil, nil, tooDeep
	}
	deep := map[int]Rejected{}
	var out []byte
	last := 0
	i := 0
	list.ForEach(func(_, v gjson.Result) bool {
		if nestingDepth([]byte(v.Raw)) > MaxEventDepth {
			deep[i] = Rejected{Index: i, Reason: rejectTooDeep, EventID: auditableID(v.Get("event_id").Str, '$'),
				RoomID: auditableID(v.Get("room_id").Str, '!'), Sender: auditableID(v.Get("sender").Str, '@'), Type: auditableID(v.Get("type").Str, 0)}
			if v.Index <= 0 || v.Index < last || v.Index+len(v.Raw) > len(body) {
				deep = nil // positions unknown: cannot cut safely
				return false
			}
			out = append(out, body[last:v.Index]...)
			out = append(out, "{}"...)
			last = v.Index + len(v.Raw)
		}
		i++
		return true
	})
	if deep == nil {
		return nil, nil, notJSON
	}
	out = append(out, body[last:]...)
	if nestingDepth(out) > MaxEventDepth+envelopeDepth {
		return nil, nil, tooDeep
	}
	return out, deep, nil
}

// parseEvent reads an event's routing fields. A malformed event comes back
// as a Rejected, with what could be read of it.
func parseEvent(v gjson.Result, i int) (*Event, *Rejected) {
	if !v.IsObject() {
		return nil, &Rejected{Index: i, Reason: rejectNotObject}
	}
	e := &Event{}
	var content gjson.Result
	reason := ""
	str := func(val gjson.Result, dst *string) {
		if val.Type != gjson.String {
			reason = rejectWrongType
			return
		}
		*dst = val.String()
	}
	v.ForEach(func(k, val gjson.Result) bool {
		switch k.String() {
		case "event_id":
			str(val, &e.ID)
		case "room_id":
			str(val, &e.RoomID)
		case "type":
			str(val, &e.Type)
		case "sender":
			str(val, &e.Sender)
		case "state_key":
			if val.Type != gjson.Null {
				var sk string
				str(val, &sk)
				e.StateKey = &sk
			}
		case "origin_server_ts":
			// A number, as the spec has it; anything else stores as 0 and
			// still dedupes (every re-send carries the same value).
			if val.Type == gjson.Number {
				e.OriginTS = val.Int()
			}
		case "content":
			content = val
		}
		return true
	})
	if reason == "" && (e.ID == "" || e.RoomID == "" || e.Type == "" || e.Sender == "") {
		reason = rejectMissing
	}
	if reason == "" && !(storableText(e.ID) && storableText(e.RoomID) && storableText(e.Type) && storableText(e.Sender) &&
		(e.StateKey == nil || storableText(*e.StateKey))) {
		// PostgreSQL refuses such text: stored, the whole transaction would
		// fail, and the homeserver would re-send it for ever.
		reason = rejectBadText
	}
	if reason != "" {
		return nil, &Rejected{Index: i, EventID: auditableID(e.ID, '$'), RoomID: auditableID(e.RoomID, '!'), Sender: auditableID(e.Sender, '@'),
			Type: auditableID(e.Type, 0), Reason: reason}
	}
	if e.Type == "m.room.member" && content.IsObject() {
		if m := content.Get("membership"); m.Type == gjson.String {
			e.Content.Membership = m.String()
		}
	}
	e.Raw = json.RawMessage(v.Raw)
	return e, nil
}

// storableText is UTF-8 without NUL, as a database text column takes it.
// IDs are ASCII: one pass over the bytes, the UTF-8 check only past one.
func storableText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 {
			return false
		} else if c >= utf8.RuneSelf {
			return utf8.ValidString(s[i:]) && !strings.ContainsRune(s[i:], 0)
		}
	}
	return true
}

// auditableID keeps an identifier read from a refused event only if it
// looks like one (the sigil, printable, short): the audit trail must not
// become a place to write free text.
func auditableID(s string, sigil byte) string {
	if s == "" || len(s) > 255 || (sigil != 0 && s[0] != sigil) || !utf8.ValidString(s) {
		return ""
	}
	if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return ""
	}
	return s
}
