// Command pagelatency measures the pager bridge on a real homeserver: how
// long from a client sending a message in a room linked to pagers until
// each gateway has accepted the page (a WCTP carrier over HTTPS that
// validates every document against the DTD, and Debian's
// Net::SNPP::Server), and how close to schedule unread direct messages are
// escalated: from the client's send and, from the audit trail, from the
// service's receipt of the message to its escalation decision.
//
//	go run -tags goolm ./deploy/pagelatency -n 200 -escalations 50
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/pager"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp/snpptest"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "pagelatency:", err)
		os.Exit(1)
	}
}

// tool is what the test peers need of their caller, outside a test.
type tool struct{ cleanups []func() }

func (t *tool) Helper()                           {}
func (t *tool) Error(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (t *tool) Errorf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *tool) Fatal(args ...any)                 { check(fmt.Errorf("%s", fmt.Sprint(args...))) }
func (t *tool) Fatalf(format string, args ...any) { check(fmt.Errorf(format, args...)) }
func (t *tool) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *tool) TempDir() string {
	d, err := os.MkdirTemp("", "pagelatency")
	check(err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
func (t *tool) close() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

func main() {
	n := flag.Int("n", 200, "messages in the linked room")
	gap := flag.Duration("gap", 100*time.Millisecond, "time between messages")
	escalations := flag.Int("escalations", 50, "unread direct messages to escalate")
	hsName := flag.String("homeserver", "dendrite", "dendrite or synapse")
	flag.Parse()
	ctx := context.Background()
	tt := &tool{}
	defer tt.close()
	carrier := wctptest.Start(tt, "hipaa-load", "wctp-load-code")
	perl := snpptest.StartPerl(tt)
	dir := tt.TempDir()
	directory := filepath.Join(dir, "pagers.yaml")
	check(os.WriteFile(directory, []byte("version: 1\npagers:\n  - user: \"@alice:localhost\"\n    gateway: spok\n    recipient: \"5551001\"\n"+
		"  - user: \"@bob:localhost\"\n    gateway: legacy\n    recipient: \"5552002\"\n"+
		"  - user: \"@dave:localhost\"\n    gateway: spok\n    recipient: \"5554004\"\n"), 0o600))
	opts, cleanup, err := devstack.Binaries(ctx, "pagelatency", *hsName)
	check(err)
	defer cleanup()
	opts.StateDir = filepath.Join(dir, "state")
	opts.Pager = map[string]any{"directory": directory, "endpoint_security_code": "load-push-secret-code", "gateways": []map[string]any{
		{"name": "spok", "protocol": "wctp", "url": carrier.Server.URL, "sender_id": "hipaa-load", "security_code": "wctp-load-code", "ca_file": carrier.CAFile(dir)},
		{"name": "legacy", "protocol": "snpp", "address": perl.Addr, "login": perl.Login, "password": perl.Password},
	}}
	st, err := devstack.Prepare(opts)
	check(err)
	defer st.RemoveHomeserverData()
	defer st.Stop()
	check(st.StartDendrite(ctx)) // or Synapse, as opts say
	check(st.StartService(ctx))
	login := func(name string) *mautrix.Client {
		cli, err := st.Login(ctx, name)
		check(err)
		return cli
	}
	carol, dave := login("carol"), login("dave")
	login("alice")
	login("bob")
	linked, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	check(err)
	dm, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{dave.UserID}})
	check(err)
	_, err = dave.JoinRoomByID(ctx, dm.RoomID)
	check(err)
	const pageAfter, repeat, backupAfter = 2 * time.Second, 2 * time.Second, 5 * time.Second
	check(os.WriteFile(filepath.Join(filepath.Dir(st.ServiceConfig), "policy.yaml"), []byte(fmt.Sprintf(`version: 1
defaults:
  encryption: optional
  plaintext: allow
escalation:
  stat:
    page_after: %s
    repeat: %s
    backup_after: %s
rooms:
  - room_id: %q
    page: ["@alice:localhost", "@bob:localhost"]
    page_priority: stat
  - room_id: %q
    read_tracking: on
    page_priority: stat
`, pageAfter, repeat, backupAfter, linked.RoomID, dm.RoomID)), 0o600))
	time.Sleep(4 * time.Second) // the policy watch reloads within 2 s

	// Linked room: one message every gap.
	sent := make([]time.Time, *n)
	ids := map[string]int{}
	for i := range *n {
		sent[i] = time.Now()
		resp, err := carol.SendMessageEvent(ctx, linked.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fmt.Sprintf("m%d", i)})
		check(err)
		ids[pager.PageID("page:"+string(resp.EventID)+":@alice:localhost")] = i
		time.Sleep(*gap)
	}
	deadline := time.Now().Add(time.Minute)
	for (len(carrier.Submitted()) < *n || len(perl.Pages(tt)) < *n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	var wctpLat, snppLat []time.Duration
	for _, s := range carrier.Submitted() {
		if i, ok := ids[s.MessageID]; ok {
			wctpLat = append(wctpLat, s.At.Sub(sent[i]))
		}
	}
	pages := perl.Pages(tt)
	sort.Slice(pages, func(i, j int) bool { return pages[i].At < pages[j].At })
	for i, p := range pages {
		if i < *n {
			snppLat = append(snppLat, time.Unix(0, int64(p.At*1e9)).Sub(sent[i]))
		}
	}
	report := func(name string, d []time.Duration, want int) {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		if len(d) == 0 {
			fmt.Printf("%-44s none arrived (want %d)\n", name, want)
			return
		}
		q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))].Round(time.Millisecond) }
		fmt.Printf("%-44s n=%d/%d p50 %s p90 %s p99 %s max %s\n", name, len(d), want, q(0.5), q(0.9), q(0.99), d[len(d)-1].Round(time.Millisecond))
	}
	fmt.Printf("homeserver %s, %d messages %s apart\n", *hsName, *n, *gap)
	report("message sent -> WCTP carrier took the page", wctpLat, *n)
	report("message sent -> Net::SNPP::Server took it", snppLat, *n)
	if errs := carrier.Problems(); len(errs) > 0 {
		check(fmt.Errorf("%d WCTP documents failed the DTD: %v", len(errs), errs[0]))
	}

	// Escalations: unread direct messages to dave, paged at 2 s and 4 s.
	before := len(carrier.Submitted())
	esent := map[string]time.Time{}
	for i := range *escalations {
		at := time.Now()
		resp, err := carol.SendMessageEvent(ctx, dm.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fmt.Sprintf("e%d", i)})
		check(err)
		esent[string(resp.EventID)] = at
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(backupAfter + 2*time.Second)
	var endToEnd []time.Duration
	for _, s := range carrier.Submitted()[before:] {
		for ev, at := range esent {
			for step := 1; step <= 2; step++ {
				if s.MessageID == pager.PageID(fmt.Sprintf("escalate:%s:@dave:localhost:%d", ev, step)) {
					endToEnd = append(endToEnd, s.At.Sub(at.Add(pageAfter+time.Duration(step-1)*repeat)))
				}
			}
		}
	}
	report("escalation page at the gateway - schedule", endToEnd, 2**escalations)
	report("escalation decided - schedule (audit)", auditLateness(st, pageAfter, repeat), 2**escalations)
}

// auditLateness is, from the audit trail, each escalation decision's time
// against its schedule counted from the service's receipt of the message.
func auditLateness(st *devstack.Stack, pageAfter, repeat time.Duration) []time.Duration {
	out, _, err := st.Service("audit", "export", "-format", "jsonl")
	check(err)
	received := map[string]time.Time{}
	type esc struct {
		ev   string
		step int
		at   time.Time
	}
	var escs []esc
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"]))
		ev := fmt.Sprint(l["event_id"])
		switch {
		case l["type"] == "event.received":
			received[ev] = at
		case l["type"] == "page" && l["action"] == "escalated" && strings.HasPrefix(fmt.Sprint(l["detail"]), "step "):
			var step int
			fmt.Sscanf(fmt.Sprint(l["detail"]), "step %d", &step)
			escs = append(escs, esc{ev, step, at})
		}
	}
	var late []time.Duration
	for _, e := range escs {
		if r, ok := received[e.ev]; ok {
			late = append(late, e.at.Sub(r.Add(pageAfter+time.Duration(e.step-1)*repeat)))
		}
	}
	return late
}
