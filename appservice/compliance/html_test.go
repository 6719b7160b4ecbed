package compliance

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

// consoleLines are what Chromium logged from the page's console (errors
// included: a blocked script, a blocked fetch, a thrown exception).
var consoleLines = regexp.MustCompile(`(?m)^.*:CONSOLE[:(].*$`)

// The HTML report in Debian's headless Chromium: it renders with its three
// charts and every finding, the screenshot shows the charts' colours, and
// the page logs nothing to the console (no script, nothing fetched). The
// console check itself is shown to catch a page that does log.
func TestHTMLReportInChromium(t *testing.T) {
	s := seed(t, "sqlite3", 150*time.Millisecond, "version: 1\n")
	rep, err := Gather(context.Background(), s.in)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rep.Write(&buf, "html"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	dom, logged := testkit.Chromium(t, "file://"+page, "--dump-dom", "--virtual-time-budget=2000")
	if lines := consoleLines.FindAll(logged, -1); len(lines) > 0 {
		t.Errorf("the report logged to the console:\n%s", bytes.Join(lines, []byte("\n")))
	}
	for _, id := range []string{"chart-days", "chart-rooms", "chart-findings"} {
		fig := regexp.MustCompile(`(?s)<figure id="` + id + `"><svg .*?</svg>`).Find(dom)
		if fig == nil || !bytes.Contains(fig, []byte(`class="bar"`)) {
			t.Errorf("chart %s is not drawn: %.300s", id, fig)
		}
	}
	if n := strings.Count(string(dom), "<tr><td>"); n != len(rep.Findings) {
		t.Errorf("%d finding rows, want %d", n, len(rep.Findings))
	}
	if bytes.Contains(dom, []byte("<script")) || !bytes.Contains(dom, []byte("default-src 'none'")) {
		t.Errorf("the page has a script or no Content-Security-Policy")
	}

	shot := filepath.Join(dir, "report.png")
	if d := os.Getenv("REPORT_SHOT_DIR"); d != "" {
		shot = filepath.Join(d, "report.png")
		os.WriteFile(filepath.Join(d, "report.html"), buf.Bytes(), 0o600)
	}
	testkit.Chromium(t, "file://"+page, "--screenshot="+shot, "--window-size=1100,1400", "--force-device-scale-factor=1")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// The charts' colours: plaintext (red), encrypted rooms (green),
	// sessions ended (blue), and the critical finding's bar.
	for name, c := range map[string][3]uint32{"plaintext": {0xd9, 0x53, 0x4f}, "encrypted": {0x3c, 0x9a, 0x5f}, "signouts": {0x5b, 0x8f, 0xd9}, "critical": {0xaa, 0, 0}} {
		if n := pixels(img, c); n < 100 {
			t.Errorf("the screenshot has %d pixels of the %s colour: its chart is not drawn", n, name)
		}
	}
	if b := img.Bounds(); b.Dx() != 1100 || b.Dy() != 1400 {
		t.Errorf("screenshot %v", b)
	}

	// The check can fail: a page that logs, however it does, is caught.
	bad := filepath.Join(dir, "bad.html")
	os.WriteFile(bad, []byte(`<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src 'none'"><p>x<script>1</script>`), 0o600)
	if _, logged := testkit.Chromium(t, "file://"+bad, "--dump-dom", "--virtual-time-budget=2000"); consoleLines.Find(logged) == nil {
		t.Fatalf("a blocked script logged nothing Chromium's console check sees:\n%s", logged)
	}
}

// pixels counts the pixels within a few levels of c.
func pixels(img image.Image, c [3]uint32) int {
	n := 0
	b := img.Bounds()
	near := func(a, b uint32) bool { return a+6 >= b && b+6 >= a }
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, c[0]) && near(g>>8, c[1]) && near(bl>>8, c[2]) {
				n++
			}
		}
	}
	return n
}
