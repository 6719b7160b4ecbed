package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// jsClientDir holds the matrix-js-sdk client and its npm dependencies,
// installed by npm ci from the committed lock file.
func jsClientDir(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs("testdata/jsclient")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk")); err != nil {
		t.Fatalf("matrix-js-sdk is not installed in %s: run npm ci there (deploy/test.sh does)", dir)
	}
	return dir
}

// scriptClient is an external E2EE client run as a process that prints one
// JSON line per step (testdata/nio_client.py, testdata/jsclient/client.mjs).
type scriptClient struct {
	name   string
	user   string
	cmd    *exec.Cmd
	lines  chan nioLine
	stderr strings.Builder
}

func startScript(t *testing.T, ctx context.Context, name, user string, argv ...string) *scriptClient {
	t.Helper()
	c := &scriptClient{name: name, user: user, lines: make(chan nioLine, 32)}
	c.cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.cmd.Stderr = &c.stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l nioLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue // the library's own chatter
			}
			t.Logf("%s: %s", name, sc.Text())
			c.lines <- l
		}
	}()
	return c
}

// Element's crypto stack (matrix-js-sdk 36 with matrix-sdk-crypto-wasm 13:
// matrix-rust-sdk and vodozemac) in an enforced room with a mautrix (goolm)
// client and a matrix-nio (libolm) client: the room is encrypted by policy,
// every client decrypts every other's message, each external client's
// plaintext is redacted and it decrypts the bot's notice to it. Runs on both
// homeservers.
func TestElementCryptoInterop(t *testing.T) {
	jsDir := jsClientDir(t)
	py := pythonWithNio()
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	botID := string(botOf(t, st))
	users := map[string]string{}
	for _, name := range []string{"jess", "nina"} {
		password := "pw-" + name + "-0123456789"
		uid, err := st.CreateUser(ctx, name, password, false)
		if err != nil {
			t.Fatal(err)
		}
		users[name] = uid
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{id.UserID(users["jess"]), id.UserID(users["nina"])}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	js := startScript(t, runCtx, "matrix-js-sdk", users["jess"], "node", filepath.Join(jsDir, "client.mjs"),
		st.HSURL, "jess", "pw-jess-0123456789", string(room.RoomID), botID, string(alice.UserID), users["nina"])
	nio := startScript(t, runCtx, "nio", users["nina"], py, mustAbs("testdata/nio_client.py"),
		st.HSURL, users["nina"], "pw-nina-0123456789", string(room.RoomID), t.TempDir(), string(alice.UserID)+","+users["jess"], botID)

	type outcome struct {
		received  map[string]string // sender -> body
		plainID   string
		sentID    string
		notice    *nioLine
		exitError error
	}
	results := map[string]*outcome{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range []*scriptClient{js, nio} {
		o := &outcome{received: map[string]string{}}
		results[c.name] = o
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range c.lines {
				mu.Lock()
				switch {
				case l.Error != "":
					t.Errorf("%s: %s", c.name, l.Error)
				case l.Step == "received" && l.Decrypted:
					o.received[l.Sender] = l.Body
				case l.Step == "sent" && l.Encrypted:
					o.sentID = l.EventID
				case l.Step == "sent" && !l.Encrypted:
					o.plainID = l.EventID
				case l.Step == "notice":
					l := l
					o.notice = &l
				}
				mu.Unlock()
			}
			o.exitError = c.cmd.Wait()
		}()
	}
	// Alice writes once both have joined, so her key reaches both.
	waitForLong(t, "jess and nina to join", 2*time.Minute, func() bool {
		members, err := alice.JoinedMembers(ctx, room.RoomID)
		if err != nil {
			return false
		}
		_, j := members.Joined[id.UserID(users["jess"])]
		_, n := members.Joined[id.UserID(users["nina"])]
		return j && n
	})
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "hello all from alice"}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, c := range []*scriptClient{js, nio} {
		o := results[c.name]
		if o.exitError != nil {
			t.Fatalf("%s: %v\n%s", c.name, o.exitError, tail(c.stderr.String(), 3000))
		}
		for sender, want := range map[string]string{string(alice.UserID): "hello all from alice", users["jess"]: "hello from matrix-js-sdk", users["nina"]: "hello from nio"} {
			if sender == c.user {
				continue
			}
			if got := o.received[sender]; got != want {
				t.Errorf("%s decrypted %q from %s, want %q", c.name, got, sender, want)
			}
		}
		// Alice (mautrix) decrypts what it sent.
		got := alice.waitMessage(t, c.name+"'s encrypted message", func(e *event.Event) bool { return string(e.ID) == o.sentID })
		if !got.Mautrix.WasEncrypted || !strings.HasPrefix(textOf(got), "hello from ") {
			t.Errorf("alice got %q from %s (encrypted %v)", textOf(got), c.name, got.Mautrix.WasEncrypted)
		}
		if o.notice == nil || !o.notice.Decrypted || !strings.Contains(o.notice.Body, c.user) || !strings.Contains(o.notice.Body, "end-to-end encryption") {
			t.Errorf("%s's notice from the bot: %+v", c.name, o.notice)
		}
		waitFor(t, c.name+"'s plaintext to be redacted", func() bool {
			ev, err := alice.GetEvent(ctx, room.RoomID, id.EventID(o.plainID))
			return err == nil && ev.Unsigned.RedactedBecause != nil
		})
	}
	t.Logf("on %s: three crypto stacks, every message decrypted by the other two, both plaintexts redacted, both notices decrypted", homeserver)
}

func mustAbs(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return abs
}
