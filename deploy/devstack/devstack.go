// Package devstack builds and runs a real Dendrite homeserver with
// matrix-hipaa registered on it, on loopback: the dev stack of deploy/dev and
// the harness of the end-to-end tests.
package devstack

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// DendriteVersion is the homeserver the dev stack and tests run.
const DendriteVersion = "v0.13.8"

const dendriteModule = "github.com/matrix-org/dendrite"

// CacheDir is where built homeserver binaries are kept between runs.
func CacheDir() string {
	if d := os.Getenv("MATRIX_HIPAA_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "matrix-hipaa")
	}
	return filepath.Join(os.TempDir(), "matrix-hipaa-cache")
}

var buildMu sync.Mutex

// BuildDendrite builds Dendrite from its Go module with the Go toolchain (once;
// later calls reuse the cached binaries) and returns the folder holding them.
func BuildDendrite(ctx context.Context, log io.Writer) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	bin := filepath.Join(CacheDir(), "dendrite-"+DendriteVersion, "bin")
	if _, err := os.Stat(filepath.Join(bin, "dendrite")); err == nil {
		if _, err := os.Stat(filepath.Join(bin, "generate-config")); err == nil {
			return bin, nil
		}
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "building Dendrite %s (first run only, a few minutes)…\n", DendriteVersion)
	args := []string{"install"}
	for _, c := range []string{"dendrite", "generate-config", "generate-keys"} {
		args = append(args, dendriteModule+"/cmd/"+c+"@"+DendriteVersion)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=", "CGO_ENABLED=1")
	cmd.Dir = os.TempDir() // outside any module, so our go.mod does not interfere
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build dendrite: %w", err)
	}
	return bin, nil
}

// BuildService builds matrix-hipaa from the module at root into out.
func BuildService(ctx context.Context, root, out string, log io.Writer) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "goolm", "-o", out, ".")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build matrix-hipaa: %w", err)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	// Below the kernel's ephemeral range (32768–60999 by default): a port
	// picked there can be taken as the source port of some outgoing
	// connection between now and when the server binds it. Random, so test
	// packages running side by side rarely try the same one; bound once to
	// check it is free.
	for i := 0; i < 200; i++ {
		port := 20000 + mrand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("no free port found between 20000 and 32000")
}

// Options describe a stack. Zero ports are picked free.
type Options struct {
	StateDir string
	// Homeserver is "dendrite" (the default) or "synapse".
	Homeserver  string
	DendriteBin string // folder from BuildDendrite
	SynapseRoot string // root file system from BuildSynapse
	ServiceBin  string // matrix-hipaa binary
	ServerName  string // default "localhost"
	HSPort      int
	ASPort      int
	MetricsPort int
	// PersistentJetStream keeps Dendrite's queues on disk (dev stack); tests
	// run them in memory.
	PersistentJetStream bool
	// KeepAlive sets homeserver.keepalive (e.g. "2s"); empty leaves it off.
	KeepAlive string
	// AuditExporters are added to audit.exporters (after the example's own
	// jsonl exporter), each as its YAML map.
	AuditExporters []map[string]any
	// HomeserverConfig is merged into the service's homeserver section
	// (say purge_history and purge_interval).
	HomeserverConfig map[string]any
	// ExpireAs sets jobs.expire_as (sender or bot).
	ExpireAs string
	// Pager, if set, is the service's pager section (gateways, directory,
	// schedule), as its YAML map.
	Pager map[string]any
	// AdminToken, if set, turns on the admin HTTP API on AdminPort (picked
	// free if zero) with this bearer token.
	AdminToken string
	AdminPort  int
	// JobMaxAttempts, if set, caps job attempts (with a short backoff), so a
	// test can see an action fail for good in seconds.
	JobMaxAttempts int
	// TLS, if set, makes the service (and its admin API, if on) serve HTTPS
	// with this certificate and key, and Dendrite trust CAFile
	// (SSL_CERT_FILE) to reach it.
	TLS *TLSFiles
	// Database overrides the service's database (type, uri); default SQLite.
	DatabaseType, DatabaseURI string
	// Federate turns Dendrite's federation on, over HTTPS on FederationPort
	// (picked free if zero) with a self-signed certificate, with the server
	// named 127.0.0.1:FederationPort so that other test servers on loopback
	// reach it directly; certificates are not checked between test servers.
	Federate       bool
	FederationPort int
	// NoAppService leaves the service out of Dendrite's config: a second,
	// "remote" homeserver for tests.
	NoAppService bool
	Log          io.Writer // process output; default discarded
}

