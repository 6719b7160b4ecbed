package audit

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func syslogSink(pki *audittest.PKI, port int) *Syslog {
	return &Syslog{Address: fmt.Sprintf("127.0.0.1:%d", port), SyslogFormat: SyslogFormat{Hostname: "hipaa-test"},
		TLS: &tls.Config{ServerName: "localhost", RootCAs: pki.Pool, Certificates: []tls.Certificate{pki.Client}, MinVersion: tls.VersionTLS12}}
}

// Records reach a real rsyslog over mutually authenticated TLS as RFC 5424
// messages whose structured data and text both carry the record; a server
// certificate from another CA is refused.
func TestSyslogToRsyslog(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	pki := audittest.NewPKI(t, t.TempDir())
	port := audittest.FreePort(t)
	rs := audittest.StartRsyslog(t, pki, port)
	recs := []*Record{
		{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: c.keys.User("@a:h"), Room: c.keys.Room("!r:h"), EventID: `$odd]"\id`, EventType: "m.room.message"},
		{Type: TypeJobFailed, Outcome: OutcomeFailure, Action: "redact", JobID: 7, Count: 3},
		{Type: TypeCheckpoint, Outcome: OutcomeSuccess, SignedSeq: 2, SignedMAC: "ab", Signature: "x+/y==", KeyID: "ed25519:00"},
	}
	if err := c.AppendTx(ctx, db, recs...); err != nil {
		t.Fatal(err)
	}
	sink := syslogSink(pki, port)
	stored, _ := ReadAfter(ctx, db, 0, 10)
	if err := sink.Deliver(ctx, stored); err != nil {
		t.Fatal(err)
	}
	var lines []string
	waitUntil(t, "rsyslog to write 3 messages", func() bool { _, lines = rs.Received(t); return len(lines) == 3 })
	for i, l := range lines {
		m := audittest.SyslogLine.FindStringSubmatch(l)
		want, _ := AppendJSONLine(nil, &stored[i])
		if m[7] != strings.TrimSuffix(string(want), "\n") {
			t.Fatalf("message %d text %q, want the JSON line %q", i, m[7], want)
		}
		if m[3] != "hipaa-test" || m[5] != recs[i].Type {
			t.Fatalf("header: host %q msgid %q", m[3], m[5])
		}
	}
	if !strings.HasPrefix(lines[1], "<84>") || !strings.HasPrefix(lines[0], "<85>") {
		t.Fatalf("PRI: failure should be authpriv.warning (84), others authpriv.notice (85): %q / %q", lines[1][:5], lines[0][:5])
	}
	if !strings.Contains(lines[0], `event_id="$odd\]\"\\id"`) || !strings.Contains(lines[2], `signature="x+/y=="`) {
		t.Fatalf("structured data not escaped as RFC 5424 says: %s", lines[0])
	}
	sink.Close()

	// A server whose certificate does not chain to the configured CA is refused.
	other := audittest.NewPKI(t, t.TempDir())
	bad := syslogSink(other, port)
	bad.TLS.Certificates = []tls.Certificate{pki.Client}
	if err := bad.Deliver(ctx, stored); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("delivery to a server with an unknown certificate: %v", err)
	}
}

// rsyslog stops mid-stream while 1,000 records are appended and comes back:
// every record arrives, in order, repeated only where a broken connection
// may have lost them.
func TestSyslogOutage(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			pki := audittest.NewPKI(t, t.TempDir())
			port := audittest.FreePort(t)
			rs := audittest.StartRsyslog(t, pki, port)
			stats := &countingStats{}
			ectx, cancel := context.WithCancel(ctx)
			e := &Exporter{Name: "siem", Sink: syslogSink(pki, port), DB: db, Stats: stats, Batch: 50, Poll: 20 * time.Millisecond, MaxWait: 200 * time.Millisecond}
			done := make(chan struct{})
			go func() { e.Run(ectx); close(done) }()
			defer func() { cancel(); <-done }()

			const total = 1000
			for i := 1; i <= total; i++ {
				appendN(t, ctx, c, db, 1)
				switch i {
				case 300:
					rs.Stop()
				case 700:
					rs = audittest.StartRsyslog(t, pki, port)
				}
				time.Sleep(time.Millisecond)
			}
			waitUntil(t, "every record at rsyslog", func() bool {
				seqs, _ := rs.Received(t)
				return len(seqs) > 0 && seqs[len(seqs)-1] == total
			})
			seqs, _ := rs.Received(t)
			checkAtLeastOnce(t, seqs, total)
			t.Logf("%d records, %d messages received (%d repeated after the outage), %d delivery failures", total, len(seqs), len(seqs)-total, stats.failed)
			if stats.failed == 0 {
				t.Fatal("the outage was not noticed")
			}
		})
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
