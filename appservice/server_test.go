package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func TestServerErrors(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	good := string(txnBodyOf(msgEvent("$ok", "!r:hs", "@u:hs", "x")))
	big := `{"events":[` + strings.Repeat(" ", 1<<20) + `]}`
	cases := []struct {
		name, method, path, auth, body string
		wantStatus                     int
		wantCode                       string
	}{
		{"no token", "PUT", "/_matrix/app/v1/transactions/1", "", good, 401, "M_UNAUTHORIZED"},
		{"wrong token", "PUT", "/_matrix/app/v1/transactions/1", "Bearer nope", good, 403, "M_FORBIDDEN"},
		{"not bearer", "PUT", "/_matrix/app/v1/transactions/1", "Basic " + testHSToken, good, 401, "M_UNAUTHORIZED"},
		{"bearer lowercase", "PUT", "/_matrix/app/v1/transactions/1", "bearer " + testHSToken, good, 401, "M_UNAUTHORIZED"},
		{"token prefix only", "PUT", "/_matrix/app/v1/transactions/1", "Bearer " + testHSToken[:10], good, 403, "M_FORBIDDEN"},
		{"header and query disagree", "PUT", "/_matrix/app/v1/transactions/1?access_token=other", "Bearer " + testHSToken, good, 403, "M_FORBIDDEN"},
		{"legacy query token", "PUT", "/transactions/q1?access_token=" + testHSToken, "", good, 200, ""},
		{"legacy wrong query token", "PUT", "/transactions/q1?access_token=bad", "", good, 403, "M_FORBIDDEN"},
		{"not JSON", "PUT", "/_matrix/app/v1/transactions/2", "Bearer " + testHSToken, `{"events": [`, 400, "M_NOT_JSON"},
		{"binary garbage", "PUT", "/_matrix/app/v1/transactions/2", "Bearer " + testHSToken, "\x00\x01\xff", 400, "M_NOT_JSON"},
		{"events not a list", "PUT", "/_matrix/app/v1/transactions/3", "Bearer " + testHSToken, `{"events": {}}`, 400, "M_BAD_JSON"},
		{"body not an object", "PUT", "/_matrix/app/v1/transactions/3", "Bearer " + testHSToken, `[1,2]`, 400, "M_BAD_JSON"},
		// A malformed event is refused alone (TestHostileMalformedEventIsRefusedAlone).
		{"event not an object", "PUT", "/_matrix/app/v1/transactions/3a", "Bearer " + testHSToken, `{"events": [1]}`, 200, ""},
		{"event without id", "PUT", "/_matrix/app/v1/transactions/3b", "Bearer " + testHSToken, `{"events": [{"room_id":"!r","type":"m","sender":"@u"}]}`, 200, ""},
		{"event id wrong type", "PUT", "/_matrix/app/v1/transactions/3c", "Bearer " + testHSToken, `{"events": [{"event_id":5,"room_id":"!r","type":"m","sender":"@u"}]}`, 200, ""},
		{"deep body", "PUT", "/_matrix/app/v1/transactions/3d", "Bearer " + testHSToken, strings.Repeat("[", 100000), 400, "M_BAD_JSON"},
		{"too large", "PUT", "/_matrix/app/v1/transactions/4", "Bearer " + testHSToken, big, 413, "M_TOO_LARGE"},
		{"empty events", "PUT", "/_matrix/app/v1/transactions/5", "Bearer " + testHSToken, `{"events": []}`, 200, ""},
		{"ephemeral only", "PUT", "/_matrix/app/v1/transactions/6", "Bearer " + testHSToken, `{"events": [], "ephemeral": [{"type":"m.typing"}]}`, 200, ""},
		{"good", "PUT", "/_matrix/app/v1/transactions/7", "Bearer " + testHSToken, good, 200, ""},
		{"wrong method", "GET", "/_matrix/app/v1/transactions/7", "Bearer " + testHSToken, "", 405, "M_UNRECOGNIZED"},
		{"unknown path", "GET", "/_matrix/app/v1/thirdparty/protocol/irc", "Bearer " + testHSToken, "", 404, "M_UNRECOGNIZED"},
		{"root", "GET", "/", "", "", 404, "M_UNRECOGNIZED"},
		{"user query", "GET", "/_matrix/app/v1/users/@x:hs", "Bearer " + testHSToken, "", 404, "M_NOT_FOUND"},
		{"legacy user query", "GET", "/users/@x:hs", "Bearer " + testHSToken, "", 404, "M_NOT_FOUND"},
		{"user query no token", "GET", "/_matrix/app/v1/users/@x:hs", "", "", 401, "M_UNAUTHORIZED"},
		{"room query", "GET", "/_matrix/app/v1/rooms/%23a:hs", "Bearer " + testHSToken, "", 404, "M_NOT_FOUND"},
		{"legacy room query", "GET", "/rooms/%23a:hs", "Bearer " + testHSToken, "", 404, "M_NOT_FOUND"},
		{"ping", "POST", "/_matrix/app/v1/ping", "Bearer " + testHSToken, `{"transaction_id":"meow"}`, 200, ""},
		{"ping empty body", "POST", "/_matrix/app/v1/ping", "Bearer " + testHSToken, ``, 200, ""},
		{"ping wrong token", "POST", "/_matrix/app/v1/ping", "Bearer x", `{}`, 403, "M_FORBIDDEN"},
		{"ping bad JSON", "POST", "/_matrix/app/v1/ping", "Bearer " + testHSToken, `{`, 400, "M_NOT_JSON"},
		{"ping wrong method", "GET", "/_matrix/app/v1/ping", "Bearer " + testHSToken, ``, 405, "M_UNRECOGNIZED"},
	}
	// Refused credentials are counted by reason, so probing shows on a dashboard.
	authReason := map[string]string{
		"no token": "missing", "user query no token": "missing",
		"not bearer": "malformed", "bearer lowercase": "malformed", "header and query disagree": "malformed",
		"wrong token": "wrong", "token prefix only": "wrong", "legacy wrong query token": "wrong", "ping wrong token": "wrong",
	}
	authCounts := func() map[string]float64 {
		out := map[string]float64{}
		for _, r := range []string{"missing", "malformed", "wrong"} {
			var m dto.Metric
			if err := p.m.AuthFailures.WithLabelValues(r).Write(&m); err != nil {
				t.Fatal(err)
			}
			out[r] = m.GetCounter().GetValue()
		}
		return out
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if want := authReason[tc.name]; (want != "") != (tc.wantStatus == 401 || tc.wantStatus == 403) {
				t.Fatalf("case has status %d but auth reason %q", tc.wantStatus, want)
			}
			before := authCounts()
			defer func() {
				after := authCounts()
				for r := range after {
					want := 0.0
					if r == authReason[tc.name] {
						want = 1
					}
					if got := after[r] - before[r]; got != want {
						t.Errorf("hipaa_auth_failures_total{reason=%q} rose by %v, want %v", r, got, want)
					}
				}
			}()
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			p.server.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantStatus, rec.Body)
			}
			var body map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("response is not JSON: %q", rec.Body)
			}
			if tc.wantCode != "" && body["errcode"] != tc.wantCode {
				t.Fatalf("errcode %v, want %s", body["errcode"], tc.wantCode)
			}
			if tc.wantCode == "" && len(body) != 0 {
				t.Fatalf("success body %v, want {}", body)
			}
		})
	}
	// After all that, the service still stores good transactions.
	if rec := p.put(t, "after", txnBodyOf(msgEvent("$after", "!r:hs", "@u:hs", "x"))); rec.Code != 200 {
		t.Fatalf("service stopped answering: %d", rec.Code)
	}
	if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 2 {
		t.Fatalf("%d events stored, want 2 ($ok, $after)", n)
	}
	// Tokens never reach the logs.
	if strings.Contains(p.logs.String(), testHSToken[:20]) {
		t.Fatal("hs_token appears in the logs")
	}
}

