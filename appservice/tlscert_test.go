package appservice

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// With a certificate configured the service speaks only HTTPS, and a renewed
// certificate is served to new connections without a restart; a broken
// renewal keeps the last good one.
func TestListenTLSAndRenewal(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	pki := audittest.NewPKI(t, t.TempDir())
	certPath, keyPath := filepath.Join(pki.Dir, "live.pem"), filepath.Join(pki.Dir, "live.key")
	install := func(cert, key string, at time.Time) {
		for from, to := range map[string]string{cert: certPath, key: keyPath} {
			b, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			tmp := to + ".new"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(tmp, at, at)
			if err := os.Rename(tmp, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(pki.SrvCert, pki.SrvKey, time.Now().Add(-time.Minute))
	var logs bytes.Buffer
	s := &Service{Config: &config.Config{AppService: config.AppService{Listen: "127.0.0.1:0", TLSCertFile: certPath, TLSKeyFile: keyPath}}, Log: zerolog.New(&logs)}
	ln, err := s.listen()
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p.server}
	go srv.Serve(ln)
	defer srv.Close()
	url := "https://" + ln.Addr().String() + "/_matrix/app/v1/transactions/"

	// put sends one transaction on a fresh connection and returns the status
	// and the serial of the certificate the service showed.
	put := func(txn string) (int, int64) {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}, DisableKeepAlives: true}}
		req, _ := http.NewRequest(http.MethodPut, url+txn, bytes.NewReader(txnBodyOf(msgEvent("$"+txn, "!r:hs", "@u:hs", "x"))))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if code, serial := put("t1"); code != 200 || serial != 2 {
		t.Fatalf("over TLS: status %d, certificate serial %d (want 200, 2)", code, serial)
	}
	// Plain HTTP gets nowhere near the inbox.
	resp, err := http.Post(strings.Replace(url, "https://", "http://", 1)+"plain", "application/json", strings.NewReader(`{"events":[]}`))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP was answered 200")
		}
	}

	renewedCert, renewedKey := pki.ServerPair(t, "renewed", 7)
	install(renewedCert, renewedKey, time.Now())
	if code, serial := put("t2"); code != 200 || serial != 7 {
		t.Fatalf("after renewal: status %d, serial %d (want 200, 7)", code, serial)
	}
	if !strings.Contains(logs.String(), "loaded the renewed TLS certificate") {
		t.Errorf("renewal not logged: %s", logs.String())
	}
	// A broken renewal (say, the key not yet written) keeps serving serial 7.
	if err := os.WriteFile(certPath, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(certPath, later, later)
	if code, serial := put("t3"); code != 200 || serial != 7 {
		t.Fatalf("after a broken renewal: status %d, serial %d (want 200, 7)", code, serial)
	}
	if !strings.Contains(logs.String(), "could not load the renewed TLS certificate; still serving the previous one") {
		t.Errorf("broken renewal not logged: %s", logs.String())
	}
	if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 3 {
		t.Fatalf("%d events stored, want 3 (t1, t2, t3; nothing from plain HTTP)", n)
	}
}