// TLSFiles are PEM files: the service's certificate and key, and the CA
// that issued it.
type TLSFiles struct{ CertFile, KeyFile, CAFile string }

// Stack is a prepared (and possibly running) Dendrite + matrix-hipaa pair.
type Stack struct {
	Opts          Options
	HSURL         string
	ServiceConfig string // path of matrix-hipaa's config.yaml
	SharedSecret  string
	ServiceLog    string // path of the service's log file
	DendriteLog   string

	mu      sync.Mutex
	hs      *exec.Cmd
	hsExit  chan struct{}
	svc     *exec.Cmd
	svcExit chan struct{}
}

// Prepare writes every config, key and registration under StateDir.
func Prepare(opts Options) (*Stack, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	for _, p := range []*int{&opts.HSPort, &opts.ASPort, &opts.MetricsPort, &opts.AdminPort, &opts.FederationPort} {
		if *p == 0 {
			port, err := FreePort()
			if err != nil {
				return nil, err
			}
			*p = port
		}
	}
	if opts.ServerName == "" {
		opts.ServerName = "localhost"
		if opts.Federate {
			opts.ServerName = fmt.Sprintf("127.0.0.1:%d", opts.FederationPort)
		}
	}
	if opts.Homeserver == "" {
		opts.Homeserver = "dendrite"
	}
	state, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	opts.StateDir = state
	hsDir := filepath.Join(state, "dendrite")
	svcDir := filepath.Join(state, "matrix-hipaa")
	for _, d := range []string{hsDir, svcDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	s := &Stack{
		Opts:          opts,
		HSURL:         fmt.Sprintf("http://127.0.0.1:%d", opts.HSPort),
		ServiceConfig: filepath.Join(svcDir, "config.yaml"),
		ServiceLog:    filepath.Join(svcDir, "service.log"),
		DendriteLog:   filepath.Join(hsDir, "dendrite.log"),
	}
	if err := s.writeServiceConfig(); err != nil {
		return nil, err
	}
	if opts.Homeserver == "synapse" {
		host, _ := s.synapseData()
		s.DendriteLog = filepath.Join(host, "homeserver.log")
		if err := s.writeSynapseConfig(); err != nil {
			return nil, err
		}
		return s, nil
	}
	if err := s.writeDendriteConfig(hsDir); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Stack) writeServiceConfig() error {
	if _, err := os.Stat(s.ServiceConfig); err == nil {
		return s.register() // keep existing tokens and keys across dev restarts
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(config.Example(), &cfg); err != nil {
		return err
	}
	o := s.Opts
	hs := map[string]any{"address": s.HSURL, "domain": o.ServerName, "software": o.Homeserver}
	for k, v := range o.HomeserverConfig {
		hs[k] = v
	}
	if o.KeepAlive != "" {
		hs["keepalive"] = o.KeepAlive
	}
	cfg["homeserver"] = hs
	as := cfg["appservice"].(map[string]any)
	as["listen"] = fmt.Sprintf("127.0.0.1:%d", o.ASPort)
	as["url"] = fmt.Sprintf("http://127.0.0.1:%d", o.ASPort)
	if o.TLS != nil {
		as["url"] = fmt.Sprintf("https://127.0.0.1:%d", o.ASPort)
		as["tls_cert_file"], as["tls_key_file"] = o.TLS.CertFile, o.TLS.KeyFile
	}
	cfg["metrics"] = map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", o.MetricsPort)}
	cfg["logging"] = map[string]any{"level": "debug", "format": "json"}
	if o.AdminToken != "" {
		adm := map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", o.AdminPort), "token": o.AdminToken}
		if o.TLS != nil {
			adm["tls_cert_file"], adm["tls_key_file"] = o.TLS.CertFile, o.TLS.KeyFile
		}
		cfg["admin"] = adm
	}
	if len(o.AuditExporters) > 0 {
		a := cfg["audit"].(map[string]any)
		list, _ := a["exporters"].([]any)
		for _, e := range o.AuditExporters {
			list = append(list, e)
		}
		a["exporters"] = list
	}
	if o.JobMaxAttempts > 0 {
		cfg["jobs"] = map[string]any{"workers": 4, "max_attempts": o.JobMaxAttempts, "backoff": "100ms", "max_backoff": "400ms"}
	}
	if o.ExpireAs != "" {
		cfg["jobs"].(map[string]any)["expire_as"] = o.ExpireAs
	}
	if o.DatabaseType != "" {
		cfg["database"] = map[string]any{"type": o.DatabaseType, "uri": o.DatabaseURI}
	}
	if o.Pager != nil {
		cfg["pager"] = o.Pager
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := config.WriteFileAtomic(s.ServiceConfig, data, 0o600); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(filepath.Join(filepath.Dir(s.ServiceConfig), "policy.yaml"), policy.Example(), 0o600); err != nil {
		return err
	}
	return s.register()
}

// SetManagementRoom writes admin.room and admin.users into the service's
// config (keeping its tokens); the service reads them when it next starts.
func (s *Stack) SetManagementRoom(room string, admins ...string) error {
	return s.editServiceConfig(func(cfg map[string]any) (bool, error) {
		a, _ := cfg["admin"].(map[string]any)
		if a == nil {
			a = map[string]any{}
			cfg["admin"] = a
		}
		a["room"], a["users"] = room, admins
		return true, nil
	})
}

// SetConfig merges values into a section of the service's config (say
// compliance's privacy_officer_room); the service reads it when it next
// starts.
func (s *Stack) SetConfig(section string, values map[string]any) error {
	return s.editServiceConfig(func(cfg map[string]any) (bool, error) {
		m, _ := cfg[section].(map[string]any)
		if m == nil {
			m = map[string]any{}
			cfg[section] = m
		}
		for k, v := range values {
			m[k] = v
		}
		return true, nil
	})
}

// editServiceConfig rewrites the service's config.yaml through edit, if it
// reports a change.
func (s *Stack) editServiceConfig(edit func(cfg map[string]any) (bool, error)) error {
	data, err := os.ReadFile(s.ServiceConfig)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return err
	}
	if changed, err := edit(cfg); err != nil || !changed {
		return err
	}
	if data, err = yaml.Marshal(cfg); err != nil {
		return err
	}
	return config.WriteFileAtomic(s.ServiceConfig, data, 0o600)
}

// register runs generate-registration, which fills in the tokens.
func (s *Stack) register() error {
	reg := filepath.Join(filepath.Dir(s.ServiceConfig), "registration.yaml")
	out, err := exec.Command(s.Opts.ServiceBin, "generate-registration", "-config", s.ServiceConfig, "-out", reg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("generate-registration: %v: %s", err, out)
	}
	return nil
}

func (s *Stack) writeDendriteConfig(dir string) error {
	bin := s.Opts.DendriteBin
	key := filepath.Join(dir, "matrix_key.pem")
	if _, err := os.Stat(key); err != nil {
		if out, err := exec.Command(filepath.Join(bin, "generate-keys"), "--private-key", key).CombinedOutput(); err != nil {
			return fmt.Errorf("generate-keys: %v: %s", err, out)
		}
	}
	out, err := exec.Command(filepath.Join(bin, "generate-config"), "-ci", "-dir", dir, "-server", s.Opts.ServerName).Output()
	if err != nil {
		return fmt.Errorf("generate-config: %w", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(out, &cfg); err != nil {
		return err
	}
	secretFile := filepath.Join(dir, "shared_secret")
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		secret = []byte(config.RandomToken())
		if err := config.WriteFileAtomic(secretFile, secret, 0o600); err != nil {
			return err
		}
	}
	s.SharedSecret = string(secret)
	global := cfg["global"].(map[string]any)
	global["private_key"] = key
	global["disable_federation"] = !s.Opts.Federate
	if s.Opts.Federate {
		if _, err := os.Stat(filepath.Join(dir, "tls.crt")); err != nil {
			if out, err := exec.Command(filepath.Join(bin, "generate-keys"), "--tls-cert", filepath.Join(dir, "tls.crt"),
				"--tls-key", filepath.Join(dir, "tls.key"), "--server", "127.0.0.1", "--keysize", "2048").CombinedOutput(); err != nil {
				return fmt.Errorf("generate-keys (TLS): %v: %s", err, out)
			}
		}
		// Test servers only: no notary, and each other's self-signed certificates.
		global["key_perspectives"] = []any{}
		cfg["federation_api"].(map[string]any)["disable_tls_validation"] = true
		cfg["federation_api"].(map[string]any)["key_perspectives"] = []any{}
	}
	global["report_stats"] = map[string]any{"enabled": false}
	global["presence"] = map[string]any{"enable_inbound": false, "enable_outbound": false}
	js := global["jetstream"].(map[string]any)
	js["in_memory"] = !s.Opts.PersistentJetStream
	js["storage_path"] = filepath.Join(dir, "jetstream")
	asAPI := cfg["app_service_api"].(map[string]any)
	asAPI["config_files"] = []string{filepath.Join(filepath.Dir(s.ServiceConfig), "registration.yaml")}
	if s.Opts.NoAppService {
		asAPI["config_files"] = []string{}
	}
	// generate-config -ci turns certificate checks off; a hospital's would not.
	asAPI["disable_tls_validation"] = false
	client := cfg["client_api"].(map[string]any)
	client["registration_disabled"] = true // accounts come from the shared secret API
	client["registration_shared_secret"] = s.SharedSecret
	client["guests_disabled"] = true
	cfg["logging"] = []any{map[string]any{"type": "std", "level": "info"}}
	cfg["sync_api"].(map[string]any)["search"] = map[string]any{"enabled": false, "index_path": filepath.Join(dir, "searchindex"), "in_memory": true, "language": "en"}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return config.WriteFileAtomic(filepath.Join(dir, "dendrite.yaml"), data, 0o600)
}

func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
}

// childAttr puts a child in its own process group (a Ctrl-C meant for the
// stack reaches the stack, which stops its children in order) and has the
// kernel stop it if the stack dies without doing so (SIGKILL, a crash).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// PortInUse is returned when a port the stack needs is taken, most often by
// an earlier stack that is still running.
type PortInUse struct {
	Port int
	What string
}

func (e PortInUse) Error() string {
	return fmt.Sprintf("port %d (%s) is in use: another dev stack or server holds it; stop it, or choose another port", e.Port, e.What)
}

// checkPorts fails with PortInUse if any of ports is taken on loopback.
func checkPorts(ports map[string]int) error {
	for what, port := range ports {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return PortInUse{port, what}
		}
		l.Close()
	}
	return nil
}

// StartDendrite starts the homeserver (Dendrite or Synapse, as the options
// say) and waits until it answers.
func (s *Stack) StartDendrite(ctx context.Context) error {
	ports := map[string]int{"homeserver": s.Opts.HSPort}
	if s.Opts.Federate {
		ports["federation"] = s.Opts.FederationPort
	}
	if err := checkPorts(ports); err != nil {
		return err
	}
	if s.Opts.Homeserver == "synapse" {
		return s.startSynapse(ctx)
	}
	dir := filepath.Join(s.Opts.StateDir, "dendrite")
	logf, err := openLog(s.DendriteLog)
	if err != nil {
		return err
	}
	args := []string{"-config", filepath.Join(dir, "dendrite.yaml"), "-http-bind-address", fmt.Sprintf("127.0.0.1:%d", s.Opts.HSPort)}
	if s.Opts.Federate {
		args = append(args, "-https-bind-address", fmt.Sprintf("127.0.0.1:%d", s.Opts.FederationPort),
			"-tls-cert", filepath.Join(dir, "tls.crt"), "-tls-key", filepath.Join(dir, "tls.key"))
	}
	cmd := exec.Command(filepath.Join(s.Opts.DendriteBin, "dendrite"), args...)
	cmd.Dir = dir
	if s.Opts.TLS != nil {
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+s.Opts.TLS.CAFile)
	}
	return s.runHomeserver(ctx, "Dendrite", cmd, logf)
}

