package deploy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// The shipped units, booted: a container (systemd-nspawn) runs this machine's
// own systemd and /usr with a copy of /etc in which nothing but our units is
// enabled, the sysusers entry applied and the config laid out as
// docs/deploy.md says. The service must start under its full sandbox, take a
// transaction, keep its files private, pass the verify unit, and stop cleanly
// on systemctl stop with everything in the audit trail. Only ExecStart's path
// differs from the shipped files (the container's /usr is the host's, read-only).
func TestUnitsRunUnderSystemd(t *testing.T) {
	nspawn := tool(t, "systemd-nspawn", "systemd-container")
	sysusers := tool(t, "systemd-sysusers", "systemd")
	if os.Geteuid() != 0 {
		t.Fatal("booting a container needs root (CI runs as root)")
	}
	root := t.TempDir()
	for _, d := range []string{"usr", "dev", "proc", "sys", "run", "tmp", "var", "root", "home", "opt/matrix-hipaa"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		if target, err := os.Readlink("/" + l); err == nil {
			must(t, os.Symlink(target, filepath.Join(root, l)))
		}
	}
	etc := filepath.Join(root, "etc")
	if out, err := exec.Command("cp", "-a", "/etc", etc).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc: %v\n%s", err, out)
	}
	// No host services in the container: only what systemd itself needs and ours.
	for _, p := range []string{"systemd/system", "init.d", "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d", "os-release", "machine-id"} {
		must(t, os.RemoveAll(filepath.Join(etc, p)))
	}
	copyFile(t, "/usr/lib/os-release", filepath.Join(etc, "os-release"), 0o644)
	must(t, os.WriteFile(filepath.Join(etc, "machine-id"), nil, 0o444))

	bin := buildService(t, filepath.Join(root, "opt/matrix-hipaa"))
	const inside = "/opt/matrix-hipaa/matrix-hipaa"
	units := filepath.Join(etc, "systemd/system")
	for _, d := range []string{"multi-user.target.wants", "timers.target.wants"} {
		must(t, os.MkdirAll(filepath.Join(units, d), 0o755))
	}
	for _, u := range []string{"matrix-hipaa.service", "matrix-hipaa-verify.service", "matrix-hipaa-verify.timer", "matrix-hipaa-backup.service", "matrix-hipaa-backup.timer"} {
		b, err := os.ReadFile(filepath.Join("systemd", u))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(units, u), bytes.ReplaceAll(b, []byte("/usr/local/bin/matrix-hipaa"), []byte(inside)), 0o644))
	}
	must(t, os.Symlink("../matrix-hipaa.service", filepath.Join(units, "multi-user.target.wants/matrix-hipaa.service")))
	must(t, os.Symlink("../matrix-hipaa-verify.timer", filepath.Join(units, "timers.target.wants/matrix-hipaa-verify.timer")))
	must(t, os.Symlink("../matrix-hipaa-backup.timer", filepath.Join(units, "timers.target.wants/matrix-hipaa-backup.timer")))
	abs, _ := filepath.Abs("systemd/matrix-hipaa.sysusers")
	run(t, ".", sysusers, "--root="+root, abs)
	uid, gid := passwdIDs(t, filepath.Join(etc, "passwd"), "matrix-hipaa")

	// The config as docs/deploy.md lays it out, on free loopback ports; the
	// homeserver is absent (the bot's login retries; nothing else needs it).
	asPort, err := devstack.FreePort()
	must(t, err)
	metricsPort, err := devstack.FreePort()
	must(t, err)
	cfgDir := filepath.Join(etc, "matrix-hipaa")
	must(t, os.MkdirAll(cfgDir, 0o750))
	cfgText := string(config.Example())
	for old, repl := range map[string]string{
		"  address: http://127.0.0.1:8008\n":           "  address: http://127.0.0.1:1\n",
		"  domain: example.org\n":                      "  domain: hospital.test\n",
		"  listen: 127.0.0.1:29330\n":                  fmt.Sprintf("  listen: 127.0.0.1:%d\n", asPort),
		"  url: http://127.0.0.1:29330\n":              fmt.Sprintf("  url: http://127.0.0.1:%d\n", asPort),
		"  listen: 127.0.0.1:29331\n":                  fmt.Sprintf("  listen: 127.0.0.1:%d\n", metricsPort),
		"  uri: matrix-hipaa.db\n":                     "  uri: /var/lib/matrix-hipaa/matrix-hipaa.db\n",
		"\npolicy: policy.yaml\n":                      "\npolicy: /etc/matrix-hipaa/policy.yaml\n",
		"  key_file: audit.key\n":                      "  key_file: /var/lib/matrix-hipaa/audit.key\n",
		"  signing_key_file: keys/audit-signing.key\n": "  signing_key_file: /var/lib/matrix-hipaa/keys/audit-signing.key\n",
		"  pseudonym_file: keys/pseudonym.key\n":       "  pseudonym_file: /var/lib/matrix-hipaa/keys/pseudonym.key\n",
		"  job_file: keys/job.key\n":                   "  job_file: /var/lib/matrix-hipaa/keys/job.key\n",
		"  bot_pickle_file: keys/bot-pickle.key\n":     "  bot_pickle_file: /var/lib/matrix-hipaa/keys/bot-pickle.key\n",
		"  checkpoint_file: audit-checkpoints.jsonl\n": "  checkpoint_file: /var/lib/matrix-hipaa/audit-checkpoints.jsonl\n",
		"      path: audit/audit.jsonl\n":              "      path: /var/lib/matrix-hipaa/audit/audit.jsonl\n",
	} {
		if !strings.Contains(cfgText, old) {
			t.Fatalf("example config no longer has %q", old)
		}
		cfgText = strings.Replace(cfgText, old, repl, 1)
	}
	cfgPath := filepath.Join(cfgDir, "config.yaml")
	must(t, os.WriteFile(cfgPath, []byte(cfgText), 0o600))
	policyOut, err := exec.Command(bin, "example-policy").Output()
	must(t, err)
	must(t, os.WriteFile(filepath.Join(cfgDir, "policy.yaml"), policyOut, 0o640))
	run(t, ".", bin, "generate-registration", "-config", cfgPath, "-out", filepath.Join(cfgDir, "registration.yaml"))
	must(t, os.Chown(cfgPath, uid, gid))
	must(t, os.Chown(cfgDir, 0, gid))
	must(t, os.Chown(filepath.Join(cfgDir, "policy.yaml"), 0, gid))
	var tokens struct {
		AppService struct {
			HSToken string `yaml:"hs_token"`
		} `yaml:"appservice"`
	}
	cfgBytes, err := os.ReadFile(cfgPath)
	must(t, err)
	must(t, yaml.Unmarshal(cfgBytes, &tokens))

	name := "hipaa-" + hex.EncodeToString(randomBytes(4))
	logPath := filepath.Join(t.TempDir(), "container.log")
	logFile, err := os.Create(logPath)
	must(t, err)
	defer logFile.Close()
	boot := exec.Command(nspawn, "-D", root, "--bind-ro=/usr", "-M", name, "--register=no", "--keep-unit", "--console=pipe", "-b")
	boot.Stdout, boot.Stderr = logFile, logFile
	must(t, boot.Start())
	exited := make(chan struct{})
	go func() { boot.Wait(); close(exited) }()
	defer func() {
		// SIGTERM asks the container's systemd to power off.
		boot.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			boot.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("container console:\n%s", out)
		}
	}()

	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	leader := 0
	sh := func(args ...string) string {
		t.Helper()
		if leader == 0 {
			leader = containerInit(t, boot.Process.Pid)
		}
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(leader), "-a"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("in the container: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	up := waitUntil(90*time.Second, exited, func() bool {
		resp, err := http.Get(metrics)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !up {
		t.Fatalf("the service did not answer on its metrics port under systemd:\n%s", sh("journalctl", "-u", "matrix-hipaa", "--no-pager", "-n", "30"))
	}
	props := func(unit string, want map[string]string) {
		t.Helper()
		names := make([]string, 0, len(want))
		for k := range want {
			names = append(names, k)
		}
		got := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(sh("systemctl", "show", "-p", strings.Join(names, ","), unit)), "\n") {
			k, v, _ := strings.Cut(l, "=")
			got[k] = v
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("%s: %s=%q, want %q (all: %v)", unit, k, got[k], v, got)
			}
		}
	}
	props("matrix-hipaa.service", map[string]string{"ActiveState": "active", "SubState": "running", "NRestarts": "0", "User": "matrix-hipaa"})
	for _, timer := range []string{"matrix-hipaa-verify.timer", "matrix-hipaa-backup.timer"} {
		props(timer, map[string]string{"ActiveState": "active", "UnitFileState": "enabled"})
	}

	// A transaction from "the homeserver" is taken and acknowledged.
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/boot1", asPort),
		strings.NewReader(`{"events":[{"event_id":"$booted","room_id":"!r:example.org","type":"m.room.encrypted","sender":"@u:example.org","origin_server_ts":1,"content":{}}]}`))
	req.Header.Set("Authorization", "Bearer "+tokens.AppService.HSToken)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("transaction under systemd: %d", resp.StatusCode)
	}

	// Its files belong to the service user and no one else can read them.
	state := filepath.Join(root, "var/lib/matrix-hipaa")
	for path, mode := range map[string]os.FileMode{"": 0o700 | os.ModeDir, "matrix-hipaa.db": 0o600, "audit.key": 0o600, "keys": 0o700 | os.ModeDir,
		"keys/audit-signing.key": 0o600, "keys/pseudonym.key": 0o600, "keys/job.key": 0o600, "keys/bot-pickle.key": 0o600} {
		st, err := os.Stat(filepath.Join(state, path))
		must(t, err)
		sys := st.Sys().(*syscall.Stat_t)
		if st.Mode() != mode || int(sys.Uid) != uid {
			t.Errorf("/var/lib/matrix-hipaa/%s: mode %v uid %d, want %v uid %d", path, st.Mode(), sys.Uid, mode, uid)
		}
	}

	// The daily check, run now, passes.
	sh("systemctl", "start", "matrix-hipaa-verify.service")
	props("matrix-hipaa-verify.service", map[string]string{"Result": "success", "ActiveState": "inactive"})
	if j := sh("journalctl", "-u", "matrix-hipaa-verify", "--no-pager"); !strings.Contains(j, "OK: ") {
		t.Fatalf("verify unit's journal:\n%s", j)
	}

	// The daily backup, run now, leaves a checked copy only the service user reads.
	sh("systemctl", "start", "matrix-hipaa-backup.service")
	props("matrix-hipaa-backup.service", map[string]string{"Result": "success", "ActiveState": "inactive"})
	if j := sh("journalctl", "-u", "matrix-hipaa-backup", "--no-pager"); !strings.Contains(j, "audit records intact") {
		t.Fatalf("backup unit's journal:\n%s", j)
	}
	copies, _ := filepath.Glob(filepath.Join(state, "backups", "matrix-hipaa-*Z.db"))
	if len(copies) != 1 {
		t.Fatalf("backups: %v", copies)
	}
	for path, mode := range map[string]os.FileMode{filepath.Join(state, "backups"): 0o700 | os.ModeDir, copies[0]: 0o600} {
		st, err := os.Stat(path)
		must(t, err)
		if st.Mode() != mode || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
			t.Errorf("%s: mode %v uid %d, want %v uid %d", path, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, mode, uid)
		}
	}

	// systemctl stop is a clean stop, recorded in the trail.
	sh("systemctl", "stop", "matrix-hipaa")
	props("matrix-hipaa.service", map[string]string{"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"})
	export := sh("runuser", "-u", "matrix-hipaa", "--", inside, "audit", "export", "-config", "/etc/matrix-hipaa/config.yaml", "-format", "jsonl")
	for _, want := range []string{`"type":"service.start"`, `"type":"event.received"`, `"event_id":"$booted"`, `"type":"audit.read","outcome":"success","actor":"os:matrix-hipaa","action":"verify"`, `"action":"backup"`, `"type":"service.stop"`} {
		if !strings.Contains(export, want) {
			t.Errorf("audit export lacks %s:\n%s", want, export)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	must(t, err)
	must(t, os.WriteFile(to, b, mode))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// passwdIDs reads a user's uid and gid from a passwd file.
func passwdIDs(t *testing.T, passwd, user string) (int, int) {
	t.Helper()
	b, err := os.ReadFile(passwd)
	must(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(user) + `:x:(\d+):(\d+):`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in %s", user, passwd)
	}
	uid, _ := strconv.Atoi(string(m[1]))
	gid, _ := strconv.Atoi(string(m[2]))
	return uid, gid
}

// containerInit is the container's PID 1 as the host sees it: nspawn's child.
func containerInit(t *testing.T, nspawnPID int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawnPID, nspawnPID))
	must(t, err)
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatal("systemd-nspawn has no child")
	}
	pid, err := strconv.Atoi(f[0])
	must(t, err)
	return pid
}

// waitUntil polls cond until it holds (true), or the container exits or time
// runs out (false).
func waitUntil(limit time.Duration, exited <-chan struct{}, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-exited:
			return false
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}
