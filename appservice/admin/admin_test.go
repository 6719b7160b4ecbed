package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

const token = "admin-token-0123456789abcdefghijklmnop"

func newServer(t *testing.T, dbType string) (*Server, *audit.Chain) {
	t.Helper()
	db, _ := storetest.Open(t, dbType)
	keys, err := audit.NewKeys(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	chain := audit.NewChain(keys, db, time.Now)
	pol, err := policy.Parse("p.yaml", []byte("version: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	return &Server{DB: db, Chain: chain, Policy: func() *policy.Policy { return pol }, Token: token}, chain
}

func call(t *testing.T, s *Server, method, path, auth, body string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

// Holds through the admin API: placed, listed (with reasons, the read
// audited), released; who asked is on the record, the reason is not.
func TestAdminHolds(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			s, _ := newServer(t, dbType)
			code, out := call(t, s, http.MethodPost, "/_hipaa/admin/v1/holds", token, `{"room_id":"!ward:h","reason":"litigation 2026-114","by":"counsel@hospital"}`)
			if code != http.StatusCreated || out["id"] != float64(1) {
				t.Fatalf("place: %d %v", code, out)
			}
			code, out = call(t, s, http.MethodGet, "/_hipaa/admin/v1/holds", token, "", "X-Hipaa-Actor", "records-office")
			holds, _ := out["holds"].([]any)
			if code != 200 || len(holds) != 1 || holds[0].(map[string]any)["reason"] != "litigation 2026-114" ||
				holds[0].(map[string]any)["placed_by"] != "admin-api:counsel@hospital" {
				t.Fatalf("list: %d %v", code, out)
			}
			if code, out := call(t, s, http.MethodPost, "/_hipaa/admin/v1/holds/1/release", token, `{"by":"counsel@hospital"}`); code != 200 {
				t.Fatalf("release: %d %v", code, out)
			}
			if code, _ := call(t, s, http.MethodPost, "/_hipaa/admin/v1/holds/1/release", token, `{"by":"counsel@hospital"}`); code != http.StatusNotFound {
				t.Fatalf("second release: %d", code)
			}
			var buf bytes.Buffer
			if _, err := audit.ExportJSONL(context.Background(), s.DB, audit.Range{}, &buf); err != nil {
				t.Fatal(err)
			}
			trail := buf.String()
			if strings.Contains(trail, "litigation") {
				t.Fatal("a hold's reason is in the audit trail")
			}
			for _, want := range []string{`"type":"hold","outcome":"success","actor":"admin-api:counsel@hospital"`, `"action":"hold-list"`, `"actor":"admin-api:records-office"`} {
				if !strings.Contains(trail, want) {
					t.Errorf("trail lacks %s", want)
				}
			}
		})
	}
}

func TestAdminRefusesBadRequests(t *testing.T) {
	s, _ := newServer(t, "sqlite3")
	var refused []string
	s.Refused = func(reason string) { refused = append(refused, reason) }
	cases := []struct {
		name, method, path, auth, body string
		want                           int
		code                           string
	}{
		{"no token", "GET", "/_hipaa/admin/v1/holds", "", "", 401, "M_MISSING_TOKEN"},
		{"wrong token", "GET", "/_hipaa/admin/v1/holds", "nope", "", 403, "M_FORBIDDEN"},
		{"nobody asked", "GET", "/_hipaa/admin/v1/holds", token, "", 400, "M_MISSING_PARAM"},
		{"not JSON", "POST", "/_hipaa/admin/v1/holds", token, "{", 400, "M_BAD_JSON"},
		{"unknown field", "POST", "/_hipaa/admin/v1/holds", token, `{"room":"!a:h","reason":"r","by":"x"}`, 400, "M_BAD_JSON"},
		{"room and user", "POST", "/_hipaa/admin/v1/holds", token, `{"room_id":"!a:h","user_id":"@u:h","reason":"r","by":"x"}`, 400, "M_INVALID_PARAM"},
		{"not a room ID", "POST", "/_hipaa/admin/v1/holds", token, `{"room_id":"ward 7","reason":"r","by":"x"}`, 400, "M_INVALID_PARAM"},
		{"no reason", "POST", "/_hipaa/admin/v1/holds", token, `{"user_id":"@u:h","reason":" ","by":"x"}`, 400, "M_MISSING_PARAM"},
		{"huge body", "POST", "/_hipaa/admin/v1/holds", token, `{"reason":"` + strings.Repeat("x", 70_000) + `"}`, 413, "M_TOO_LARGE"},
		{"bad hold ID", "POST", "/_hipaa/admin/v1/holds/abc/release", token, `{"by":"x"}`, 404, "M_NOT_FOUND"},
		{"wrong method", "DELETE", "/_hipaa/admin/v1/holds", token, "", 405, "M_UNRECOGNIZED"},
		{"unknown path", "GET", "/_hipaa/admin/v1/nope", token, "", 404, "M_UNRECOGNIZED"},
	}
	for _, c := range cases {
		code, out := call(t, s, c.method, c.path, c.auth, c.body)
		if code != c.want || out["errcode"] != c.code {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, out, c.want, c.code)
		}
	}
	// Refused credentials are reported (logged and counted by the service).
	if fmt.Sprint(refused) != "[missing wrong]" {
		t.Fatalf("refused credentials reported as %v", refused)
	}
	if code, out := call(t, s, "GET", "/_hipaa/admin/v1/rooms", token, "", "X-Hipaa-Actor", "noc"); code != 200 || out["rooms"] == nil {
		t.Fatalf("rooms: %d %v", code, out)
	}
	// A wipe is queued for the running service; its progress can be read.
	if code, out := call(t, s, "POST", "/_hipaa/admin/v1/wipes", token, `{"user_id":"@jdoe:h","reason":"lost phone","by":"helpdesk"}`); code != 202 || out["id"] != float64(1) {
		t.Fatalf("wipe: %d %v", code, out)
	}
	if code, out := call(t, s, "GET", "/_hipaa/admin/v1/wipes/1", token, ""); code != 400 {
		t.Fatalf("wipe status without saying who asks: %d %v", code, out)
	}
	if code, out := call(t, s, "GET", "/_hipaa/admin/v1/wipes/1", token, "", "X-Hipaa-Actor", "helpdesk"); code != 200 || out["state"] != "requested" || out["user_id"] != "@jdoe:h" {
		t.Fatalf("wipe status: %d %v", code, out)
	}
	// The read is on the record, with who asked.
	var buf bytes.Buffer
	if _, err := audit.ExportJSONL(context.Background(), s.DB, audit.Range{}, &buf); err != nil || !strings.Contains(buf.String(), `"actor":"admin-api:helpdesk","action":"wipe-status"`) {
		t.Fatalf("wipe status read not audited (%v):\n%s", err, buf.String())
	}
	if code, out := call(t, s, "POST", "/_hipaa/admin/v1/wipes", token, `{"user_id":"jdoe","reason":"x","by":"helpdesk"}`); code != 400 {
		t.Fatalf("wipe of a non-user: %d %v", code, out)
	}
	if code, _ := call(t, s, "GET", "/_hipaa/admin/v1/wipes/99", token, "", "X-Hipaa-Actor", "helpdesk"); code != 404 {
		t.Fatalf("unknown wipe: %d", code)
	}
}