// runHomeserver starts the homeserver's process, its output to logf, and
// waits until the client API answers.
func (s *Stack) runHomeserver(ctx context.Context, name string, cmd *exec.Cmd, logf *os.File) error {
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exit := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exit) }()
	s.mu.Lock()
	s.hs, s.hsExit = cmd, exit
	s.mu.Unlock()
	if err := waitHTTP(ctx, s.HSURL+"/_matrix/client/versions", 90*time.Second, exit); err != nil {
		return fmt.Errorf("%s: %w; see %s", name, err, s.DendriteLog)
	}
	return nil
}

// StartService starts matrix-hipaa and waits until it accepts connections.
// The first time, it gives the bot account a password first (see
// giveBotPassword).
func (s *Stack) StartService(ctx context.Context) error {
	ports := map[string]int{"matrix-hipaa": s.Opts.ASPort, "metrics": s.Opts.MetricsPort}
	if s.Opts.AdminToken != "" {
		ports["admin API"] = s.Opts.AdminPort
	}
	if err := checkPorts(ports); err != nil {
		return err
	}
	if err := s.giveBotPassword(ctx); err != nil {
		return err
	}
	logf, err := openLog(s.ServiceLog)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.Opts.ServiceBin, "run", "-config", s.ServiceConfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exit := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exit) }()
	s.mu.Lock()
	s.svc, s.svcExit = cmd, exit
	s.mu.Unlock()
	addr := fmt.Sprintf("127.0.0.1:%d", s.Opts.ASPort)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exit:
			return fmt.Errorf("matrix-hipaa exited at start-up; see %s", s.ServiceLog)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("matrix-hipaa did not start listening on %s", addr)
}

