package audit

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func validateFHIR(t testing.TB, resource []byte) error { return audittest.ValidateFHIR(t, resource) }

// everyRecordType appends one record of every type the service writes.
func everyRecordType(c *Chain) []*Record {
	k := c.keys
	recs := []*Record{
		{Type: TypeServiceStart, Outcome: OutcomeSuccess, Detail: "schema-5"},
		{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: k.User("@doc:h"), Room: k.Room("!ward:h"), EventID: "$msg", EventType: "m.room.message"},
		{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: k.User("@doc:h"), Room: k.Room("!ward:h"), EventID: "$join", EventType: "m.room.member", Detail: "join"},
		{Type: TypePolicyLoad, Outcome: OutcomeSuccess, PolicyVersion: "sha256:abc", Detail: "file-changed"},
		{Type: TypePolicyLoad, Outcome: OutcomeFailure, PolicyVersion: "sha256:def", Detail: "file-changed"},
		{Type: TypePolicyDecision, Outcome: OutcomeSuccess, Actor: k.User("@doc:h"), Room: k.Room("!ward:h"), EventID: "$msg", EventType: "m.room.message", Action: "redact", Detail: "plaintext", PolicyVersion: "sha256:abc"},
		{Type: TypePolicyDecision, Outcome: OutcomeWould, Actor: k.User("@doc:h"), Room: k.Room("!ward:h"), EventID: "$c", EventType: "m.room.create", Action: "enable_encryption", Detail: "encryption"},
		{Type: TypeJobApplied, Outcome: OutcomeSuccess, Action: "redact", JobID: 4, Count: 1},
		{Type: TypeJobFailed, Outcome: OutcomeFailure, Action: "quarantine_media", JobID: 5, Count: 12},
		{Type: TypeAuditRead, Outcome: OutcomeSuccess, Actor: "os:auditor", Action: "export-fhir", Count: 9},
		{Type: TypeCheckpoint, Outcome: OutcomeSuccess, SignedSeq: 10, SignedMAC: "ab12", Signature: "c2ln+/==", KeyID: "ed25519:0011"},
		{Type: TypeAdminCommand, Outcome: OutcomeSuccess, Actor: "os:admin", Action: "rooms", Count: 3},
		{Type: TypeAdminCommand, Outcome: OutcomeDenied, Actor: k.User("@intern:h"), Room: k.Room("!mgmt:h"), EventID: "$cmd", Action: "wipe", Detail: k.User("@doc:h")},
		{Type: TypeSession, Outcome: OutcomeSuccess, Action: "idle_logoff", Detail: k.User("@doc:h"), Count: 2},
		{Type: TypeRoster, Outcome: OutcomeSuccess, Actor: "os:admin", Action: "verify", Detail: k.User("@doc:h")},
		{Type: TypeRoster, Outcome: OutcomeFailure, Actor: "roster-file", Action: "load-failed"},
		{Type: TypeMembership, Outcome: OutcomeSuccess, Actor: k.User("@x:h"), Room: k.Room("!ward:h"), EventID: "$m", Action: "refuse", Detail: "not_verified"},
		{Type: TypeAdminKey, Outcome: OutcomeDenied, Actor: k.User("@admin:h"), Room: k.Room("!mgmt:h"), EventID: "$cmd", Action: "changed", Detail: k.User("@admin:h")},
		{Type: TypeMaintenance, Outcome: OutcomeSuccess, Action: "prune", Count: 5000},
		{Type: TypeServiceStop, Outcome: OutcomeSuccess},
	}
	return recs
}

