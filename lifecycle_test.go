package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// The whole service as `run` assembles it (engine, every feature, the admin
// API and the management room, a roster file) leaves no goroutine behind
// when it stops: each is joined before service.stop is written and the
// database closed.
func TestRunLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	dir := t.TempDir()
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	as, metrics, adminPort := port(), port(), port()
	text := string(config.Example())
	for old, repl := range map[string]string{
		"  address: http://127.0.0.1:8008\n": "  address: http://127.0.0.1:1\n", // a homeserver that never answers
		"  domain: example.org\n":            "  domain: hospital.test\n",
		"  keepalive: 0\n":                   "  keepalive: 1s\n",
		"  listen: 127.0.0.1:29330\n":        fmt.Sprintf("  listen: 127.0.0.1:%d\n", as),
		"  url: http://127.0.0.1:29330\n":    fmt.Sprintf("  url: http://127.0.0.1:%d\n", as),
		"  listen: 127.0.0.1:29331\n":        fmt.Sprintf("  listen: 127.0.0.1:%d\n", metrics),
		"  listen: \"\"\n  token: \"\"\n":    fmt.Sprintf("  listen: 127.0.0.1:%d\n  token: %q\n", adminPort, strings.Repeat("t", 40)),
		"  room: \"\"\n  users: []\n":        "  room: \"!mgmt:hospital.test\"\n  users: [\"@admin:hospital.test\"]\n",
		"roster: \"\"\n":                     "roster: roster.yaml\n",
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("example config lacks %q", old)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte(text), 0o600)
	os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600)
	os.WriteFile(filepath.Join(dir, "roster.yaml"), []byte("clinicians: []\n"), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.EnsureTokens(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, zerolog.Nop()) }()
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range []int{as, adminPort} {
		for {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("nothing listening on %d", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(1500 * time.Millisecond) // let every loop take a turn
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not stop")
	}
	goleak.VerifyNone(t, before,
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"))
}