// KillService sends SIGKILL to the service, as a crash would, and waits for it to die.
func (s *Stack) KillService() { s.signalService(syscall.SIGKILL) }

// StopService asks the service to stop (SIGTERM) and waits, killing it if it
// has not stopped within 15 s.
func (s *Stack) StopService() { s.signalService(syscall.SIGTERM) }

func (s *Stack) signalService(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exit := s.svc, s.svcExit
	s.svc = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exit:
	case <-time.After(15 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		<-exit
	}
}

// Stop stops both processes.
func (s *Stack) Stop() {
	s.StopService()
	s.StopDendrite()
}

// StopDendrite stops the homeserver (SIGTERM, SIGKILL after 10 s) and waits
// until it has exited, so it can be started again on the same port.
func (s *Stack) StopDendrite() {
	s.mu.Lock()
	hs, exit := s.hs, s.hsExit
	s.hs = nil
	s.mu.Unlock()
	if hs == nil || hs.Process == nil {
		return
	}
	syscall.Kill(-hs.Process.Pid, syscall.SIGTERM)
	select {
	case <-exit:
	case <-time.After(10 * time.Second):
		syscall.Kill(-hs.Process.Pid, syscall.SIGKILL)
		<-exit
	}
}

// PauseHomeserver freezes the homeserver (SIGSTOP to its process group)
// for d, then lets it go on: requests to it hang meanwhile, as on an
// overloaded server.
func (s *Stack) PauseHomeserver(d time.Duration) {
	s.mu.Lock()
	hs := s.hs
	s.mu.Unlock()
	if hs == nil || hs.Process == nil {
		return
	}
	syscall.Kill(-hs.Process.Pid, syscall.SIGSTOP)
	time.Sleep(d)
	syscall.Kill(-hs.Process.Pid, syscall.SIGCONT)
}