// Every record type becomes an AuditEvent that HL7's FHIR R4 schema accepts,
// with the DICOM type the mapping gives, pseudonyms instead of Matrix IDs,
// and the chain position in its details.
func TestFHIRAuditEventsValidate(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	recs := everyRecordType(c)
	if err := c.AppendTx(ctx, db, recs...); err != nil {
		t.Fatal(err)
	}
	stored, err := ReadAfter(ctx, db, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	wantType := map[string]string{TypeServiceStart: "110100", TypeEventReceived: "110107", TypeAuditRead: "110101", TypePolicyLoad: "110113", TypeJobFailed: "110113"}
	for i := range stored {
		line, err := AppendFHIRLine(nil, &stored[i], FHIRSource{Observer: "hipaa-host", Site: "General Hospital"})
		if err != nil {
			t.Fatal(err)
		}
		if err := validateFHIR(t, line); err != nil {
			t.Fatalf("record %d (%s) is not a valid FHIR R4 resource:\n%s\n%v", stored[i].Seq, recs[i].Type, line, err)
		}
		var ev AuditEventResource
		json.Unmarshal(line, &ev)
		if code, ok := wantType[recs[i].Type]; ok && ev.Type.Code != code {
			t.Errorf("%s: DICOM type %s, want %s", recs[i].Type, ev.Type.Code, code)
		}
		if strings.Contains(string(line), "@doc:h") || strings.Contains(string(line), "!ward:h") {
			t.Fatalf("a Matrix ID leaked into the resource: %s", line)
		}
		if !strings.Contains(string(line), `"type":"mac","valueString":"`+hexString(stored[i].MAC)+`"`) {
			t.Fatalf("record %d: the chain MAC is not in the resource", stored[i].Seq)
		}
	}
	// Resources the schema must refuse, so the check above can fail.
	good, _ := AppendFHIRLine(nil, &stored[0], FHIRSource{})
	for name, bad := range map[string]string{
		"a bad date":         `{"resourceType":"AuditEvent","recorded":"yesterday","agent":[],"source":{}}`,
		"an unknown outcome": strings.Replace(string(good), `"outcome":"0"`, `"outcome":"9"`, 1),
		"an unknown element": strings.Replace(string(good), `"resourceType":"AuditEvent",`, `"resourceType":"AuditEvent","phi":"x",`, 1),
		"no source observer": strings.Replace(string(good), `"observer":{"display":"matrix-hipaa"},`, ``, 1),
	} {
		if bad == string(good) {
			t.Fatalf("%s: the fixture did not change the resource", name)
		}
		if err := validateFHIR(t, []byte(bad)); err == nil {
			t.Errorf("the schema accepted an AuditEvent with %s", name)
		}
	}
}

// fhirStore is an HTTP endpoint speaking FHIR's batch interaction for
// AuditEvent PUTs, checking each resource against the R4 schema.
type fhirStore struct {
	t         *testing.T
	mu        sync.Mutex
	resources map[string][]byte
	puts      int
	failNext  int // answer this many batches with 503 first
}

func (s *fhirStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext > 0 {
		s.failNext--
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	if r.Header.Get("Content-Type") != "application/fhir+json" || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	body, _ := io.ReadAll(r.Body)
	if err := validateFHIR(s.t, body); err != nil {
		s.t.Errorf("batch Bundle is not valid FHIR R4: %v", err)
		http.Error(w, "invalid", http.StatusBadRequest)
		return
	}
	var b struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
			Request  struct{ Method, URL string }
		} `json:"entry"`
	}
	json.Unmarshal(body, &b)
	type status struct {
		Response struct {
			Status string `json:"status"`
		} `json:"response"`
	}
	reply := struct {
		ResourceType string   `json:"resourceType"`
		Type         string   `json:"type"`
		Entry        []status `json:"entry"`
	}{ResourceType: "Bundle", Type: "batch-response"}
	for _, e := range b.Entry {
		var st status
		st.Response.Status = "201 Created"
		if _, ok := s.resources[e.Request.URL]; ok {
			st.Response.Status = "200 OK"
		}
		s.resources[e.Request.URL] = e.Resource
		s.puts++
		reply.Entry = append(reply.Entry, st)
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	json.NewEncoder(w).Encode(reply)
}

// The fhir exporter PUTs every record as AuditEvent/matrix-hipaa-<seq> in
// batch Bundles; after the server refuses some batches, every record is
// there once (a resend updates the same resource).
func TestFHIRServerExport(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	for i := 0; i < 5; i++ {
		if err := c.AppendTx(ctx, db, everyRecordType(c)...); err != nil {
			t.Fatal(err)
		}
	}
	store := &fhirStore{t: t, resources: map[string][]byte{}, failNext: 2}
	srv := httptest.NewServer(store)
	defer srv.Close()
	stats := &countingStats{}
	ectx, cancel := context.WithCancel(ctx)
	e := &Exporter{Name: "fhir", Sink: &FHIRServer{BaseURL: srv.URL + "/fhir"}, DB: db, Stats: stats, Batch: 16, Poll: time.Millisecond, MaxWait: time.Millisecond}
	done := make(chan struct{})
	go func() { e.Run(ectx); close(done) }()
	waitUntil(t, "every record at the FHIR server", func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return len(store.resources) == 5*len(everyRecordType(c))
	})
	cancel()
	<-done
	if stats.failed != 2 {
		t.Fatalf("%d failures, want the 2 refused batches", stats.failed)
	}
	for i := 1; i <= 5*len(everyRecordType(c)); i++ {
		if _, ok := store.resources["AuditEvent/matrix-hipaa-"+strconv.Itoa(i)]; !ok {
			t.Fatalf("record %d missing", i)
		}
	}
}
