package devstack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"gopkg.in/yaml.v3"
)

// SynapseSuite is the Debian suite Synapse is installed from: sid ships
// the Synapse hospitals run (matrix-synapse 1.160 when this was written).
const SynapseSuite = "sid"

// debianMirror is the mirror this machine's apt sources use.
const debianMirror = "http://deb.debian.org/debian"

// SynapseRootfs is the cached Debian sid root file system with Synapse
// installed, made by BuildSynapse.
func SynapseRootfs() string { return filepath.Join(CacheDir(), "synapse-"+SynapseSuite+"-rootfs") }

// BuildSynapse makes (once; later calls reuse it) a Debian sid root file
// system with Debian's matrix-synapse package, in which tests start a real
// Synapse under chroot. It needs root and debootstrap (installed if
// missing). It returns the root file system's folder and the Synapse
// version.
func BuildSynapse(ctx context.Context, log io.Writer) (string, string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	root := SynapseRootfs()
	if v, err := os.ReadFile(filepath.Join(root, ".matrix-hipaa-ready")); err == nil {
		return root, strings.TrimSpace(string(v)), nil
	}
	if os.Getuid() != 0 {
		return "", "", errors.New("building Synapse's root file system needs root (debootstrap, chroot)")
	}
	start := time.Now()
	if _, err := exec.LookPath("debootstrap"); err != nil {
		fmt.Fprintln(log, "installing debootstrap…")
		if err := run(ctx, log, "", "apt-get", "update", "-qq"); err != nil {
			return "", "", err
		}
		if err := run(ctx, log, "", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "debootstrap"); err != nil {
			return "", "", err
		}
	}
	// Built beside the final folder and renamed into place when complete,
	// so an interrupted build is never taken for a finished one.
	tmp := root + ".building"
	unmountProc(tmp)
	if err := os.RemoveAll(tmp); err != nil {
		return "", "", err
	}
	fmt.Fprintf(log, "building a Debian %s root file system with Synapse (first run only, about two minutes)…\n", SynapseSuite)
	if err := run(ctx, log, "", "debootstrap", "--variant=minbase", SynapseSuite, tmp, debianMirror); err != nil {
		return "", "", fmt.Errorf("debootstrap: %w", err)
	}
	if err := mountProc(tmp); err != nil {
		return "", "", err
	}
	defer unmountProc(tmp)
	// The mirror's sid Release file is a dated snapshot: without this apt
	// refuses it as expired.
	apt := []string{tmp, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "Acquire::Check-Valid-Until=false"}
	if err := run(ctx, log, "", "chroot", append(apt, "update", "-qq")...); err != nil {
		return "", "", err
	}
	if err := run(ctx, log, "", "chroot", append(apt, "install", "-y", "-qq", "--no-install-recommends", "matrix-synapse")...); err != nil {
		return "", "", fmt.Errorf("install matrix-synapse: %w", err)
	}
	out, err := exec.CommandContext(ctx, "chroot", tmp, "dpkg-query", "-W", "-f", "${Version}", "matrix-synapse").Output()
	if err != nil {
		return "", "", fmt.Errorf("matrix-synapse version: %w", err)
	}
	version := strings.TrimSpace(string(out))
	if err := os.WriteFile(filepath.Join(tmp, ".matrix-hipaa-ready"), []byte(version+"\n"), 0o644); err != nil {
		return "", "", err
	}
	unmountProc(tmp)
	if err := os.Rename(tmp, root); err != nil {
		return "", "", err
	}
	fmt.Fprintf(log, "Synapse %s ready in %s (built in %s)\n", version, root, time.Since(start).Round(time.Second))
	return root, version, nil
}

// mountProc mounts /proc inside a root file system (Python and Synapse
// read it), unless it is mounted already.
func mountProc(root string) error {
	if _, err := os.Stat(filepath.Join(root, "proc", "self")); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o555); err != nil {
		return err
	}
	if out, err := exec.Command("mount", "-t", "proc", "proc", filepath.Join(root, "proc")).CombinedOutput(); err != nil {
		return fmt.Errorf("mount /proc in %s: %v: %s", root, err, out)
	}
	return nil
}

