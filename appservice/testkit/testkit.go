// Package testkit holds what the engine's own tests and the features' tests
// (through apptest) share: a settable clock, events as a homeserver sends
// them, and queries on a test database. It imports no part of the engine,
// so the engine's internal tests can use it too.
package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Clock is a settable clock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock is a clock at a fixed time (1 March 2026, noon UTC).
func NewClock() *Clock { return &Clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Message is an m.room.message event.
func Message(id, room, sender, body string) map[string]any {
	return map[string]any{
		"event_id": id, "room_id": room, "sender": sender, "type": "m.room.message",
		"origin_server_ts": 1, "content": map[string]any{"msgtype": "m.text", "body": body},
	}
}

// State is a state event.
func State(id, room, sender, typ, stateKey string, content map[string]any) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": typ, "state_key": stateKey, "content": content}
}

// Member is an m.room.member event.
func Member(id, room, sender, target, membership string) map[string]any {
	return State(id, room, sender, "m.room.member", target, map[string]any{"membership": membership})
}

// Exec runs a statement on the writer.
func Exec(t testing.TB, db *store.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.W.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatal(err)
	}
}

// Count runs a COUNT query.
func Count(t testing.TB, db *store.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.R.QueryRowContext(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Records is the audit trail as exported JSON lines, decoded.
func Records(t testing.TB, db *store.DB) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	if _, err := audit.ExportJSONL(context.Background(), db, audit.Range{}, &buf); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// Chromium runs Debian's headless Chromium with args on url, with the flags
// a closed network needs and its console logged, and returns what it
// printed on stdout and stderr (where console messages go, as CONSOLE
// lines).
func Chromium(t testing.TB, url string, args ...string) (stdout, stderr []byte) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (apt-get install chromium; deploy/test.sh does): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
		"--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.CommandContext(ctx, bin, append(full, url)...)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, errBuf.Bytes())
	}
	return out, errBuf.Bytes()
}

// consoleLine is a line Chromium logs from a page's console (errors
// included: a blocked script, a blocked fetch, a thrown exception).
var consoleLine = regexp.MustCompile(`(?m)^.*:CONSOLE[:(].*$`)

// Rendered is a page as headless Chromium shows it.
type Rendered struct {
	DOM     []byte
	Console [][]byte // what the page logged
	Shot    image.Image
}

// RenderPage opens the file at path in headless Chromium: its DOM after
// scripts (if any), its console, and a screenshot of width×height.
func RenderPage(t testing.TB, path string, width, height int) Rendered {
	t.Helper()
	var r Rendered
	var logged []byte
	r.DOM, logged = Chromium(t, "file://"+path, "--dump-dom", "--virtual-time-budget=2000")
	r.Console = consoleLine.FindAll(logged, -1)
	shot := filepath.Join(t.TempDir(), "shot.png")
	Chromium(t, "file://"+path, "--screenshot="+shot, fmt.Sprintf("--window-size=%d,%d", width, height), "--force-device-scale-factor=1")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if r.Shot, err = png.Decode(f); err != nil {
		t.Fatal(err)
	}
	return r
}

// Pixels counts the pixels of img within a few levels of the colour rgb.
func Pixels(img image.Image, rgb [3]uint32) int {
	n := 0
	b := img.Bounds()
	near := func(a, b uint32) bool { return a+6 >= b && b+6 >= a }
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, rgb[0]) && near(g>>8, rgb[1]) && near(bl>>8, rgb[2]) {
				n++
			}
		}
	}
	return n
}
