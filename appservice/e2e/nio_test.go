package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// pythonWithNio is the interpreter that has Debian's python3-matrix-nio.
func pythonWithNio() string {
	if p := os.Getenv("MATRIX_HIPAA_TEST_PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}

type nioLine struct {
	Step      string `json:"step"`
	Error     string `json:"error"`
	Sender    string `json:"sender"`
	Body      string `json:"body"`
	Decrypted bool   `json:"decrypted"`
	Encrypted bool   `json:"encrypted"`
	EventID   string `json:"event_id"`
}

// An independent client, matrix-nio with libolm, talks with a mautrix (goolm)
// client through an enforced room: messages both ways decrypt, its plaintext
// is redacted, and it decrypts the bot's notice.
func TestNioClientInterop(t *testing.T) {
	py := pythonWithNio()
	if out, err := exec.Command(py, "-c", "import nio, olm").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import nio and olm (apt-get install python3-matrix-nio python3-olm): %v\n%s", py, err, out)
	}
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	password := "pw-nina-0123456789"
	nina, err := st.CreateUser(ctx, "nina", password, false)
	if err != nil {
		t.Fatal(err)
	}
	botID := "@hipaa:" + st.Opts.ServerName
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{id.UserID(nina)}})
	if err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	nio := startScript(t, runCtx, "nio", nina, py, mustAbs("testdata/nio_client.py"), st.HSURL, nina, password, string(room.RoomID), t.TempDir(), string(alice.UserID), botID)
	var plainID string
	var notice *nioLine
	for l := range nio.lines {
		switch {
		case l.Error != "":
			t.Errorf("nio client: %s", l.Error)
		case l.Step == "sent" && l.Encrypted:
			got := alice.waitMessage(t, "nio's encrypted message", func(e *event.Event) bool { return string(e.ID) == l.EventID })
			if !got.Mautrix.WasEncrypted || textOf(got) != "hello from nio" {
				t.Fatalf("alice got %q from nio (encrypted %v)", textOf(got), got.Mautrix.WasEncrypted)
			}
			if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "hello nio from alice"}); err != nil {
				t.Fatal(err)
			}
		case l.Step == "received":
			if !l.Decrypted || l.Body != "hello nio from alice" {
				t.Errorf("nio received %q (decrypted %v)", l.Body, l.Decrypted)
			}
		case l.Step == "sent" && !l.Encrypted:
			plainID = l.EventID
		case l.Step == "notice":
			l := l
			notice = &l
		}
	}
	if err := nio.cmd.Wait(); err != nil {
		t.Fatalf("nio client: %v\n%s", err, tail(nio.stderr.String(), 3000))
	}
	if plainID == "" || notice == nil {
		t.Fatalf("nio client did not get through (plaintext %q, notice %v)", plainID, notice)
	}
	if !notice.Decrypted || !strings.Contains(notice.Body, nina) || !strings.Contains(notice.Body, "end-to-end encryption") {
		t.Fatalf("nio's notice: %+v", notice)
	}
	waitFor(t, "nio's plaintext to be redacted", func() bool {
		ev, err := alice.GetEvent(ctx, room.RoomID, id.EventID(plainID))
		return err == nil && ev.Unsigned.RedactedBecause != nil
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
