package appservice

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

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Every goroutine the service starts (servers, dispatcher, runner, pumps,
// sweepers, watchers, the bot, exporters, keep-alive) has ended when Run
// returns: service.stop is written and the database closed after them.
func TestServiceStopLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	dir := t.TempDir()
	as, metrics := freePort(t), freePort(t)
	text := string(config.Example())
	for old, repl := range map[string]string{
		"  address: http://127.0.0.1:8008\n": "  address: http://127.0.0.1:1\n", // a homeserver that never answers
		"  domain: example.org\n":            "  domain: hospital.test\n",
		"  keepalive: 0\n":                   "  keepalive: 1s\n",
		"  listen: 127.0.0.1:29330\n":        fmt.Sprintf("  listen: 127.0.0.1:%d\n", as),
		"  url: http://127.0.0.1:29330\n":    fmt.Sprintf("  url: http://127.0.0.1:%d\n", as),
		"  listen: 127.0.0.1:29331\n":        fmt.Sprintf("  listen: 127.0.0.1:%d\n", metrics),
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("example config lacks %q", old)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte(text), 0o600)
	os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.EnsureTokens(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := New(ctx, cfg, zerolog.Nop(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", as)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the service did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // let every loop take a turn
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	goleak.VerifyNone(t, before,
		// The process-wide signal watcher, started by the first signal.Notify.
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"))
}