func unmountProc(root string) {
	if _, err := os.Stat(filepath.Join(root, "proc", "self")); err == nil {
		exec.Command("umount", "-l", filepath.Join(root, "proc")).Run()
	}
}

// run runs a command, its output to log.
func run(ctx context.Context, log io.Writer, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// synapseData is where this stack's Synapse keeps its files: inside the
// root file system (Synapse runs under chroot), one folder per stack.
func (s *Stack) synapseData() (host, inside string) {
	return SynapseDataDir(s.Opts.SynapseRoot, s.Opts.StateDir)
}

// SynapseDataDir is where the Synapse of the stack with this state folder
// keeps its files, seen from the host and from inside the chroot.
func SynapseDataDir(root, stateDir string) (host, inside string) {
	sum := sha256.Sum256([]byte(stateDir))
	inside = "/srv/hipaa-" + hex.EncodeToString(sum[:6])
	return filepath.Join(root, inside), inside
}

// writeSynapseConfig writes homeserver.yaml as a hospital would run it for
// this service: client API on one loopback address, the service's
// registration, a registration shared secret (accounts come from the admin
// API), no federation, SQLite, rate limits raised as the registration asks
// for its users (tests send fast), and the application-service encryption
// extensions (to-device events, device lists and one-time key counts in
// transactions: MSC2409, MSC3202) on.
func (s *Stack) writeSynapseConfig() error {
	host, in := s.synapseData()
	if err := os.MkdirAll(filepath.Join(host, "media_store"), 0o700); err != nil {
		return err
	}
	secretFile := filepath.Join(host, "shared_secret")
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		secret = []byte(config.RandomToken())
		if err := config.WriteFileAtomic(secretFile, secret, 0o600); err != nil {
			return err
		}
	}
	s.SharedSecret = string(secret)
	lots := map[string]any{"per_second": 1000, "burst_count": 1000}
	appServices := []string{in + "/appservice.yaml"}
	if s.Opts.NoAppService {
		appServices = []string{}
	}
	cfg := map[string]any{
		"server_name": s.Opts.ServerName,
		"pid_file":    in + "/homeserver.pid",
		"listeners": []any{map[string]any{
			// One address: the generated config lists ::1 and 127.0.0.1 on
			// one port, which fails where IPv6 is off.
			"port": s.Opts.HSPort, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "tls": false, "x_forwarded": false,
			"resources": []any{map[string]any{"names": []string{"client"}, "compress": false}},
		}},
		"database":                    map[string]any{"name": "sqlite3", "args": map[string]any{"database": in + "/homeserver.db"}},
		"log_config":                  in + "/log.config",
		"media_store_path":            in + "/media_store",
		"signing_key_path":            in + "/signing.key",
		"registration_shared_secret":  string(secret),
		"macaroon_secret_key":         string(secret) + "-macaroon",
		"form_secret":                 string(secret) + "-form",
		"report_stats":                false,
		"enable_registration":         false,
		"trusted_key_servers":         []any{},
		"suppress_key_server_warning": true,
		"federation_domain_whitelist": []any{},
		"presence":                    map[string]any{"enabled": false},
		"app_service_config_files":    appServices,
		"rc_message":                  lots,
		"rc_registration":             lots,
		"rc_joins":                    map[string]any{"local": lots, "remote": lots},
		"rc_invites":                  map[string]any{"per_room": lots, "per_user": lots, "per_issuer": lots},
		"rc_login":                    map[string]any{"address": lots, "account": lots, "failed_attempts": lots},
		"rc_admin_redaction":          lots,
		"rc_key_requests":             lots,
		"rc_3pid_validation":          lots,
		"rc_media_create":             lots,
		"rc_room_creation":            lots,
		"rc_joins_per_room":           lots,
		"rc_reports":                  lots,
		"rc_delayed_event_mgmt":       lots,
		"rc_user_directory":           lots,
		"rc_third_party_invite":       lots,
		"experimental_features": map[string]any{
			"msc2409_to_device_messages_enabled": true,
			"msc3202_transaction_extensions":     true,
			"msc3202_device_masquerading":        true,
		},
	}
	if s.Opts.Federate {
		// Federation over HTTPS on loopback, with a self-signed certificate;
		// test servers do not check each other's certificates, and loopback
		// (which Synapse refuses to federate with by default) is allowed.
		if err := selfSigned(filepath.Join(host, "tls.crt"), filepath.Join(host, "tls.key")); err != nil {
			return err
		}
		cfg["listeners"] = append(cfg["listeners"].([]any), map[string]any{
			"port": s.Opts.FederationPort, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "tls": true, "x_forwarded": false,
			"resources": []any{map[string]any{"names": []string{"federation"}, "compress": false}},
		})
		cfg["tls_certificate_path"], cfg["tls_private_key_path"] = in+"/tls.crt", in+"/tls.key"
		cfg["federation_verify_certificates"] = false
		cfg["federation_ip_range_blocklist"] = []any{}
		cfg["ip_range_blacklist"] = []any{}
		delete(cfg, "federation_domain_whitelist")
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := config.WriteFileAtomic(filepath.Join(host, "homeserver.yaml"), data, 0o600); err != nil {
		return err
	}
	logConfig := fmt.Sprintf(`version: 1
formatters:
  precise:
    format: '%%(asctime)s - %%(name)s - %%(lineno)d - %%(levelname)s - %%(request)s - %%(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: %s/homeserver.log
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
`, in)
	return config.WriteFileAtomic(filepath.Join(host, "log.config"), []byte(logConfig), 0o600)
}

// startSynapse starts Synapse under chroot and waits until it answers.
func (s *Stack) startSynapse(ctx context.Context) error {
	host, in := s.synapseData()
	root := s.Opts.SynapseRoot
	if err := mountProc(root); err != nil {
		return err
	}
	// The registration as generate-registration last wrote it.
	if !s.Opts.NoAppService {
		reg, err := os.ReadFile(filepath.Join(filepath.Dir(s.ServiceConfig), "registration.yaml"))
		if err != nil {
			return err
		}
		if err := config.WriteFileAtomic(filepath.Join(host, "appservice.yaml"), reg, 0o600); err != nil {
			return err
		}
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=" + in}
	if s.Opts.TLS != nil {
		// The CA that issued the service's certificate, trusted by Synapse
		// (OpenSSL's SSL_CERT_FILE) to reach it over HTTPS.
		ca, err := os.ReadFile(s.Opts.TLS.CAFile)
		if err != nil {
			return err
		}
		if err := config.WriteFileAtomic(filepath.Join(host, "service-ca.pem"), ca, 0o644); err != nil {
			return err
		}
		env = append(env, "SSL_CERT_FILE="+in+"/service-ca.pem")
	}
	if _, err := os.Stat(filepath.Join(host, "signing.key")); err != nil {
		cmd := exec.CommandContext(ctx, "chroot", root, "python3", "-m", "synapse.app.homeserver", "-c", in+"/homeserver.yaml", "--generate-keys")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("synapse --generate-keys: %v: %s", err, out)
		}
	}
	logf, err := openLog(filepath.Join(host, "stdout.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("chroot", root, "python3", "-m", "synapse.app.homeserver", "-c", in+"/homeserver.yaml")
	cmd.Env = env
	return s.runHomeserver(ctx, "Synapse", cmd, logf)
}

// HomeserverName is the stack's homeserver and version, for people.
func (s *Stack) HomeserverName() string {
	if s.Opts.Homeserver == "synapse" {
		v, _ := os.ReadFile(filepath.Join(s.Opts.SynapseRoot, ".matrix-hipaa-ready"))
		return "Synapse " + strings.TrimSpace(string(v))
	}
	return "Dendrite " + DendriteVersion
}

// RemoveHomeserverData deletes a stopped Synapse's files, which live in the
// shared root file system rather than under StateDir (nothing for Dendrite,
// whose files are under StateDir).
func (s *Stack) RemoveHomeserverData() error {
	if s.Opts.Homeserver != "synapse" {
		return nil
	}
	host, _ := s.synapseData()
	return os.RemoveAll(host)
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key,
// unless they exist.
func selfSigned(certFile, keyFile string) error {
	if _, err := os.Stat(certFile); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := config.WriteFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return config.WriteFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