func TestServerOverRealHTTP(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	srv := httptest.NewServer(p.server)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/_matrix/app/v1/transactions/x%2Fy", bytes.NewReader(txnBodyOf(msgEvent("$1", "!r:hs", "@u:hs", "b"))))
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := p.count(t, `SELECT COUNT(*) FROM inbox WHERE txn_id = 'x/y'`); n != 1 {
		t.Fatal("escaped txn ID not stored unescaped")
	}
	// A chunked body larger than the limit (no Content-Length) is cut off with 413.
	pr, pw := ioPipe()
	go func() {
		pw.Write([]byte(`{"events":[`))
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for i := 0; i < 40; i++ {
			if _, err := pw.Write(chunk); err != nil {
				break
			}
		}
		pw.Close()
	}()
	req, _ = http.NewRequest(http.MethodPut, srv.URL+"/_matrix/app/v1/transactions/big", pr)
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("streamed oversize body: %d", resp.StatusCode)
	}
}

func FuzzParseTransaction(f *testing.F) {
	f.Add([]byte(`{"events":[{"event_id":"$a","room_id":"!r","type":"m.room.message","sender":"@u:hs","content":{"body":"x"}}]}`))
	f.Add([]byte(`{"events":[{"event_id":"$a","room_id":"!r","type":"m.room.member","sender":"@u:hs","state_key":"@u:hs","content":{"membership":"join"}}],"ephemeral":[]}`))
	f.Add([]byte(`{"events":null}`))
	f.Add([]byte(`{"events":[{}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"events":[{"event_id":"$a","room_id":"!r","type":"t","sender":"@u","content":{"membership":5}}]}`))
	f.Add(deepEventTxn(MaxEventDepth + 5))
	f.Add([]byte(`{"events":[` + strings.Repeat("[", 200) + `]}`))
	f.Add([]byte(`{"events":[{"event_id":"$d","room_id":"!r","type":"t","sender":"@u","content":{"k":"[[[[\"[["}}]}`))
	f.Add([]byte(`{"ephemeral":[{"type":"m.receipt","room_id":"!r:hs","content":{"$e":{"m.read":{"@u:hs":{"ts":1,"thread_id":"main"}}}}}]}`))
	f.Add([]byte(`{"de.sorunome.msc2409.ephemeral":[{"type":"m.receipt","room_id":"!r:hs","content":{"$e":{"m.read.private":{"@u:hs":{}},"m.fully_read":{"@v:hs":{"ts":2}}}}},{"type":"m.typing"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		txn, err := ParseTransaction(body)
		for _, r := range txn.Receipts {
			if auditableID(r.RoomID, '!') == "" || auditableID(r.UserID, '@') == "" || auditableID(r.EventID, '$') == "" ||
				(r.Type != "m.read" && r.Type != "m.read.private") {
				t.Fatalf("accepted a receipt with a bad field: %+v", r)
			}
		}
		if len(txn.Receipts) > MaxReceiptsPerTransaction {
			t.Fatalf("%d receipts kept, over the bound", len(txn.Receipts))
		}
		if err != nil {
			if len(txn.Events) != 0 || len(txn.Rejected) != 0 || len(txn.Receipts) != 0 {
				t.Fatal("events returned with an error")
			}
			var bad errBadJSON
			if !errors.As(err, &bad) && json.Valid(body) && nestingDepth(body) <= MaxEventDepth+envelopeDepth {
				t.Fatalf("valid JSON reported as not JSON: %q", body)
			}
			return
		}
		if len(txn.Rejected) == 0 && !json.Valid(body) {
			t.Fatalf("accepted invalid JSON: %q", body)
		}
		for _, e := range txn.Events {
			if e.ID == "" || e.RoomID == "" || e.Type == "" || e.Sender == "" {
				t.Fatalf("accepted an event missing a routing field: %+v", e)
			}
			if !json.Valid(e.Raw) {
				t.Fatal("raw event is not JSON")
			}
			if d := nestingDepth(e.Raw); d > MaxEventDepth {
				t.Fatalf("accepted an event %d levels deep", d)
			}
			_ = e.class()
			_ = e.auditDetail()
		}
		for _, r := range txn.Rejected {
			for _, s := range []string{r.EventID, r.RoomID, r.Sender, r.Type} {
				if len(s) > 255 || strings.ContainsAny(s, " \n\x00") {
					t.Fatalf("refused event's audited field %q is not an identifier", s)
				}
			}
		}
	})
}

// FuzzNestingDepth: the depth scan never undercounts what encoding/json
// would have to descend into, on any valid JSON.
func FuzzNestingDepth(f *testing.F) {
	f.Add([]byte(`{"a":[1,{"b":"]]]"}]}`))
	f.Add([]byte(`"\\"`))
	f.Add([]byte(`[[["\"["]]]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return
		}
		if got, want := nestingDepth(b), depthOf(v); got != want {
			t.Fatalf("nestingDepth %d, decoded depth %d: %q", got, want, b)
		}
	})
}

