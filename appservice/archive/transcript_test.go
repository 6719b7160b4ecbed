package archive

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/testkit"
)

// chromium runs Debian's headless Chromium (testkit.Chromium) and returns
// what it printed.
func chromium(t *testing.T, url string, args ...string) []byte {
	out, _ := testkit.Chromium(t, url, args...)
	return out
}

// A transcript as Chromium shows it: the messages' text, hostile markup
// included, is text; the image is drawn; a file that claims to be an
// image but is not (an SVG with a script) is not embedded; no script is
// in the page, and its policy would block one.
func TestTranscriptInChromium(t *testing.T) {
	dir := t.TempDir()
	var img bytes.Buffer
	m := image.NewRGBA(image.Rect(0, 0, 48, 48))
	for i := 0; i < len(m.Pix); i += 4 {
		m.Pix[i], m.Pix[i+1], m.Pix[i+2], m.Pix[i+3] = 255, 0, 255, 255 // magenta
	}
	if err := png.Encode(&img, m); err != nil {
		t.Fatal(err)
	}
	svg := []byte(`<svg xmlns="http://www.w3.org/2000/svg" onload="document.title='pwned'"><script>document.title='pwned'</script></svg>`)
	files := map[string]string{}
	for rel, data := range map[string][]byte{"attachments/a-scan.png": img.Bytes(), "attachments/b-chart.png": svg} {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		files[rel] = path
	}
	hostile := `<script>document.title='pwned'</script><img src=x onerror="document.title='pwned'">`
	lines := []Line{
		{Time: "2026-12-01T08:00:00.000Z", Kind: "message", EventID: "$1", Sender: "@ann:h", Body: "Bed 4: K+ 6.1\nrepeat BMP", Members: []string{"@ann:h", "@bo:h"}},
		{Time: "2026-12-01T08:01:00.000Z", Kind: "message", EventID: "$2", Sender: "@bo:h", Body: hostile, Members: []string{"@ann:h", "@bo:h"}},
		{Time: "2026-12-01T08:02:00.000Z", Kind: "message", EventID: "$3", Sender: "@ann:h", Body: "scan.png",
			Attachments: []Attachment{{Name: "scan.png", File: "attachments/a-scan.png", MimeType: "image/png", Size: img.Len()}}},
		{Time: "2026-12-01T08:03:00.000Z", Kind: "message", EventID: "$4", Sender: "@bo:h", Body: "chart.png",
			Attachments: []Attachment{{Name: "chart.png", File: "attachments/b-chart.png", MimeType: "image/png", Size: len(svg)}}},
		{Time: "2026-12-01T08:04:00.000Z", Kind: "redaction", EventID: "$5", Sender: "@hipaa:h", Redacts: "$1", ByService: true},
	}
	html, err := transcript("!ward:h", lines, []Missing{{Time: "2026-12-01T08:05:00.000Z", EventID: "$6", Sender: "@cy:h", Reason: "withheld:m.unverified"}}, files)
	if err != nil {
		t.Fatal(err)
	}
	page := filepath.Join(dir, "transcripts", "ward.html")
	os.MkdirAll(filepath.Dir(page), 0o700)
	if err := os.WriteFile(page, html, 0o600); err != nil {
		t.Fatal(err)
	}
	url := "file://" + page

	dom := string(chromium(t, url, "--dump-dom", "--virtual-time-budget=2000"))
	for _, want := range []string{"Transcript of !ward:h", "Bed 4: K+ 6.1", "&lt;script&gt;document.title='pwned'&lt;/script&gt;", "Removed by the compliance service",
		"withheld:m.unverified", `<a href="../attachments/b-chart.png">chart.png</a>`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if strings.Contains(dom, "<script") || strings.Contains(dom, "pwned</title>") || strings.Count(dom, "<img") != 1 || !strings.Contains(dom, `<img src="data:image/png;base64,`) {
		t.Fatalf("the rendered page has a script, a changed title, or not exactly the one real image:\n%s", dom)
	}
	if !strings.Contains(dom, "default-src 'none'") {
		t.Fatalf("the page has no Content-Security-Policy")
	}

	shot := filepath.Join(t.TempDir(), "shot.png")
	chromium(t, url, "--screenshot="+shot, "--window-size=1000,1400", "--force-device-scale-factor=1")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	magenta := 0
	b := got.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := color.RGBAModel.Convert(got.At(x, y)).RGBA()
			if r>>8 > 230 && g>>8 < 30 && bl>>8 > 230 {
				magenta++
			}
		}
	}
	if magenta < 48*48*9/10 {
		t.Fatalf("the image is not drawn: %d magenta pixels in the screenshot, want about %d", magenta, 48*48)
	}
}
