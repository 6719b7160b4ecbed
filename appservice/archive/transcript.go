package archive

import (
	"bytes"
	"encoding/base64"
	"html/template"
	"net/http"
	"os"
)

// transcriptCSP lets the page show its own styles and the images embedded
// in it, and nothing else: no script runs, nothing is fetched.
const transcriptCSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

var transcriptPage = template.Must(template.New("t").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{.CSP}}">
<title>Transcript of {{.Room}}</title>
<style>
body{font-family:sans-serif;max-width:60em;margin:1em auto;color:#111}
.m{border-bottom:1px solid #ddd;padding:.4em 0}
.meta{color:#555;font-size:.85em}
.body{white-space:pre-wrap}
.redacted{color:#900}
.edit{color:#036}
.missing{color:#a60}
img{max-width:24em;display:block;margin:.3em 0}
</style></head><body>
<h1>Transcript of {{.Room}}</h1>
<p class="meta">From the matrix-hipaa archive. Times are UTC. Each message lists who was in the room when it was sent.</p>
{{range .Lines}}<div class="m" id="{{.EventID}}">
<div class="meta">{{.Time}} · {{.Sender}} · {{.EventID}}{{if .Encrypted}} · encrypted{{end}}</div>
{{if eq .Kind "redaction"}}<div class="redacted">{{if .ByService}}Removed by the compliance service{{else}}Redacted by {{.Sender}}{{end}}: <a href="#{{.Redacts}}">{{.Redacts}}</a>{{if .Reason}} (reason: {{.Reason}}){{end}}</div>
{{else}}{{if eq .Kind "edit"}}<div class="edit">Edit of <a href="#{{.EditOf}}">{{.EditOf}}</a>:</div>{{end}}
<div class="body">{{.Body}}</div>
{{range .Attachments}}{{if .Missing}}<div class="missing">Attachment {{.Name}}: not in the archive ({{.Missing}})</div>
{{else}}{{with index $.Images .File}}<img src="{{.}}" alt="">{{end}}<div class="meta">Attachment <a href="../{{.File}}">{{.Name}}</a> · {{.Size}} bytes · SHA-256 {{.SHA256}}</div>
{{end}}{{end}}{{if .EditedBy}}<div class="edit">Edited later: {{range .EditedBy}}<a href="#{{.}}">{{.}}</a> {{end}}</div>{{end}}
{{if .RedactedBy}}<div class="redacted">Later redacted: <a href="#{{.RedactedBy}}">{{.RedactedBy}}</a></div>{{end}}
{{end}}<div class="meta">Members: {{range .Members}}{{.}} {{end}}</div>
</div>
{{end}}{{if .Missing}}<h2>Messages the archive could not read</h2>
<ul>{{range .Missing}}<li>{{.Time}} · {{.Sender}} · {{.EventID}}: {{.Reason}}</li>
{{end}}</ul>{{end}}
</body></html>
`))

// transcript renders one room's lines as a page people can read: escaped
// throughout, images (sniffed as raster images, whatever their message
// claims) embedded, no script.
func transcript(room string, lines []Line, missing []Missing, files map[string]string) ([]byte, error) {
	images := map[string]template.URL{}
	for rel, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		switch ct := http.DetectContentType(data); ct {
		case "image/png", "image/jpeg", "image/gif", "image/webp":
			images[rel] = template.URL("data:" + ct + ";base64," + base64.StdEncoding.EncodeToString(data))
		}
	}
	var b bytes.Buffer
	err := transcriptPage.Execute(&b, map[string]any{"CSP": transcriptCSP, "Room": room, "Lines": lines, "Missing": missing, "Images": images})
	return b.Bytes(), err
}
