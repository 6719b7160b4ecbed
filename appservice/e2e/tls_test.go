package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Dendrite pushes to the service over HTTPS (its registration url is
// https://, the service serves the configured certificate, Dendrite checks it
// against the test CA): every event arrives and is audited once.
func TestHomeserverPushesOverTLS(t *testing.T) {
	pki := audittest.NewPKI(t, t.TempDir())
	token := strings.Repeat("t", 40)
	st := startStack(t, devstack.Options{TLS: &devstack.TLSFiles{CertFile: pki.SrvCert, KeyFile: pki.SrvKey, CAFile: pki.CAFile}, AdminToken: token})
	ctx := context.Background()
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	var sent []id.EventID
	for i := 0; i < 5; i++ {
		resp, err := alice.SendText(ctx, room.RoomID, fmt.Sprintf("over tls %d", i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	for id, n := range waitAudited(t, st, sent, time.Minute) {
		if n != 1 {
			t.Errorf("%s audited %d times", id, n)
		}
	}
	if out := verify(t, st); !strings.HasPrefix(out, "OK: ") {
		t.Fatalf("verify: %s", out)
	}
	// The admin API serves the same certificate.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/_hipaa/admin/v1/rooms", st.Opts.AdminPort), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Hipaa-Actor", "records office")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("admin API over HTTPS: %d", resp.StatusCode)
	}
}
