package audit

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// recordJSON is a stored record's JSON as Fields reads it.
type recordJSON struct {
	Type          string `json:"type"`
	Outcome       string `json:"outcome"`
	Actor         string `json:"actor"`
	Room          string `json:"room"`
	EventID       string `json:"event_id"`
	EventType     string `json:"event_type"`
	Detail        string `json:"detail"`
	Action        string `json:"action"`
	JobID         int64  `json:"job_id"`
	PolicyVersion string `json:"policy_version"`
	Count         int64  `json:"count"`
	SignedSeq     int64  `json:"signed_seq"`
	SignedMAC     string `json:"signed_mac"`
	Signature     string `json:"signature"`
	KeyID         string `json:"key_id"`
}

// decodeCompact reads a record written as encode writes it: one flat
// object of known keys, strings with nothing escaped and integers, no
// spaces. It reports false for anything else (j may then be half
// filled), which encoding/json reads instead; FuzzDecodeCompact holds the
// two to the same result. Reports and exports read millions of records,
// and reflection was most of their time; here the fields share one
// allocation.
func decodeCompact(rec []byte, j *recordJSON) bool {
	s := string(rec)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return false
	}
	if len(s) == 2 {
		return true
	}
	for i := 1; ; {
		key, n, ok := plainString(s[i:])
		if !ok || i+n >= len(s) || s[i+n] != ':' {
			return false
		}
		i += n + 1
		if i >= len(s) {
			return false
		}
		if s[i] == '"' {
			v, n, ok := plainString(s[i:])
			if !ok {
				return false
			}
			switch key {
			case "type":
				j.Type = v
			case "outcome":
				j.Outcome = v
			case "actor":
				j.Actor = v
			case "room":
				j.Room = v
			case "event_id":
				j.EventID = v
			case "event_type":
				j.EventType = v
			case "detail":
				j.Detail = v
			case "action":
				j.Action = v
			case "policy_version":
				j.PolicyVersion = v
			case "signed_mac":
				j.SignedMAC = v
			case "signature":
				j.Signature = v
			case "key_id":
				j.KeyID = v
			default:
				return false // unknown, or another case of a known key (encoding/json matches those)
			}
			i += n
		} else {
			v, n, ok := plainInt(s[i:])
			if !ok {
				return false
			}
			switch key {
			case "job_id":
				j.JobID = v
			case "count":
				j.Count = v
			case "signed_seq":
				j.SignedSeq = v
			default:
				return false
			}
			i += n
		}
		if i >= len(s) {
			return false
		}
		switch s[i] {
		case ',':
			i++
		case '}':
			return i == len(s)-1
		default:
			return false
		}
	}
}

// plainString is the JSON string s starts with, if nothing in it is
// escaped and it is valid UTF-8, and how many bytes it took.
func plainString(s string) (string, int, bool) {
	if len(s) == 0 || s[0] != '"' {
		return "", 0, false
	}
	ascii := true
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			v := s[1:i]
			if !ascii && !utf8.ValidString(v) {
				return "", 0, false
			}
			return v, i + 1, true
		case c == '\\' || c < 0x20:
			return "", 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", 0, false
}

// plainInt is the JSON integer s starts with (at most 18 digits, so it
// fits an int64), and how many bytes it took.
func plainInt(s string) (int64, int, bool) {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	digits := i - start
	if digits == 0 || digits > 18 || (digits > 1 && s[start] == '0') {
		return 0, 0, false
	}
	if i < len(s) && strings.IndexByte(".eE", s[i]) >= 0 {
		return 0, 0, false
	}
	v, err := strconv.ParseInt(s[:i], 10, 64)
	return v, i, err == nil
}
