// Package compliancetest checks a compliance report as people see it: the
// HTML page in Debian's headless Chromium.
package compliancetest

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

// CheckInChromium renders the HTML report at path in headless Chromium and
// fails t unless: the page logged nothing to its console (no script, nothing
// fetched), has no script and its Content-Security-Policy, draws its three
// charts, lists findings rows, and its screenshot shows the charts'
// colours (encrypted rooms green, findings by severity in their colours,
// and the plaintext red where there were plaintext findings).
func CheckInChromium(t testing.TB, path string, findings int) {
	t.Helper()
	r := testkit.RenderPage(t, path, 1100, 1400)
	if len(r.Console) > 0 {
		t.Errorf("the report logged to the console:\n%s", bytes.Join(r.Console, []byte("\n")))
	}
	for _, id := range []string{"chart-days", "chart-rooms", "chart-findings"} {
		fig := regexp.MustCompile(`(?s)<figure id="` + id + `"><svg .*?</svg>`).Find(r.DOM)
		if fig == nil || !bytes.Contains(fig, []byte(`class="bar"`)) {
			t.Errorf("chart %s is not drawn: %.300s", id, fig)
		}
	}
	if n := strings.Count(string(r.DOM), "<tr><td>"); n != findings {
		t.Errorf("%d finding rows, want %d", n, findings)
	}
	if bytes.Contains(r.DOM, []byte("<script")) || !bytes.Contains(r.DOM, []byte("default-src 'none'")) {
		t.Errorf("the page has a script or no Content-Security-Policy")
	}
	if b := r.Shot.Bounds(); b.Dx() != 1100 || b.Dy() != 1400 {
		t.Errorf("screenshot %v", b)
	}
	// Plaintext (red) in the days chart and rooms not encrypted; encrypted
	// rooms (green); sessions ended (blue); the critical finding's bar.
	for name, c := range map[string][3]uint32{"plaintext": {0xd9, 0x53, 0x4f}, "encrypted": {0x3c, 0x9a, 0x5f}, "critical": {0xaa, 0, 0}} {
		if n := testkit.Pixels(r.Shot, c); n < 100 {
			t.Errorf("the screenshot has %d pixels of the %s colour: its chart is not drawn", n, name)
		}
	}
}