func depthOf(v any) int {
	d := 0
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			d = max(d, depthOf(e))
		}
		return d + 1
	case map[string]any:
		for _, e := range x {
			d = max(d, depthOf(e))
		}
		return d + 1
	}
	return 0
}

// deepEventTxn is a transaction of one message whose content nests depth
// levels deep, between two good messages.
func deepEventTxn(depth int) []byte {
	inner := strings.Repeat("[", depth) + strings.Repeat("]", depth)
	return []byte(`{"events":[` + string(txnEvent("$before")) + `,{"event_id":"$deep","room_id":"!r:hs","type":"m.room.message","sender":"@mallory:evil.example",` +
		`"origin_server_ts":1,"content":{"body":"x","k":` + inner + `}},` + string(txnEvent("$after")) + `]}`)
}

func txnEvent(id string) []byte {
	b, _ := json.Marshal(msgEvent(id, "!r:hs", "@u:hs", "fine"))
	return b
}

// A body of millions of '[' (5 MiB, far under the body limit) once exhausted
// the goroutine stack in the recursive JSON validator: a fatal error that
// recover cannot catch, killing the whole service. Any depth up to the body
// limit now gets 400, over real HTTP, and the service keeps answering.
func TestHostileDeeplyNestedBodyGets400(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	p.server.maxBody = 64 << 20
	srv := httptest.NewServer(p.server)
	defer srv.Close()
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []struct {
		name   string
		body   []byte
		status int
	}{
		{"5.6M [", bytes.Repeat([]byte("["), 5_600_000), 400},
		{"events of 5.6M [", []byte(`{"events":[` + strings.Repeat("[", 5_600_000)), 400},
		{"deep outside events", []byte(`{"events":[],"ephemeral":` + deep(1_000_000) + `}`), 400},
		{"deep objects", []byte(strings.Repeat(`{"a":`, 1_000_000) + "1" + strings.Repeat("}", 1_000_000)), 400},
		{"one level over, outside events", []byte(`{"events":[],"x":` + deep(MaxEventDepth+envelopeDepth) + `}`), 400},
		// Inside the events list, a deep event is refused alone.
		{"an event 1M deep", []byte(`{"events":[` + deep(1_000_000) + `]}`), 200},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/_matrix/app/v1/transactions/deep", bytes.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Fatalf("%s: status %d, want %d", c.name, resp.StatusCode, c.status)
		}
	}
	if rec := p.put(t, "after", txnBodyOf(msgEvent("$alive", "!r:hs", "@u:hs", "x"))); rec.Code != 200 {
		t.Fatalf("service stopped answering: %d", rec.Code)
	}
}

