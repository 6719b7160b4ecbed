// Command expirylate measures how late messages expire on a real Dendrite:
// it sends a stream of messages into a room whose lifetime is short, waits
// until all have expired, and reports how long after each message's due time
// its redaction had been applied (the job's completion in the service's
// database against the expiry's due time, same clock).
//
//	go run -tags goolm ./deploy/expirylate -messages 3000 -rate 100 -lifetime 10s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "expirylate:", err)
		os.Exit(1)
	}
}

func main() {
	messages := flag.Int("messages", 3000, "messages to send")
	rate := flag.Int("rate", 100, "messages per second")
	lifetime := flag.Duration("lifetime", 10*time.Second, "room message lifetime")
	hsName := flag.String("homeserver", "dendrite", "dendrite or synapse")
	flag.Parse()
	ctx := context.Background()
	opts, cleanup, err := devstack.Binaries(ctx, "expirylate", *hsName)
	check(err)
	defer cleanup()
	dir, err := os.MkdirTemp("", "expirylate-state")
	check(err)
	defer os.RemoveAll(dir)
	opts.StateDir, opts.KeepAlive = dir, "2s"
	st, err := devstack.Prepare(opts)
	check(err)
	defer st.RemoveHomeserverData()
	defer st.Stop()
	svcDir := filepath.Dir(st.ServiceConfig)
	check(config.WriteFileAtomic(filepath.Join(svcDir, "policy.yaml"),
		[]byte(fmt.Sprintf("version: 1\ndefaults:\n  retention: %s\n", *lifetime)), 0o600))
	check(st.StartDendrite(ctx))
	check(st.StartService(ctx))
	cli, err := st.Login(ctx, "alice")
	check(err)
	room, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	check(err)

	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	for i := 0; i < *messages; i++ {
		<-tick.C
		_, err := cli.SendMessageEvent(ctx, room.RoomID, event.Type{Type: "org.example.vitals", Class: event.MessageEventType}, map[string]any{"n": i})
		check(err)
	}
	tick.Stop()
	sent := time.Since(start)
	fmt.Printf("sent %d messages in %s (%.0f/s), lifetime %s\n", *messages, sent.Round(time.Millisecond), float64(*messages)/sent.Seconds(), *lifetime)

	db, err := store.Open(ctx, "sqlite3", filepath.Join(svcDir, "matrix-hipaa.db"), 0)
	check(err)
	defer db.Close()
	deadline := time.Now().Add(*lifetime + 5*time.Minute)
	var late []time.Duration
	for {
		late = late[:0]
		rows, err := db.R.QueryContext(ctx, `SELECT j.payload, j.updated_at, j.state FROM job j WHERE j.kind = 'expire'`)
		check(err)
		due := map[string]int64{}
		drows, err := db.R.QueryContext(ctx, `SELECT event_id, due_at FROM expiry`)
		check(err)
		for drows.Next() {
			var id string
			var d int64
			check(drows.Scan(&id, &d))
			due[id] = d
		}
		drows.Close()
		done := 0
		for rows.Next() {
			var payload []byte
			var updated int64
			var state string
			check(rows.Scan(&payload, &updated, &state))
			if state != "done" {
				continue
			}
			var p struct {
				EventID string `json:"event_id"`
			}
			json.Unmarshal(payload, &p)
			if d, ok := due[p.EventID]; ok {
				late = append(late, time.Duration(updated-d)*time.Millisecond)
				done++
			}
		}
		rows.Close()
		if done >= *messages || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if len(late) < *messages {
		fmt.Printf("only %d of %d expired before the deadline\n", len(late), *messages)
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	pct := func(p float64) time.Duration { return late[int(float64(len(late)-1)*p)] }
	fmt.Printf("expired %d: lateness after due p50 %s, p99 %s, max %s\n", len(late), pct(.5), pct(.99), late[len(late)-1])
}
