// Command enforcewindow measures how long a policy takes to act on a real
// Dendrite: from a room's creation until m.room.encryption is in it, and from
// a plaintext message until its redaction, as another member's /sync sees
// them. It also splits each window into the homeserver's delivery to the
// service, the service's own processing, and the delivery back to clients,
// using the audit trail's times (same machine clock).
//
//	go run -tags goolm ./deploy/enforcewindow -trials 200 -idle-trials 20
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "enforcewindow:", err)
		os.Exit(1)
	}
}

func main() {
	trials := flag.Int("trials", 200, "trials per window under steady traffic")
	idleTrials := flag.Int("idle-trials", 20, "trials per window after each idle spell")
	gapList := flag.String("idle-gaps", "6s", "comma-separated idle spells to measure after")
	kaList := flag.String("keepalive", "off,2s", "comma-separated keep-alive settings to run (off or a duration)")
	hsName := flag.String("homeserver", "dendrite", "dendrite or synapse")
	restarts := flag.Int("restarts", 5, "restart trials: the service is stopped, a plaintext sent, and the service started again after -down")
	down := flag.Duration("down", 10*time.Second, "how long the service is down in each restart trial")
	lead := flag.Bool("lead", false, "in idle trials, send a harmless event just before the plaintext, so the plaintext is the second event after the idle spell (the one Dendrite can hold back)")
	flag.Parse()
	var gaps []time.Duration
	for _, g := range strings.Split(*gapList, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(g))
		check(err)
		gaps = append(gaps, d)
	}
	ctx := context.Background()
	base, cleanup, err := devstack.Binaries(ctx, "enforcewindow", *hsName)
	check(err)
	defer cleanup()
	dir, err := os.MkdirTemp("", "enforcewindow-state")
	check(err)
	defer os.RemoveAll(dir)
	for _, keepalive := range strings.Split(*kaList, ",") {
		label := "keep-alive " + keepalive
		if keepalive == "off" {
			keepalive = ""
		}
		run(ctx, base, filepath.Join(dir, "ka"+keepalive), keepalive, label, *trials, *idleTrials, gaps, *lead, *restarts, *down)
	}
}

type observer struct {
	cli  *mautrix.Client
	mu   sync.Mutex
	seen map[string]time.Time // "encryption:<room>" or "redaction:<event>"
	wait map[string]chan struct{}
}

func (o *observer) mark(key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.seen[key]; ok {
		return
	}
	o.seen[key] = time.Now()
	if ch, ok := o.wait[key]; ok {
		close(ch)
	}
}

func (o *observer) await(key string, timeout time.Duration) (time.Time, bool) {
	o.mu.Lock()
	if t, ok := o.seen[key]; ok {
		o.mu.Unlock()
		return t, true
	}
	ch := make(chan struct{})
	o.wait[key] = ch
	o.mu.Unlock()
	select {
	case <-ch:
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.seen[key], true
	case <-time.After(timeout):
		return time.Time{}, false
	}
}

func (o *observer) loop(ctx context.Context) {
	since := ""
	for ctx.Err() == nil {
		resp, err := o.cli.SyncRequest(ctx, 30000, since, "", false, event.PresenceOffline)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		since = resp.NextBatch
		for roomID, r := range resp.Rooms.Join {
			for _, ev := range append(r.State.Events, r.Timeline.Events...) {
				switch ev.Type {
				case event.StateEncryption:
					o.mark("encryption:" + roomID.String())
				case event.EventRedaction:
					redacts := ev.Redacts
					if redacts == "" {
						var c struct {
							Redacts id.EventID `json:"redacts"`
						}
						json.Unmarshal(ev.Content.VeryRaw, &c)
						redacts = c.Redacts
					}
					o.mark("redaction:" + redacts.String())
				}
			}
		}
		for roomID := range resp.Rooms.Invite {
			o.cli.JoinRoomByID(ctx, roomID)
		}
	}
}

type sample struct{ total, delivery, processing, back time.Duration }