// An event a hostile server nests too deeply, or that lacks a field, is
// refused alone: the transaction's other events are stored, the bad one is
// audited (event.received, failure), and the homeserver gets its 200 instead
// of retrying the same transaction for ever.
func TestHostileMalformedEventIsRefusedAlone(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.server.maxBody = 64 << 20
			bodies := [][]byte{
				deepEventTxn(MaxEventDepth + 1),
				deepEventTxn(1_000_000),
				[]byte(`{"events":[` + string(txnEvent("$before")) + `,{"event_id":"$nosender","room_id":"!r:hs","type":"m.room.message"},` +
					`{"event_id":"$nul\u0000","room_id":"!r:hs","type":"m.room.message","sender":"@u:hs"},7,` + string(txnEvent("$after")) + `]}`),
			}
			for i, body := range bodies {
				if rec := p.put(t, fmt.Sprintf("t%d", i), body); rec.Code != 200 {
					t.Fatalf("body %d: status %d: %s", i, rec.Code, rec.Body)
				}
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 2 {
				t.Fatalf("%d events stored, want 2 ($before, $after)", n)
			}
			var refused []string
			for _, r := range p.exported(t) {
				if r["type"] == "event.received" && r["outcome"] == "failure" {
					refused = append(refused, fmt.Sprint(r["detail"], " ", r["event_id"]))
				}
			}
			want := []string{"malformed:too_deep $deep", "malformed:too_deep $deep", "malformed:missing_field $nosender",
				"malformed:bad_text <nil>", "malformed:not_object <nil>"}
			if fmt.Sprint(refused) != fmt.Sprint(want) {
				t.Fatalf("refused events audited as %q, want %q", refused, want)
			}
			// Dispatching what was stored works as usual.
			if _, err := p.disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// FuzzTransactionEndpoint drives the whole handler, with a real database, on
// arbitrary bodies: it must answer with JSON and a sane status, never panic,
// and keep storing good transactions.
func FuzzTransactionEndpoint(f *testing.F) {
	f.Add([]byte(`{"events":[{"event_id":"$a","room_id":"!r","type":"m.room.message","sender":"@u:hs"}]}`), "t1")
	f.Add([]byte(`{"events":[{"event_id":"$\u0000","room_id":"!r","type":"\ud800","sender":"@u:hs"}]}`), "t%2F2")
	f.Add([]byte("{\"events\":[{\"event_id\":\"\xff\",\"room_id\":\"!r\",\"type\":\"x\",\"sender\":\"@u\"}]}"), "t3")
	p := newPipeline(f, "sqlite3")
	f.Fuzz(func(t *testing.T, body []byte, txn string) {
		if txn == "" {
			txn = "empty"
		}
		req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/"+url.PathEscape(txn), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		rec := httptest.NewRecorder()
		p.server.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 413:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("non-JSON answer %q", rec.Body)
		}
	})
}
