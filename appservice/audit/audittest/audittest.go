// Package audittest gives tests real audit destinations: a throwaway PKI
// and Debian's rsyslogd receiving RFC 5425 syslog over TLS on loopback.
package audittest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// PKI is a throwaway CA with a server certificate (localhost, 127.0.0.1)
// and a client certificate, written as PEM files under Dir.
type PKI struct {
	Dir             string
	Pool            *x509.CertPool // trusts the CA
	Client          tls.Certificate
	CAFile, SrvCert string
	SrvKey          string
	ClientCert      string // PEM files of Client
	ClientKey       string
	caKey           *ecdsa.PrivateKey
	caCert          *x509.Certificate
}

func NewPKI(t testing.TB, dir string) *PKI {
	t.Helper()
	p := &PKI{Dir: dir, Pool: x509.NewCertPool()}
	var err error
	p.caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test audit CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, _ = x509.ParseCertificate(der)
	p.Pool.AddCert(p.caCert)
	p.CAFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", der)
	srvDER, srvKey := p.issue(t, "localhost", x509.ExtKeyUsageServerAuth, 2)
	p.SrvCert = writePEM(t, dir, "server.pem", "CERTIFICATE", srvDER)
	kb, _ := x509.MarshalECPrivateKey(srvKey)
	p.SrvKey = writePEM(t, dir, "server.key", "EC PRIVATE KEY", kb)
	cliDER, cliKey := p.issue(t, "matrix-hipaa", x509.ExtKeyUsageClientAuth, 3)
	p.Client = tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}
	p.ClientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", cliDER)
	ckb, _ := x509.MarshalECPrivateKey(cliKey)
	p.ClientKey = writePEM(t, dir, "client.key", "EC PRIVATE KEY", ckb)
	return p
}

func (p *PKI) issue(t testing.TB, cn string, usage x509.ExtKeyUsage, serial int64) ([]byte, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Rsyslog is Debian's rsyslogd listening for RFC 5425 syslog over TLS on
// loopback, requiring a client certificate from the test CA, writing each
// message it receives, as received, to one file.
type Rsyslog struct {
	// Out is the file it writes each message to, as received.
	Out  string
	t    testing.TB
	dir  string
	port int
	cmd  *exec.Cmd
}

// Address is where it listens.
func (r *Rsyslog) Address() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

func rsyslogd() string {
	if p := os.Getenv("MATRIX_HIPAA_TEST_RSYSLOGD"); p != "" {
		return p
	}
	return "/usr/sbin/rsyslogd"
}

func StartRsyslog(t testing.TB, pki *PKI, port int) *Rsyslog {
	t.Helper()
	if _, err := os.Stat(rsyslogd()); err != nil {
		t.Fatalf("rsyslogd is needed (apt-get install rsyslog rsyslog-gnutls): %v", err)
	}
	r := &Rsyslog{t: t, dir: pki.Dir, port: port, Out: filepath.Join(pki.Dir, "received.log")}
	os.MkdirAll(filepath.Join(r.dir, "work"), 0o700)
	conf := fmt.Sprintf(`global(workDirectory="%[1]s/work"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="%[2]s"
  defaultNetstreamDriverCertFile="%[3]s"
  defaultNetstreamDriverKeyFile="%[4]s"
  maxMessageSize="64k")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" port="%[5]d" address="127.0.0.1")
template(name="raw" type="string" string="%%rawmsg%%\n")
action(type="omfile" file="%[6]s" template="raw")
`, r.dir, pki.CAFile, pki.SrvCert, pki.SrvKey, port, r.Out)
	confFile := filepath.Join(r.dir, "rsyslog.conf")
	os.WriteFile(confFile, []byte(conf), 0o600)
	r.cmd = exec.Command(rsyslogd(), "-n", "-f", confFile, "-i", filepath.Join(r.dir, "rsyslog.pid"))
	var stderr bytes.Buffer
	r.cmd.Stdout, r.cmd.Stderr = &stderr, &stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			r.cmd.Process.Kill()
			t.Fatalf("rsyslogd did not listen: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(r.Stop)
	return r
}

func (r *Rsyslog) Stop() {
	if r.cmd == nil || r.cmd.ProcessState != nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}

var SyslogLine = regexp.MustCompile(`^<(\d+)>1 (\S+) (\S+) matrix-hipaa (\d+) (\S+) \[matrixhipaa@32473 seq="(\d+)"(?:[^\]\\]|\\.)*\] (\{.*\})$`)

// Received parses what rsyslog wrote: the seq of each message, in order.
func (r *Rsyslog) Received(t testing.TB) ([]int64, []string) {
	t.Helper()
	data, err := os.ReadFile(r.Out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var seqs []int64
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := SyslogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("rsyslog received a malformed message: %q", sc.Text())
		}
		n, _ := strconv.ParseInt(m[6], 10, 64)
		seqs = append(seqs, n)
		lines = append(lines, sc.Text())
	}
	return seqs, lines
}

func FreePort(t testing.TB) int {
	port, err := devstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// ServerPair issues another server certificate (localhost, 127.0.0.1) from
// the CA, with the given serial, and writes it and its key as PEM files.
func (p *PKI) ServerPair(t testing.TB, name string, serial int64) (cert, key string) {
	t.Helper()
	der, k := p.issue(t, "localhost", x509.ExtKeyUsageServerAuth, serial)
	kb, _ := x509.MarshalECPrivateKey(k)
	return writePEM(t, p.Dir, name+".pem", "CERTIFICATE", der), writePEM(t, p.Dir, name+".key", "EC PRIVATE KEY", kb)
}
