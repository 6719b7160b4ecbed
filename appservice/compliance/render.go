package compliance

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"
)

// Formats are the report's formats.
var Formats = []string{"md", "json", "html"}

// Write renders the report in format (md, json or html).
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "md":
		return r.markdown(w)
	case "html":
		return page.Execute(w, r)
	}
	return fmt.Errorf("unknown format %q (md, json or html)", format)
}

// mdCell keeps a value inside its Markdown table cell.
func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}

func (r *Report) markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# HIPAA compliance report\n\n")
	fmt.Fprintf(&b, "Period %s to %s; generated %s. Counts only: no names, messages or pseudonyms.\n\n",
		r.Since.Format(time.RFC3339), r.Until.Format(time.RFC3339), r.Generated.Format(time.RFC3339))
	fmt.Fprintf(&b, "## Findings, most urgent first\n\n")
	if len(r.Findings) == 0 {
		b.WriteString("None.\n\n")
	} else {
		b.WriteString("| # | Severity | Finding | Count | Section | What to do |\n|---|---|---|---|---|---|\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "| %d | %s | %s | %d | §%s | %s |\n", f.Rank, f.Severity, mdCell(f.Title), f.Count, f.Section, mdCell(f.Fix))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "## Safeguards\n\n")
	for _, s := range r.Safeguards {
		fmt.Fprintf(&b, "### §%s %s: %s\n\n", s.Section, s.Name, s.Status)
		b.WriteString("| Evidence | Value |\n|---|---|\n")
		for _, it := range s.Evidence {
			fmt.Fprintf(&b, "| %s | %s |\n", mdCell(it.Label), mdCell(it.Value))
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// The charts are drawn here, as SVG: numbers and fixed labels only, no
// script, nothing fetched.
var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"time":         func(t time.Time) string { return t.Format(time.RFC3339) },
	"dailyChart":   dailyChart,
	"roomsChart":   roomsChart,
	"severityBars": severityBars,
	"code":         code,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<title>HIPAA compliance report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:62em;color:#222;padding:0 1em}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.critical{color:#a00;font-weight:bold}.high{color:#c50}.medium{color:#875}.low{color:#567}
.attention{color:#c50;font-weight:bold}.evidenced{color:#070}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}figcaption{font-size:.9em;color:#555}
</style>
</head>
<body>
<h1>HIPAA compliance report</h1>
<p>Period {{time .Since}} to {{time .Until}}; generated {{time .Generated}}. Counts only: no names, messages or pseudonyms.</p>
<div class="charts">
<figure id="chart-days">{{dailyChart .Evidence.Days}}<figcaption>Per day: plaintext redacted, members refused, sessions ended by policy</figcaption></figure>
<figure id="chart-rooms">{{roomsChart .Evidence.Rooms}}<figcaption>Rooms: encrypted, required and not encrypted, other</figcaption></figure>
<figure id="chart-findings">{{severityBars .Findings}}<figcaption>Findings by severity</figcaption></figure>
</div>
<h2>Findings, most urgent first</h2>
{{if .Findings}}<table id="findings">
<tr><th>#</th><th>Severity</th><th>Finding</th><th>Count</th><th>Section</th><th>What to do</th></tr>
{{range .Findings}}<tr><td>{{.Rank}}</td><td class="{{.Severity}}">{{.Severity}}</td><td>{{.Title}}</td><td>{{.Count}}</td><td>§{{.Section}}</td><td>{{code .Fix}}</td></tr>
{{end}}</table>{{else}}<p>None.</p>{{end}}
<h2>Safeguards</h2>
{{range .Safeguards}}<h3>§{{.Section}} {{.Name}}: <span class="{{.Status}}">{{.Status}}</span></h3>
<table>
{{range .Evidence}}<tr><th>{{.Label}}</th><td>{{.Value}}</td></tr>
{{end}}</table>
{{end}}
</body>
</html>
`))

// code escapes s and sets what it quotes in backticks (commands, files)
// as code.
func code(s string) template.HTML {
	parts := strings.Split(s, "`")
	var b strings.Builder
	for i, p := range parts {
		if i%2 == 1 && i < len(parts)-1 {
			b.WriteString("<code>" + template.HTMLEscapeString(p) + "</code>")
			continue
		}
		if i%2 == 1 {
			b.WriteString("`")
		}
		b.WriteString(template.HTMLEscapeString(p))
	}
	return template.HTML(b.String())
}

const (
	chartW, chartH = 420, 180
	colPlain       = "#d9534f"
	colRefused     = "#f0ad4e"
	colSignout     = "#5b8fd9"
	colOK          = "#3c9a5f"
)

// dailyChart is a grouped bar chart of the period's days.
func dailyChart(days []DayCounts) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="per day counts">`, chartW, chartH, chartW, chartH)
	var top int64 = 1
	for _, d := range days {
		top = max(top, d.Plaintext, d.Refused, d.Signouts)
	}
	plotH := float64(chartH - 30)
	slot := float64(chartW-40) / float64(max(len(days), 1))
	bar := max(slot/4, 1)
	fmt.Fprintf(&b, `<line x1="35" y1="%.0f" x2="%d" y2="%.0f" stroke="#888"/>`, plotH+5, chartW, plotH+5)
	fmt.Fprintf(&b, `<text x="0" y="15" font-size="11">%d</text><text x="0" y="%.0f" font-size="11">0</text>`, top, plotH+5)
	for i, d := range days {
		x := 40 + float64(i)*slot
		for j, s := range []struct {
			v   int64
			col string
		}{{d.Plaintext, colPlain}, {d.Refused, colRefused}, {d.Signouts, colSignout}} {
			h := plotH * float64(s.v) / float64(top)
			fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x+float64(j)*bar, plotH+5-h, bar, h, s.col)
		}
	}
	if len(days) > 0 {
		fmt.Fprintf(&b, `<text x="40" y="%d" font-size="11">%s</text>`, chartH-5, template.HTMLEscapeString(days[0].Date))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>`, chartW, chartH-5, template.HTMLEscapeString(days[len(days)-1].Date))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// roomsChart is one stacked bar of the rooms.
func roomsChart(r Rooms) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="70" viewBox="0 0 %d 70" role="img" aria-label="rooms">`, chartW, chartW)
	total := max(r.Known, 1)
	x := 0.0
	for _, s := range []struct {
		n    int
		col  string
		name string
	}{{r.Encrypted, colOK, "encrypted"}, {r.Unencrypted, colPlain, "not encrypted"}, {r.Known - r.Encrypted - r.Unencrypted, "#bbb", "other"}} {
		if s.n <= 0 {
			continue
		}
		w := float64(chartW) * float64(s.n) / float64(total)
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="5" width="%.1f" height="35" fill="%s"/>`, x, w, s.col)
		fmt.Fprintf(&b, `<text x="%.1f" y="58" font-size="11">%s %d</text>`, x+2, s.name, s.n)
		x += w
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// severityBars is a bar per severity: how many findings of it.
func severityBars(fs []Finding) template.HTML {
	count := map[string]int{}
	for _, f := range fs {
		count[f.Severity]++
	}
	top := 1
	for _, c := range count {
		top = max(top, c)
	}
	cols := map[string]string{"critical": "#a00", "high": "#c50", "medium": "#c9a227", "low": "#789"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="110" viewBox="0 0 %d 110" role="img" aria-label="findings by severity">`, chartW, chartW)
	for i, s := range Severities {
		y := 5 + i*26
		w := float64(chartW-130) * float64(count[s]) / float64(top)
		fmt.Fprintf(&b, `<text x="0" y="%d" font-size="12">%s</text>`, y+15, s)
		fmt.Fprintf(&b, `<rect class="bar" x="70" y="%d" width="%.1f" height="20" fill="%s"/>`, y, w, cols[s])
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="12">%d</text>`, 75+w, y+15, count[s])
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
