package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Events sent by real clients through Dendrite reach the audit trail exactly
// once, the chain verifies, and no PHI (bodies, room names, topics, display
// names) appears in logs, metrics, the export or the audit tables.
func TestEventsAuditedOnceWithoutPHI(t *testing.T) {
	// Every exporter runs: the example's jsonl file, and syslog over TLS to a
	// real rsyslog.
	pki := audittest.NewPKI(t, t.TempDir())
	rs := audittest.StartRsyslog(t, pki, audittest.FreePort(t))
	st := startStack(t, devstack.Options{AuditExporters: []map[string]any{{
		"name": "siem", "type": "syslog", "address": rs.Address(), "server_name": "localhost",
		"ca_file": pki.CAFile, "cert_file": pki.ClientCert, "key_file": pki.ClientKey,
	}, {
		"name": "fhir", "type": "fhir", "path": "audit/auditevent.ndjson", "site": "Test Hospital",
	}}})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	bob := newUser(t, st, "bob")

	canaries := []string{"CANARYname7731", "CANARYtopic5512", "CANARYdisplay9090", "CANARYbody4242", "CANARYreply1337"}
	if err := alice.SetDisplayName(ctx, "Dr "+canaries[2]); err != nil {
		t.Fatal(err)
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Ward " + canaries[0], Topic: "Patient " + canaries[1], Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	var sent []id.EventID
	for i := 0; i < 20; i++ {
		resp, err := alice.SendText(ctx, room.RoomID, fmt.Sprintf("%s %d: BP 120/80", canaries[3], i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	for i := 0; i < 10; i++ {
		resp, err := bob.SendText(ctx, room.RoomID, fmt.Sprintf("%s %d", canaries[4], i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	resp, err := alice.SendStateEvent(ctx, room.RoomID, event.StateTopic, "", map[string]string{"topic": "New " + canaries[1]})
	if err != nil {
		t.Fatal(err)
	}
	sent = append(sent, resp.EventID)

	counts := waitAudited(t, st, sent, time.Minute)
	for _, e := range sent {
		if counts[string(e)] != 1 {
			t.Errorf("event %s audited %d times", e, counts[string(e)])
		}
	}
	// The room's creation and both joins are there too, as state records.
	lines, raw := export(t, st)
	kinds := map[string]int{}
	sentSet := map[string]bool{}
	for _, e := range sent {
		sentSet[string(e)] = true
	}
	ours, notices := 0, 0
	for _, l := range lines {
		if l.Type == "event.received" {
			kinds[l.EventType+"/"+l.Detail]++
			if l.EventType == "m.room.message" && sentSet[l.EventID] {
				ours++
			}
		}
		if l.Type == "job.applied" && l.Action == "notice" {
			notices++
		}
	}
	for _, k := range []string{"m.room.create/state", "m.room.member/join", "m.room.member/invite", "m.room.name/state", "m.room.topic/state", "m.room.message/"} {
		if kinds[k] == 0 {
			t.Errorf("no %s record in the audit trail (have %v)", k, kinds)
		}
	}
	// Every message sent is there once; the only others are the bot's
	// notices (at most one per applied notice job; an encrypted one is
	// m.room.encrypted), which are events like any other.
	messages := kinds["m.room.message/"]
	if ours != 30 || messages-ours > notices {
		t.Errorf("%d message records: %d of the 30 sent, %d others for %d notices", messages, ours, messages-ours, notices)
	}
	out := verify(t, st)
	if !strings.HasPrefix(out, "OK: ") {
		t.Fatalf("verify said %q", out)
	}
	t.Logf("audit verify: %s", strings.TrimSpace(out))

	// No PHI anywhere we write.
	metrics := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort))
	for _, name := range []string{fmt.Sprintf(`hipaa_events_total{class="message",delivery="new"} %d`, messages), "hipaa_transactions_total", "hipaa_transaction_duration_seconds_bucket",
		"hipaa_inbox_lag_events", "hipaa_audit_records_total", `hipaa_jobs{state="pending"}`, `hipaa_jobs{state="failed"} 0`} {
		if !bytes.Contains(metrics, []byte(name)) {
			t.Errorf("metrics output lacks %s", name)
		}
	}
	if bytes.Contains(metrics, []byte(`hipaa_jobs{state="done"}`)) {
		t.Error(`metrics still count done jobs (a scan of the whole job table each refresh)`)
	}
	logs, err := os.ReadFile(st.ServiceLog)
	if err != nil {
		t.Fatal(err)
	}
	tables := auditTables(t, st)
	// Both exporters have caught up with the trail as exported above.
	var lastSeq int64
	if len(lines) > 0 {
		lastSeq = lines[len(lines)-1].Seq
	}
	jsonlFile := filepath.Join(filepath.Dir(st.ServiceConfig), "audit", "audit.jsonl")
	fhirFile := filepath.Join(filepath.Dir(st.ServiceConfig), "audit", "auditevent.ndjson")
	var jsonl, syslogged, fhir []byte
	waitFor(t, "the exporters to catch up", func() bool {
		seqs, _ := rs.Received(t)
		jsonl, _ = os.ReadFile(jsonlFile)
		fhir, _ = os.ReadFile(fhirFile)
		return len(seqs) > 0 && seqs[len(seqs)-1] >= lastSeq && bytes.Contains(jsonl, []byte(fmt.Sprintf(`{"seq":%d,`, lastSeq))) &&
			bytes.Contains(fhir, []byte(fmt.Sprintf(`"id":"matrix-hipaa-%d"`, lastSeq)))
	})
	syslogged, _ = os.ReadFile(rs.Out)
	seqs, _ := rs.Received(t)
	// Every AuditEvent the real flow produced is valid FHIR R4.
	resources := bytes.Split(bytes.TrimSpace(fhir), []byte("\n"))
	for _, r := range resources {
		if err := audittest.ValidateFHIR(t, r); err != nil {
			t.Fatalf("an exported AuditEvent is not valid FHIR R4: %v\n%s", err, r)
		}
	}
	t.Logf("exporters: jsonl %d bytes, syslog %d messages, fhir %d AuditEvents (all valid R4)", len(jsonl), len(seqs), len(resources))
	sources := map[string][]byte{"export": raw, "metrics": metrics, "logs": logs, "audit tables": tables,
		"jsonl exporter": jsonl, "syslog exporter (rsyslog)": syslogged, "fhir exporter": fhir}
	hits := 0
	for name, data := range sources {
		for _, c := range append(canaries, "pw-alice", st.SharedSecret) {
			if bytes.Contains(data, []byte(c)) {
				t.Errorf("%q found in %s", c, name)
				hits++
			}
		}
	}
	// Tokens never appear in logs either.
	cfg, _ := os.ReadFile(st.ServiceConfig)
	for _, tok := range tokensIn(string(cfg)) {
		if bytes.Contains(logs, []byte(tok)) {
			t.Error("a token appears in the service log")
			hits++
		}
	}
	t.Logf("canary scan: %d sources, %d canaries, %d hits", len(sources), len(canaries), hits)

	// The database's raw files, every table (the bot's crypto and
	// room-state caches included) and every free page: once the service
	// stops (its WAL is checkpointed into the file), none of the names,
	// topics, display names or bodies is anywhere in them.
	st.StopService()
	dbFile := filepath.Join(filepath.Dir(st.ServiceConfig), "matrix-hipaa.db")
	for _, f := range []string{dbFile, dbFile + "-wal"} {
		data, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, c := range canaries {
			if bytes.Contains(data, []byte(c)) {
				t.Errorf("%q found in the raw file %s", c, filepath.Base(f))
			}
		}
		if err == nil {
			t.Logf("raw scan of %s: %d bytes", filepath.Base(f), len(data))
		}
	}

	// Tampering with the service's own database is caught by the CLI.
	db, err := sql.Open("sqlite3", filepath.Join(filepath.Dir(st.ServiceConfig), "matrix-hipaa.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit SET rec = replace(rec, 'm.room.message', 'm.room.messagX') WHERE seq = (SELECT MIN(seq) FROM audit WHERE rec LIKE '%m.room.message%')`); err != nil {
		t.Fatal(err)
	}
	var tampered int64
	db.QueryRow(`SELECT MIN(seq) FROM audit WHERE rec LIKE '%messagX%'`).Scan(&tampered)
	db.Close()
	out2, _, err := st.Service("audit", "verify")
	if err == nil || !strings.Contains(string(out2), fmt.Sprintf("BROKEN: audit record %d:", tampered)) {
		t.Fatalf("verify after tampering with record %d: err=%v, output %q", tampered, err, out2)
	}
	t.Logf("after tampering: %s", strings.TrimSpace(string(out2)))
}

func tokensIn(cfg string) []string {
	var out []string
	for _, line := range strings.Split(cfg, "\n") {
		line = strings.TrimSpace(line)
		for _, k := range []string{"as_token:", "hs_token:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				out = append(out, strings.Trim(strings.TrimSpace(v), `"`))
			}
		}
	}
	return out
}

// auditTables dumps every audit and job row, and every inbox body still
// stored, as the database holds them.
func auditTables(t *testing.T, st *devstack.Stack) []byte {
	t.Helper()
	db := serviceDB(t, st, "mode=ro")
	var buf bytes.Buffer
	for _, q := range []string{`SELECT seq, ts, rec, mac FROM audit`, `SELECT seq, mac FROM audit_head`, `SELECT kind, dedupe_key, payload, last_error FROM job`} {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			rows.Scan(ptrs...)
			for _, v := range vals {
				fmt.Fprintf(&buf, "%s\t", v)
			}
			buf.WriteByte('\n')
		}
		rows.Close()
	}
	var left int
	// Wait for the dispatcher to clear bodies, then none may remain.
	for i := 0; i < 50; i++ {
		db.QueryRow(`SELECT COUNT(*) FROM inbox WHERE content IS NOT NULL`).Scan(&left)
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if left != 0 {
		t.Errorf("%d inbox rows still hold event content after dispatch", left)
	}
	return buf.Bytes()
}

// The service is SIGKILLed over and over while a client keeps sending; after
// the last restart every sent event is in the audit trail exactly once.
func TestCrashLosesNothing(t *testing.T) {
	// Both databases: each commits a transaction its own way (PostgreSQL in
	// two pipelined batches), and a kill may fall anywhere in either.
	onEachDatabase(t, testCrashLosesNothing)
}

func testCrashLosesNothing(t *testing.T, st *devstack.Stack) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var sent []id.EventID
	var sendErrs int
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		for i := 0; ctx.Err() == nil; i++ {
			resp, err := alice.SendText(ctx, room.RoomID, fmt.Sprintf("crash test message %d", i))
			mu.Lock()
			if err == nil {
				sent = append(sent, resp.EventID)
			} else if ctx.Err() == nil {
				sendErrs++
			}
			mu.Unlock()
			time.Sleep(30 * time.Millisecond)
		}
	}()

	const kills = 20
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < kills; i++ {
		time.Sleep(time.Duration(300+rng.IntN(1700)) * time.Millisecond)
		st.KillService()
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		if err := st.StartService(ctx); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
	}
	// At least 200 messages in all: a slower homeserver (Synapse answers a
	// send in tens of milliseconds more than Dendrite) sends fewer during
	// the kills, and the rest arrive after the last restart.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		n := len(sent)
		mu.Unlock()
		if n >= 200 || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(time.Second)
	cancel()
	<-sendDone
	mu.Lock()
	ids := append([]id.EventID(nil), sent...)
	mu.Unlock()
	if len(ids) < 200 {
		t.Fatalf("only %d messages were sent during the test (%d send errors)", len(ids), sendErrs)
	}
	counts := waitAudited(t, st, ids, 4*time.Minute)
	lost, dup := 0, 0
	for _, e := range ids {
		switch n := counts[string(e)]; {
		case n == 0:
			lost++
		case n > 1:
			dup++
		}
	}
	// Duplicates among every received event, not only our messages.
	for _, n := range counts {
		if n > 1 {
			dup++
		}
	}
	t.Logf("crash test: %d SIGKILLs, %d messages sent, %d found in the audit export, %d lost, %d duplicated",
		kills, len(ids), len(ids)-lost, lost, dup)
	if lost != 0 || dup != 0 {
		t.Fatalf("%d lost, %d duplicated", lost, dup)
	}
	out := verify(t, st)
	t.Logf("audit verify: %s", strings.TrimSpace(out))
	logs, _ := os.ReadFile(st.ServiceLog)
	if bytes.Contains(logs, []byte("panic")) {
		t.Error("the service log mentions a panic")
	}
}
