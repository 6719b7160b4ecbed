package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// devBinary builds deploy/dev (what start.sh runs) once per test.
func devBinary(t *testing.T) string {
	t.Helper()
	root, err := devstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "dev")
	cmd := exec.Command("go", "build", "-tags", "goolm", "-o", bin, "./deploy/dev")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the dev stack: %v\n%s", err, out)
	}
	return bin
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		p, err := devstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p)
	}
	return ports
}

// processesUnder lists the processes whose command line names dir.
func processesUnder(dir string) []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			out = append(out, p.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}

// devStackOn is, for a dev stack started with -state state on the test's
// homeserver, the folder of its files and what of it is running. On Synapse
// the stack keeps its files in a folder of their own and Synapse's in the
// root file system (its command line names that), removed after the test.
func devStackOn(t *testing.T, state string) (files string, running func() []string) {
	if homeserver != "synapse" {
		return state, func() []string { return processesUnder(state) }
	}
	files = filepath.Join(state, "synapse")
	host, inside := devstack.SynapseDataDir(synapseRoot, files)
	t.Cleanup(func() { os.RemoveAll(host) })
	return files, func() []string { return append(processesUnder(state), processesUnder(inside+"/")...) }
}

func portTaken(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// The dev stack as a newcomer runs it: `start.sh 2>&1 | tee log`. It comes up
// with a management room whose admin gets an answer to !help; then Ctrl-C,
// with the pipe's reader already gone (so every write the stack makes while
// stopping fails), stops the homeserver and the service and frees their
// ports. On both homeservers.
func TestDevStackPipedInterruptStopsEverything(t *testing.T) {
	bin := devBinary(t)
	state := t.TempDir()
	ports := freePorts(t, 3)
	files, running := devStackOn(t, state)
	cmd := exec.Command(bin, "-homeserver", homeserver, "-state", state, "-hs-port", fmt.Sprint(ports[0]), "-as-port", fmt.Sprint(ports[1]), "-metrics-port", fmt.Sprint(ports[2]))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for _, p := range running() {
			var pid int
			fmt.Sscanf(p, "%d", &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	var banner []string
	lines := bufio.NewScanner(r)
	deadline := time.AfterFunc(4*time.Minute, func() { r.Close() })
	for lines.Scan() {
		banner = append(banner, lines.Text())
		if strings.HasPrefix(lines.Text(), "Logs:") {
			break
		}
	}
	deadline.Stop()
	text := strings.Join(banner, "\n")
	if !strings.Contains(text, "dev stack is running") {
		t.Fatalf("the stack did not come up:\n%s", text)
	}
	// Every command is printed with the binary it built.
	for _, want := range []string{filepath.Join(files, "bin", "matrix-hipaa") + " audit verify -config ", filepath.Join("deploy", "dev", "start.sh") + " adduser NAME"} {
		if !strings.Contains(text, want) {
			t.Fatalf("banner lacks %q:\n%s", want, text)
		}
	}

	// The management room answers its admin.
	ctx := context.Background()
	pw, err := os.ReadFile(filepath.Join(files, "admin.password"))
	if err != nil {
		t.Fatal(err)
	}
	roomID, err := os.ReadFile(filepath.Join(files, "management-room"))
	if err != nil {
		t.Fatal(err)
	}
	mgmt := id.RoomID(strings.TrimSpace(string(roomID)))
	if !strings.Contains(text, string(mgmt)) {
		t.Fatalf("banner does not name the management room %s", mgmt)
	}
	st := &devstack.Stack{HSURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), Opts: devstack.Options{ServerName: "localhost"}}
	cli, err := mautrix.NewClient(st.HSURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	admin := loginE2EE(t, st, cli, "admin", string(pw))
	botID := id.UserID("@hipaa:localhost")
	waitFor(t, "the bot in the management room", func() bool { return admin.StateStore.IsInRoom(ctx, mgmt, botID) })
	if _, err := admin.SendMessageEvent(ctx, mgmt, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "!help"}); err != nil {
		t.Fatal(err)
	}
	admin.waitMessage(t, "the answer to !help", func(e *event.Event) bool {
		return e.RoomID == mgmt && e.Sender == botID && strings.Contains(textOf(e), "!wipe")
	})
	// adduser works against the running stack.
	out, err := exec.Command(bin, "-homeserver", homeserver, "-state", state, "-hs-port", fmt.Sprint(ports[0]), "-as-port", fmt.Sprint(ports[1]), "-metrics-port", fmt.Sprint(ports[2]),
		"adduser", "nurse").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "@nurse:localhost  password ") {
		t.Fatalf("adduser: %v\n%s", err, out)
	}
	admin.cancel()

	r.Close() // the reader goes away, as tee does on Ctrl-C
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the stack did not exit within 30 s of Ctrl-C")
	}
	waitFor(t, "the homeserver and matrix-hipaa to stop", func() bool { return len(running()) == 0 })
	for _, p := range ports {
		if portTaken(p) {
			t.Fatalf("port %d is still held after the stack stopped", p)
		}
	}
}

// Started while another server holds one of its ports, the stack says so
// and stops, leaving nothing running, instead of reporting the other
// server's answers as its own.
func TestDevStackRefusesTakenPorts(t *testing.T) {
	bin := devBinary(t)
	ports := freePorts(t, 3)
	for i, what := range []string{"homeserver", "matrix-hipaa"} {
		state := t.TempDir()
		held, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[i]))
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "-homeserver", homeserver, "-state", state, "-hs-port", fmt.Sprint(ports[0]), "-as-port", fmt.Sprint(ports[1]), "-metrics-port", fmt.Sprint(ports[2])).CombinedOutput()
		held.Close()
		if err == nil || !strings.Contains(string(out), fmt.Sprintf("port %d (%s) is in use", ports[i], what)) {
			t.Fatalf("with port %d held: %v\n%s", ports[i], err, out)
		}
		_, running := devStackOn(t, state)
		waitFor(t, "nothing of the stack left running", func() bool { return len(running()) == 0 })
	}
}
