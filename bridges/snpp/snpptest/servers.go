// Package snpptest starts real, independent SNPP servers on loopback for
// tests: Debian's Net::SNPP::Server (libnet-snpp-perl, level 3: 2WAy and
// MCREsponse) through a small script, and HylaFAX's hfaxd
// (hylafax-server), run per connection in inetd mode (hfaxd -S) behind a
// loopback-only accept loop, with its own faxq and spool.
package snpptest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
)

// T is what the servers need of their caller (testing.TB has it).
type T = wctptest.T

// PerlServer is Net::SNPP::Server with LOGIn, LEVEl and MSTAtus added.
type PerlServer struct {
	Addr            string
	Login, Password string
	spool, statuses string
}

// PerlPage is a page the Perl server took.
type PerlPage struct {
	Pager     string            `json:"pager"`
	PIN       any               `json:"pin"`
	Message   string            `json:"mess"`
	Level     any               `json:"level"`
	TwoWay    any               `json:"twoway"`
	Responses map[string]string `json:"responses"`
	Login     string            `json:"login"`
	// At is when the server took it (unix seconds, fractional).
	At float64 `json:"at"`
}

// StartPerl runs the server on a free loopback port until the test ends.
func StartPerl(t T) *PerlServer {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "testdata", "snpp-server.pl")
	dir := t.TempDir()
	s := &PerlServer{Login: "hipaa", Password: "pager-pass-" + strconv.Itoa(os.Getpid()), spool: filepath.Join(dir, "pages.jsonl"), statuses: filepath.Join(dir, "status")}
	if err := os.Mkdir(s.statuses, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cmd := exec.Command("perl", script, strconv.Itoa(port), s.spool, s.statuses, s.Login, s.Password)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("Net::SNPP::Server (Debian: libnet-snpp-perl): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("Net::SNPP::Server did not start (is libnet-snpp-perl installed?): %q %v", line, err)
	}
	s.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	return s
}

// Pages is every page the server took.
func (s *PerlServer) Pages(t T) []PerlPage {
	data, err := os.ReadFile(s.spool)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var pages []PerlPage
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var p PerlPage
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("spool line %q: %v", l, err)
		}
		pages = append(pages, p)
	}
	return pages
}

// SetStatus makes MSTAtus for tag answer line (e.g. "880 1 20261205100000 Read").
func (s *PerlServer) SetStatus(t T, tag, line string) {
	if err := os.WriteFile(filepath.Join(s.statuses, tag), []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func freePort(t T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// HylaFAX is hfaxd in inetd mode behind a loopback accept loop, with faxq
// on the same private spool.
type HylaFAX struct {
	Addr            string
	Login, Password string
	Spool           string
	ln              net.Listener
	wg              sync.WaitGroup
}

// HylaFAXPage is a page job hfaxd put in its spool.
type HylaFAXPage struct {
	JobID  string
	Pager  string // the PIN sent to the provider
	Sender string
	Text   string
}

// StartHylaFAX makes a spool (pagermap sending every numeric pager ID to
// one provider; hosts.hfaxd with one crypt(3) password), starts faxq on
// it, and answers each connection on a free loopback port with a fresh
// hfaxd -S.
func StartHylaFAX(t T) *HylaFAX {
	t.Helper()
	for _, bin := range []string{"/usr/sbin/hfaxd", "/usr/sbin/faxq"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s is missing (Debian: hylafax-server): %v", bin, err)
		}
	}
	fax, err := user.Lookup("uucp")
	if err != nil {
		t.Fatalf("HylaFAX runs as uucp: %v", err)
	}
	uid, _ := strconv.Atoi(fax.Uid)
	gid, _ := strconv.Atoi(fax.Gid)
	h := &HylaFAX{Login: "hipaa", Password: "hfax-pass-" + strconv.Itoa(os.Getpid())}
	base, err := os.MkdirTemp("", "hylafax-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755) // faxq and hfaxd run as uucp
	h.Spool = filepath.Join(base, "spool")
	for _, d := range []string{"etc", "sendq", "docq", "tmp", "log", "status", "info", "doneq", "pollq", "recvq", "archive", "client", "config", "dev", "bin"} {
		if err := os.MkdirAll(filepath.Join(h.Spool, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hash, err := exec.Command("perl", "-e", `print crypt($ARGV[0], '$6$hipaatest$')`, h.Password).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/hosts.hfaxd": `^` + h.Login + `@127\.0\.0\.1$:` + string(hash) + "\n",
		"etc/pagermap":    "^[0-9]+$\t5550100\n",
		"etc/config":      "LogFacility: daemon\n",
	}
	setup, err := os.ReadFile("/etc/hylafax/setup.cache") // faxq refuses to start without it
	if err != nil {
		t.Fatal(err)
	}
	files["etc/setup.cache"] = string(setup)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(h.Spool, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	filepath.Walk(h.Spool, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, uid, gid) })
	faxq := exec.Command("/usr/sbin/faxq", "-q", h.Spool, "-D")
	if err := faxq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { faxq.Process.Kill(); faxq.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(h.Spool, "FIFO")); err == nil {
			break
		}
		if i > 100 {
			t.Fatal("faxq did not make its FIFO")
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.Addr = h.ln.Addr().String()
	h.wg.Add(1)
	go h.accept(t)
	t.Cleanup(func() { h.ln.Close(); h.wg.Wait() })
	return h
}

func (h *HylaFAX) accept(t T) {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		f, err := c.(*net.TCPConn).File()
		c.Close()
		if err != nil {
			continue
		}
		cmd := exec.Command("/usr/sbin/hfaxd", "-q", h.Spool, "-S")
		cmd.Stdin, cmd.Stdout = f, f
		if err := cmd.Start(); err != nil {
			f.Close()
			continue
		}
		f.Close()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				<-done
			}
		}()
	}
}

// Pages reads every page job in hfaxd's sendq, with its text from docq.
func (h *HylaFAX) Pages(t T) []HylaFAXPage {
	qs, _ := filepath.Glob(filepath.Join(h.Spool, "sendq", "q*"))
	var out []HylaFAXPage
	for _, q := range qs {
		data, err := os.ReadFile(q)
		if err != nil {
			t.Fatal(err)
		}
		p := HylaFAXPage{}
		for _, l := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(l, ":")
			switch k {
			case "jobid":
				p.JobID = v
			case "sender":
				p.Sender = v
			case "page":
				p.Pager = v[strings.LastIndex(v, ":")+1:]
			case "data":
				doc := v[strings.LastIndex(v, ":")+1:]
				text, err := os.ReadFile(filepath.Join(h.Spool, doc))
				if err != nil {
					t.Fatal(err)
				}
				p.Text = string(text)
			}
		}
		out = append(out, p)
	}
	return out
}