func run(ctx context.Context, opts devstack.Options, state, keepalive, label string, trials, idleTrials int, gaps []time.Duration, lead bool, restarts int, down time.Duration) {
	opts.StateDir, opts.KeepAlive = state, keepalive
	st, err := devstack.Prepare(opts)
	check(err)
	defer st.RemoveHomeserverData()
	defer st.Stop()
	check(st.StartDendrite(ctx))
	check(st.StartService(ctx))
	login := func(name string) *mautrix.Client {
		cli, err := st.Login(ctx, name)
		check(err)
		return cli
	}
	alice, bob, carol := login("alice"), login("bob"), login("carol")
	obsCtx, stopObs := context.WithCancel(ctx)
	defer stopObs()
	obs := &observer{cli: bob, seen: map[string]time.Time{}, wait: map[string]chan struct{}{}}
	go obs.loop(obsCtx)

	// Steady background traffic: carol talks in a room of her own.
	bgCtx, stopBg := context.WithCancel(ctx)
	bgRoom, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	check(err)
	go func() {
		for bgCtx.Err() == nil {
			carol.SendMessageEvent(bgCtx, bgRoom.RoomID, event.Type{Type: "org.example.background", Class: event.MessageEventType}, map[string]any{})
			time.Sleep(250 * time.Millisecond)
		}
	}()

	// Rooms for the plaintext trials, encrypted and with bob in them.
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	check(err)
	_, ok := obs.await("encryption:"+room.RoomID.String(), 30*time.Second)
	if !ok {
		check(fmt.Errorf("setup room was not encrypted"))
	}
	time.Sleep(time.Second)

	measure := func(n int, gap time.Duration) (create, redact []sample) {
		idle := gap > 0
		for i := 0; i < n; i++ {
			if idle {
				stopBg()
				time.Sleep(gap)
			}
			r, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
			check(err)
			t0 := time.Now() // the room exists from here
			if t1, ok := obs.await("encryption:"+r.RoomID.String(), 30*time.Second); ok {
				create = append(create, sample{total: max(t1.Sub(t0), 0)})
			}
			if idle {
				time.Sleep(gap)
				if lead {
					_, err := alice.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "org.example.lead", Class: event.MessageEventType}, map[string]any{})
					check(err)
				}
			}
			t0 = time.Now()
			sent, err := alice.SendText(ctx, room.RoomID, "plaintext trial")
			check(err)
			if t1, ok := obs.await("redaction:"+sent.EventID.String(), 30*time.Second); ok {
				s := sample{total: t1.Sub(t0)}
				if recv, applied, ok := auditTimes(st, sent.EventID.String()); ok {
					s.delivery, s.processing, s.back = recv.Sub(t0), applied.Sub(recv), t1.Sub(applied)
				}
				redact = append(redact, s)
			}
		}
		return
	}
	if trials > 0 {
		create, redact := measure(trials, 0)
		report(label+", steady traffic", "room created → encrypted", create, trials)
		report(label+", steady traffic", "plaintext sent → redacted", redact, trials)
	}
	stopBg()
	for _, gap := range gaps {
		if idleTrials == 0 {
			break
		}
		create, redact := measure(idleTrials, gap)
		report(fmt.Sprintf("%s, after %s idle", label, gap), "room created → encrypted", create, idleTrials)
		what := "plaintext sent → redacted"
		if lead {
			what = "2nd event (plaintext) → redacted"
		}
		report(fmt.Sprintf("%s, after %s idle", label, gap), what, redact, idleTrials)
	}
	// Catch-up after a restart: the homeserver failed to deliver while the
	// service was down and backed off; the service asks for a ping at
	// start (where the homeserver has the API), which sends what waits.
	var catchup []sample
	for i := 0; i < restarts; i++ {
		st.StopService()
		sent, err := alice.SendText(ctx, room.RoomID, "plaintext while the service is down")
		check(err)
		time.Sleep(down)
		t0 := time.Now()
		check(st.StartService(ctx))
		if t1, ok := obs.await("redaction:"+sent.EventID.String(), 2*time.Minute); ok {
			catchup = append(catchup, sample{total: t1.Sub(t0)})
		}
	}
	if restarts > 0 {
		report(fmt.Sprintf("%s, restart after %s down", label, down), "service start → redacted", catchup, restarts)
	}
	// Synapse refuses the first enable_encryption of most new rooms (it
	// pushes m.room.create before the creator's join is stored); the retry
	// 250 ms later is inside the windows above. Say how often.
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, `hipaa_job_runs_total{kind="enable_encryption"`) {
				fmt.Printf("%-32s %s\n", label, line)
			}
		}
	}
}

// auditTimes finds when the service received the event and when its redaction job was applied.
func auditTimes(st *devstack.Stack, eventID string) (time.Time, time.Time, bool) {
	out, _, err := st.Service("audit", "export", "-format", "jsonl", "-since", "2m")
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	var recv, applied time.Time
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var records []map[string]any
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		records = append(records, m)
	}
	for _, m := range records {
		ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
		if m["type"] == "event.received" && m["event_id"] == eventID {
			recv = ts
		}
	}
	// The redact job for this event is the last job.applied for a redact after recv.
	for _, m := range records {
		ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
		if m["type"] == "job.applied" && m["action"] == "redact" && !recv.IsZero() && !ts.Before(recv) && applied.IsZero() {
			applied = ts
		}
	}
	return recv, applied, !recv.IsZero() && !applied.IsZero()
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func report(setting, window string, samples []sample, want int) {
	var total, del, proc, back []time.Duration
	for _, s := range samples {
		total = append(total, s.total)
		if s.delivery > 0 || s.processing > 0 {
			del, proc, back = append(del, s.delivery), append(proc, s.processing), append(back, s.back)
		}
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d.Microseconds())/1000) }
	stalls := 0
	for _, d := range total {
		if d > time.Second {
			stalls++
		}
	}
	fmt.Printf("%-32s %-27s n=%d/%d  p50 %s ms  p99 %s ms  max %s ms  >1s: %d", setting, window, len(samples), want, ms(pct(total, .5)), ms(pct(total, .99)), ms(pct(total, 1)), stalls)
	if len(del) > 0 {
		fmt.Printf("  | p50 HS→service %s, service %s, service→client %s ms", ms(pct(del, .5)), ms(pct(proc, .5)), ms(pct(back, .5)))
	}
	fmt.Println()
}