func FuzzAdminRequests(f *testing.F) {
	f.Add("POST", "/_hipaa/admin/v1/holds", `{"room_id":"!a:h","reason":"r","by":"x"}`)
	f.Add("POST", "/_hipaa/admin/v1/holds/1/release", `{"by":"x"}`)
	f.Add("GET", "/_hipaa/admin/v1/rooms", ``)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !strings.HasPrefix(path, "/") {
			return
		}
		s, _ := newServer(t, "sqlite3")
		req, err := http.NewRequest(method, "http://x"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("X-Hipaa-Actor", "fuzz")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
		}
	})
}

// The roster through the admin API: verify, list (the read audited),
// revoke; bad requests answered 400 with the reason.
func TestAdminRoster(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			s, _ := newServer(t, dbType)
			const base = "/_hipaa/admin/v1/roster"
			cases := []struct {
				method, path, body string
				want               int
				contains           string
			}{
				{http.MethodPost, base, `{"user_id":"@rn:h","npi":"1003000126","role":"nurse","licence_expires":"2099-01-31","by":"hr"}`, 200, "verified"},
				{http.MethodPost, base, `{"user_id":"@doc:h","npi":"1003000127","role":"physician","by":"hr"}`, 400, "check digit"},
				{http.MethodPost, base, `{"user_id":"@doc:h","npi":"1234567893","role":"physician","licence_expires":"31/12/2027","by":"hr"}`, 400, "not a date"},
				{http.MethodPost, base, `{"user_id":"@doc:h","npi":"1234567893","role":"physician"}`, 400, "who is asking"},
				{http.MethodGet, base, "", 200, `"npi":"1003000126"`},
				{http.MethodPost, base + "/revoke", `{"user_id":"@rn:h","reason":"suspended","by":"hr"}`, 200, "revoked"},
				{http.MethodPost, base + "/revoke", `{"user_id":"@rn:h","reason":"again","by":"hr"}`, 400, "not a verified clinician"},
				{http.MethodPost, base + "/revoke", `{"user_id":"@x:h","by":"hr"}`, 400, "needs a reason"},
				{http.MethodDelete, base, "", 405, "method not allowed"},
			}
			for _, c := range cases {
				req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
				req.Header.Set("Authorization", "Bearer "+token)
				if c.method == http.MethodGet {
					req.Header.Set("X-Hipaa-Actor", "auditor")
				}
				rec := httptest.NewRecorder()
				s.ServeHTTP(rec, req)
				if rec.Code != c.want || !strings.Contains(rec.Body.String(), c.contains) {
					t.Fatalf("%s %s %s: %d %s", c.method, c.path, c.body, rec.Code, rec.Body)
				}
			}
			code, out := call(t, s, http.MethodGet, base, token, "", "X-Hipaa-Actor", "auditor")
			list := out["clinicians"].([]any)
			if code != 200 || len(list) != 1 || list[0].(map[string]any)["revoked"] != true || list[0].(map[string]any)["verified"] != false {
				t.Fatalf("list after revoking: %d %v", code, out)
			}
		})
	}
}

