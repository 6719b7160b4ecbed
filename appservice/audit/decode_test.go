package audit

import (
	"encoding/json"
	"strings"
	"testing"
)

// Records as the chain writes them, the odd ones too.
var decodeSeeds = []*Record{
	{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: "u_abc", Room: "r_def", EventID: "$e:hs", EventType: "m.room.encrypted"},
	{Type: TypeJobApplied, Outcome: OutcomeSuccess, Action: "redact", JobID: 42, Count: -3, PolicyVersion: "sha256:ab"},
	{Type: TypeCheckpoint, Outcome: OutcomeSuccess, SignedSeq: 999_999_999_999, SignedMAC: "mac", Signature: "sig", KeyID: "k1"},
	{Type: TypeMembership, Outcome: OutcomeDenied, Detail: "not_verified: Zoë"},
	{Type: TypeMembership, Detail: "quote \" backslash \\ newline \n"},
	{Type: TypeMembership, Detail: "bad \xff utf-8"},
	{Type: ""},
}

// What the chain writes is read without encoding/json, to the same result.
func TestRecordsDecodeCompactly(t *testing.T) {
	for _, r := range decodeSeeds {
		rec := r.encode(nil)
		var fast, slow recordJSON
		ok := decodeCompact(rec, &fast)
		if err := json.Unmarshal(rec, &slow); err != nil {
			t.Fatalf("%s: %v", rec, err)
		}
		escaped := strings.Contains(string(rec), `\`)
		if ok == escaped {
			t.Errorf("%s: fast path %v", rec, ok)
		}
		if ok && fast != slow {
			t.Errorf("%s:\n%+v\n%+v", rec, fast, slow)
		}
	}
}

// Whatever the bytes (a database writer's, say), the fast path either
// declines or agrees with encoding/json: never a record json would refuse
// or read otherwise.
func FuzzDecodeCompact(f *testing.F) {
	for _, r := range decodeSeeds {
		f.Add(r.encode(nil))
	}
	for _, s := range []string{`{}`, `{"type":"a","type":"b"}`, `{"TYPE":"a"}`, `{"count":01}`, `{"count":-0}`, `{"count":1.5}`,
		`{"count":1e3}`, `{"count":9223372036854775807}`, `{"type":null}`, `{"type":"a",}`, `{"type":"a"} `, `{ "type":"a"}`, `{"job_id":"7"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		var fast, slow recordJSON
		if !decodeCompact(rec, &fast) {
			return
		}
		if err := json.Unmarshal(rec, &slow); err != nil {
			t.Fatalf("%q: the fast path read what encoding/json refuses (%v)", rec, err)
		}
		if fast != slow {
			t.Fatalf("%q:\n%+v\n%+v", rec, fast, slow)
		}
	})
}
