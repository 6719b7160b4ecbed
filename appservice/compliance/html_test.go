package compliance

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/compliance/compliancetest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

// The HTML report in Debian's headless Chromium: it renders with its three
// charts and every finding, the screenshot shows the charts' colours, and
// the page logs nothing to the console (no script, nothing fetched). The
// console check itself is shown to catch a page that does log.
func TestHTMLReportInChromium(t *testing.T) {
	s := seed(t, "sqlite3", 150*time.Millisecond, "version: 1\ntraining: on\n")
	rep, err := Gather(context.Background(), s.in)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rep.Write(&buf, "html"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if d := os.Getenv("REPORT_SHOT_DIR"); d != "" {
		dir = d
	}
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	compliancetest.CheckInChromium(t, page, len(rep.Findings))
	// Sessions ended by policy (blue) in the days chart.
	if n := testkit.Pixels(testkit.RenderPage(t, page, 1100, 1400).Shot, [3]uint32{0x5b, 0x8f, 0xd9}); n < 100 {
		t.Errorf("the screenshot has %d pixels of the sign-outs' colour", n)
	}

	// The check can fail: a page that logs, however it does, is caught.
	bad := filepath.Join(t.TempDir(), "bad.html")
	os.WriteFile(bad, []byte(`<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src 'none'"><p>x<script>1</script>`), 0o600)
	if r := testkit.RenderPage(t, bad, 200, 200); len(r.Console) == 0 {
		t.Fatalf("a blocked script logged nothing the console check sees")
	}
}