// One token per person: whoever holds alice's token is recorded as alice,
// whatever the request says it is; she need not say who she is; a token not
// on the list is refused. The shared token still names who the request says.
func TestAdminPerPersonTokens(t *testing.T) {
	s, _ := newServer(t, "sqlite3")
	aliceToken := "alice-token-0123456789abcdef0123456789abcdef"
	sum := sha256.Sum256([]byte(aliceToken))
	s.People = map[string]string{hex.EncodeToString(sum[:]): "alice"}
	if code, out := call(t, s, "POST", "/_hipaa/admin/v1/holds", aliceToken, `{"room_id":"!a:h","reason":"litigation","by":"mallory"}`); code != 201 {
		t.Fatalf("hold with alice's token: %d %v", code, out)
	}
	if code, out := call(t, s, "GET", "/_hipaa/admin/v1/holds", aliceToken, ""); code != 200 {
		t.Fatalf("list with alice's token, not saying who: %d %v", code, out)
	}
	if code, _ := call(t, s, "GET", "/_hipaa/admin/v1/holds", aliceToken+"x", "", "X-Hipaa-Actor", "alice"); code != 403 {
		t.Fatalf("a token not on the list: %d", code)
	}
	if code, _ := call(t, s, "GET", "/_hipaa/admin/v1/holds", token, "", "X-Hipaa-Actor", "noc"); code != 200 {
		t.Fatalf("shared token: %d", code)
	}
	var buf bytes.Buffer
	if _, err := audit.ExportJSONL(context.Background(), s.DB, audit.Range{}, &buf); err != nil {
		t.Fatal(err)
	}
	export := buf.String()
	if strings.Contains(export, "mallory") || strings.Count(export, `"actor":"admin-api:alice"`) != 2 || !strings.Contains(export, `"actor":"admin-api:noc"`) {
		t.Fatalf("audit trail names the wrong people:\n%s", export)
	}
}
