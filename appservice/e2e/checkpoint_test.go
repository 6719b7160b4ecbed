package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// The service signs the chain head when it stops; `audit verify` checks the
// signed checkpoints, so a tail cut off the chain (with the head rewound to
// match, which the chain alone cannot show) is reported, as is a public key
// that did not sign them.
func TestSignedCheckpointsCatchACutOffTail(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"}); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the room's creation", func(l auditLine) bool { return l.Type == "event.received" && l.EventType == "m.room.create" })
	st.StopService()

	out := verify(t, st)
	if !strings.Contains(out, "signed checkpoints check out") || strings.Contains(out, " 0 signed checkpoints") {
		t.Fatalf("verify after a clean stop: %s", out)
	}
	pub, _, err := st.Service("audit", "public-key")
	if err != nil || !strings.HasPrefix(string(pub), "ed25519:") {
		t.Fatalf("public-key: %s %v", pub, err)
	}
	other, err := audit.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	wrong, _, err := st.Service("audit", "verify", "-public-key", audit.FormatPublicKey(other.Pub))
	if err == nil || !strings.Contains(string(wrong), "not signed by key") {
		t.Fatalf("verify with another key: %s (%v)", wrong, err)
	}

	// Cut the last records off and rewind the head to match.
	db, err := store.Open(ctx, "sqlite3", filepath.Join(filepath.Dir(st.ServiceConfig), "matrix-hipaa.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	var head int64
	db.R.QueryRow(`SELECT seq FROM audit_head`).Scan(&head)
	cut := head - 5
	for _, q := range []string{
		`DELETE FROM audit WHERE seq > $1`,
		`UPDATE audit_head SET seq = $1, ts = (SELECT ts FROM audit WHERE seq = $1), mac = (SELECT mac FROM audit WHERE seq = $1)`,
	} {
		if _, err := db.W.Exec(q, cut); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	broken, _, err := st.Service("audit", "verify")
	if err == nil || !strings.Contains(string(broken), "BROKEN") || !strings.Contains(string(broken), "tail was cut off") {
		t.Fatalf("verify after cutting the tail: %s (%v)", broken, err)
	}
	t.Logf("after cutting %d records: %s", head-cut, strings.TrimSpace(string(broken)))
}

// rsyslog stops while people are sending and comes back: every one of 1,000
// events sent meanwhile reaches it as an event.received record, in order,
// repeated only after the broken connection.
func TestSyslogOutageWithRealEvents(t *testing.T) {
	pki := audittest.NewPKI(t, t.TempDir())
	port := audittest.FreePort(t)
	rs := audittest.StartRsyslog(t, pki, port)
	st := startStack(t, devstack.Options{AuditExporters: []map[string]any{{
		"name": "siem", "type": "syslog", "address": rs.Address(), "server_name": "localhost",
		"ca_file": pki.CAFile, "cert_file": pki.ClientCert, "key_file": pki.ClientKey,
	}}})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	const total = 1000
	sent := map[string]bool{}
	for i := 1; i <= total; i++ {
		resp, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "org.example.vitals", Class: event.MessageEventType}, map[string]any{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		sent[string(resp.EventID)] = true
		switch i {
		case 200:
			rs.Stop()
		case 700:
			rs = audittest.StartRsyslog(t, pki, port)
		}
	}
	var seqs []int64
	var got map[string]int
	waitFor(t, "all 1,000 events at rsyslog", func() bool {
		var lines []string
		seqs, lines = rs.Received(t)
		got = map[string]int{}
		for _, l := range lines {
			if i := strings.Index(l, `event_id="`); i >= 0 && strings.Contains(l, `type="event.received"`) {
				id := l[i+len(`event_id="`):]
				id = id[:strings.IndexByte(id, '"')]
				if sent[id] {
					got[id]++
				}
			}
		}
		return len(got) == total
	})
	// In order: the seq stream only steps back to repeat.
	var high int64
	repeats := 0
	for i, s := range seqs {
		if s > high+1 && high > 0 {
			t.Fatalf("message %d: seq %d follows %d (a gap)", i, s, high)
		}
		if s <= high {
			repeats++
		}
		high = max(high, s)
	}
	t.Logf("%d events, %d syslog messages, %d repeated after the outage", total, len(seqs), repeats)
}