// Service runs a matrix-hipaa subcommand against this stack's config.
func (s *Stack) Service(args ...string) ([]byte, []byte, error) {
	full := append([]string{}, args...)
	full = append(full, "-config", s.ServiceConfig)
	cmd := exec.Command(s.Opts.ServiceBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.Bytes(), stderr.Bytes(), err
}

// waitHTTP waits until url answers 200, failing at once if exited closes
// (the process meant to answer died: what answers is not it).
func waitHTTP(ctx context.Context, url string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("it exited at start-up")
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer within %s", url, timeout)
}

// giveBotPassword does once what an operator does on Dendrite 0.13, which
// asks for the account's password before it takes cross-signing keys: the
// bot account is registered through the application service API, given a
// random password with Dendrite's admin API (as a throwaway server admin),
// and the password written to appservice.bot_password_file.
func (s *Stack) giveBotPassword(ctx context.Context) error {
	return s.editServiceConfig(func(cfg map[string]any) (bool, error) {
		as := cfg["appservice"].(map[string]any)
		if as["bot_password_file"] != nil {
			return false, nil
		}
		bot, _ := as["bot"].(string)
		if bot == "" {
			bot = "hipaa"
		}
		token, _ := as["as_token"].(string)
		err := doJSONAuth(ctx, http.MethodPost, s.HSURL+"/_matrix/client/v3/register", token,
			map[string]any{"type": "m.login.application_service", "username": bot, "inhibit_login": true}, nil)
		if err != nil && !strings.Contains(err.Error(), "M_USER_IN_USE") {
			return false, fmt.Errorf("register the bot: %w", err)
		}
		secret := make([]byte, 18)
		rand.Read(secret)
		adminToken, err := s.registerAccount(ctx, "stack-admin-"+hex.EncodeToString(secret[:4]), hex.EncodeToString(secret), true)
		if err != nil {
			return false, err
		}
		password := base64.RawURLEncoding.EncodeToString(secret)
		botID := "@" + bot + ":" + s.Opts.ServerName
		if s.Opts.Homeserver == "synapse" {
			// Synapse's admin API sets the password and, as a hospital's
			// deployment would, makes the bot a server admin: single-device
			// sign-out, media quarantine, history purge and the room list
			// are admin APIs there.
			err = doJSONAuth(ctx, http.MethodPut, s.HSURL+"/_synapse/admin/v2/users/"+url.PathEscape(botID), adminToken,
				map[string]any{"password": password, "admin": true, "logout_devices": false}, nil)
		} else {
			err = doJSONAuth(ctx, http.MethodPost, s.HSURL+"/_dendrite/admin/resetPassword/"+url.PathEscape(botID), adminToken,
				map[string]any{"password": password, "logout_devices": false}, nil)
		}
		if err != nil {
			return false, fmt.Errorf("set the bot's password: %w", err)
		}
		file := filepath.Join(filepath.Dir(s.ServiceConfig), "bot_password")
		if err := config.WriteFileAtomic(file, []byte(password+"\n"), 0o600); err != nil {
			return false, err
		}
		as["bot_password_file"] = file
		return true, nil
	})
}

// CreateUser registers an account through the shared-secret registration API
// (as Synapse and Dendrite both offer it) and returns the user ID.
func (s *Stack) CreateUser(ctx context.Context, localpart, password string, admin bool) (string, error) {
	if _, err := s.registerAccount(ctx, localpart, password, admin); err != nil {
		return "", err
	}
	return "@" + localpart + ":" + s.Opts.ServerName, nil
}

// registerAccount creates an account with the shared secret and returns
// its access token.
func (s *Stack) registerAccount(ctx context.Context, localpart, password string, admin bool) (string, error) {
	endpoint := s.HSURL + "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := doJSON(ctx, http.MethodGet, endpoint, nil, &nonce); err != nil {
		return "", err
	}
	mac := hmac.New(sha1.New, []byte(s.SharedSecret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00" + role))
	var out struct {
		AccessToken string `json:"access_token"`
	}
	err := doJSON(ctx, http.MethodPost, endpoint, map[string]any{
		"nonce": nonce.Nonce, "username": localpart, "password": password, "admin": admin,
		"mac": hex.EncodeToString(mac.Sum(nil)),
	}, &out)
	if err != nil {
		return "", fmt.Errorf("create user %s: %w", localpart, err)
	}
	return out.AccessToken, nil
}

func doJSON(ctx context.Context, method, url string, body, out any) error {
	return doJSONAuth(ctx, method, url, "", body, out)
}

func doJSONAuth(ctx context.Context, method, url, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// RepoRoot finds the module root above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Binaries builds (or finds cached) the homeserver named ("dendrite" or
// "synapse") and a matrix-hipaa binary in a temporary folder that cleanup
// removes: Options with Homeserver, its build and ServiceBin set, for load
// tools that start their own stacks.
func Binaries(ctx context.Context, name, homeserver string) (opts Options, cleanup func(), err error) {
	root, err := RepoRoot()
	if err != nil {
		return opts, nil, err
	}
	opts.Homeserver = homeserver
	switch homeserver {
	case "", "dendrite":
		opts.Homeserver = "dendrite"
		opts.DendriteBin, err = BuildDendrite(ctx, os.Stderr)
	case "synapse":
		opts.SynapseRoot, _, err = BuildSynapse(ctx, os.Stderr)
	default:
		err = fmt.Errorf("homeserver %q: dendrite or synapse", homeserver)
	}
	if err != nil {
		return opts, nil, err
	}
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		return opts, nil, err
	}
	opts.ServiceBin = filepath.Join(dir, "matrix-hipaa")
	if err := BuildService(ctx, root, opts.ServiceBin, os.Stderr); err != nil {
		os.RemoveAll(dir)
		return opts, nil, err
	}
	return opts, func() { os.RemoveAll(dir) }, nil
}

// Login creates an account and returns a client logged in with its password.
func (s *Stack) Login(ctx context.Context, localpart string) (*mautrix.Client, error) {
	password := "pw-" + localpart + "-0123456789"
	if _, err := s.CreateUser(ctx, localpart, password, false); err != nil {
		return nil, err
	}
	return s.LoginAs(ctx, localpart, password)
}
