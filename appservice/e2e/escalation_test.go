package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp/snpptest"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Direct messages between real E2EE clients in a room with read tracking:
// unread, each is paged to its reader at page_after and every repeat, and
// to the backup at backup_after, at the configured times; read in the
// client, it is not paged; accepted from the pager, it is paged no more.
func TestUnreadMessagesEscalate(t *testing.T) {
	carrier := wctptest.Start(t, "hipaa-test", "wctp-secret-code")
	perl := snpptest.StartPerl(t)
	dir := t.TempDir()
	directory := filepath.Join(dir, "pagers.yaml")
	if err := os.WriteFile(directory, []byte(`version: 1
pagers:
  - user: "@alice:localhost"
    gateway: spok
    recipient: "5551001"
    two_way: true
    multiple_choice: true
  - user: "@dave:localhost"
    gateway: legacy
    recipient: "5554004"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	st := startStack(t, devstack.Options{Pager: map[string]any{
		"directory": directory, "endpoint_security_code": "push-secret-code",
		"gateways": []map[string]any{
			{"name": "spok", "protocol": "wctp", "url": carrier.Server.URL, "sender_id": "hipaa-test", "security_code": "wctp-secret-code", "ca_file": carrier.CAFile(dir)},
			{"name": "legacy", "protocol": "snpp", "address": perl.Addr, "login": perl.Login, "password": perl.Password},
		},
	}})
	carrier.PushURL, carrier.PushCode = fmt.Sprintf("http://127.0.0.1:%d/_hipaa/wctp/spok", st.Opts.ASPort), "push-secret-code"
	ctx := context.Background()
	carol := newE2EEUser(t, st, "carol")
	alice := newE2EEUser(t, st, "alice")
	room := enrolledRoom(t, st, carol, alice.UserID)
	if _, err := alice.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice's client to see the encrypted room", func() bool {
		enc, _ := alice.StateStore.IsEncrypted(ctx, room)
		return enc && carol.StateStore.IsInRoom(ctx, room, alice.UserID)
	})
	const pageAfter, repeat, backupAfter = 3 * time.Second, 3 * time.Second, 9 * time.Second
	setPolicy(t, st, []byte(fmt.Sprintf(`version: 1
escalation:
  stat:
    page_after: %s
    repeat: %s
    backup_after: %s
  backup: "@dave:localhost"
rooms:
  - room_id: %q
    read_tracking: on
    page_priority: stat
`, pageAfter, repeat, backupAfter, room)))
	send := func(body string) (id.EventID, time.Time) {
		t.Helper()
		at := time.Now()
		resp, err := carol.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventID, at
	}

	// Unread: five messages, each paged to alice at 3 s and 6 s and to
	// dave, the backup, at 9 s.
	const unread = 5
	sentAt := map[int]time.Time{}
	for i := range unread {
		_, sentAt[i] = send(fmt.Sprintf("unread %d", i))
	}
	waitFor(t, "the backup's pages", func() bool { return len(perl.Pages(t)) >= unread })
	time.Sleep(2 * time.Second)
	subs := carrier.Submitted()
	if len(subs) != 2*unread || len(perl.Pages(t)) != unread {
		t.Fatalf("%d pages to alice (want %d) and %d to the backup (want %d)", len(subs), 2*unread, len(perl.Pages(t)), unread)
	}
	// Lateness: each page against its schedule, from when its message
	// was sent (the first of the burst bounds it from below).
	var late []time.Duration
	first := sentAt[0]
	for i, s := range subs {
		due := first.Add(pageAfter)
		if i >= unread {
			due = first.Add(pageAfter + repeat)
		}
		late = append(late, s.At.Sub(due))
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	t.Logf("escalation pages against schedule: min %s, p50 %s, max %s (n=%d)", late[0].Round(time.Millisecond), late[len(late)/2].Round(time.Millisecond),
		late[len(late)-1].Round(time.Millisecond), len(late))
	if late[0] < -time.Duration(0) && late[0] < -sentAt[unread-1].Sub(first) {
		t.Fatalf("a page came %s before its time", -late[0])
	}
	if late[len(late)-1] > 2*time.Second {
		t.Fatalf("a page came %s late", late[len(late)-1])
	}

	// Read in her client: not paged.
	ev, _ := send("read this one")
	alice.waitMessage(t, "carol's message", func(e *event.Event) bool { return e.ID == ev })
	if err := alice.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the read message's escalation ended", func(l auditLine) bool {
		return l.Type == "page" && l.Action == "read-in-room" && l.EventID == string(ev)
	})
	time.Sleep(repeat)
	if n := len(carrier.Submitted()); n != 2*unread {
		t.Fatalf("a message alice read was paged (%d pages)", n-2*unread)
	}

	// Accepted from the pager: paged once, then no more.
	ev, _ = send("accept this one")
	waitFor(t, "the page for it", func() bool { return len(carrier.Submitted()) == 2*unread+1 })
	carrier.Reply(carrier.Submitted()[2*unread].MessageID, "5551001", "Accept", true)
	waitAudit(t, st, "the acceptance", func(l auditLine) bool { return l.Type == "page" && l.Action == "accepted" })
	time.Sleep(repeat + time.Second)
	if n := len(carrier.Submitted()); n != 2*unread+1 {
		t.Fatalf("paged %d more times after alice accepted", n-2*unread-1)
	}
	if n := len(perl.Pages(t)); n != unread {
		t.Fatalf("the backup was paged for a read or accepted message (%d pages)", n)
	}
	verify(t, st)
}
