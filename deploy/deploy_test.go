// Package deploy_test checks the operations files under deploy/ with the real
// tools that will read them: Prometheus's promtool for the alert rules and the
// service's metrics, systemd's own analyzers for the units, and the service's
// metric registry for every name the rules and the dashboard use.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
)

// tool finds a command the test needs; CI installs them (see .ci/run).
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed (apt-get install %s): %v", name, pkg, err)
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	run(t, "prometheus", promtool, "check", "rules", "alerts.yml")
	out := run(t, "prometheus", promtool, "test", "rules", "alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// serviceMetrics are the names the service exposes, read from its collectors'
// descriptions, with the series names a histogram adds.
func serviceMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := describer{}
	appservice.NewMetrics(names)
	names.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if len(names) < 10 {
		t.Fatalf("only %d metric names found: %v", len(names), names)
	}
	return names
}

// describer is a Registerer that only notes the names of what registers.
type describer map[string]bool

var fqName = regexp.MustCompile(`fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)

func (d describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d[m[1]] = true
		}
	}
	return nil
}

func (d describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		d.Register(c)
	}
}

func (d describer) Unregister(prometheus.Collector) bool { return false }

var hipaaName = regexp.MustCompile(`\bhipaa_[a-z0-9_]+`)

// unknownNames are the hipaa_ names in text that the service does not expose.
func unknownNames(text string, known map[string]bool) []string {
	var bad []string
	for _, n := range hipaaName.FindAllString(text, -1) {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && known[b] {
				base = b
			}
		}
		if !known[base] {
			bad = append(bad, n)
		}
	}
	sort.Strings(bad)
	return bad
}

// The rules and the dashboard must not drift from the code: a renamed metric
// would leave an alert that can never fire.
func TestMonitoringUsesRealMetrics(t *testing.T) {
	known := serviceMetrics(t)
	rules, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile("grafana/matrix-hipaa.json")
	if err != nil {
		t.Fatal(err)
	}
	if bad := unknownNames(string(rules), known); len(bad) > 0 {
		t.Errorf("alerts.yml uses metrics the service does not expose: %v", bad)
	}
	var d struct {
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct {
				H, W, X, Y int
			} `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	// Grafana lays panels on a 24-column grid: IDs unique, none overlapping.
	ids := map[int]bool{}
	for i, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q lies off the grid: %+v", p.Title, g)
		}
		for _, q := range d.Panels[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", q.Title, p.Title)
			}
		}
	}
	exprs := 0
	used := map[string]bool{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs++
			if bad := unknownNames(tg.Expr, known); len(bad) > 0 {
				t.Errorf("dashboard panel %q uses metrics the service does not expose: %v", p.Title, bad)
			}
			for _, n := range hipaaName.FindAllString(tg.Expr, -1) {
				used[strings.TrimSuffix(n, "_bucket")] = true
			}
		}
	}
	if exprs == 0 {
		t.Fatal("dashboard has no queries")
	}
	// Every hipaa_ metric is on the dashboard somewhere.
	for n := range known {
		if strings.HasPrefix(n, "hipaa_") && !used[n] {
			t.Errorf("metric %s is on no dashboard panel", n)
		}
	}
}

// promtool's linter reads the service's real /metrics output: names, units,
// help and types follow Prometheus's conventions.
func TestMetricsExpositionLint(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	reg := prometheus.NewRegistry()
	m := appservice.NewMetrics(reg)
	// Vectors show only once they have a child.
	m.Transactions.WithLabelValues("ok").Inc()
	m.Events.WithLabelValues("message", "new").Inc()
	m.JobsByState.WithLabelValues("pending").Set(1)
	m.JobRuns.WithLabelValues("redact", "success").Inc()
	m.Rooms.WithLabelValues("known").Set(1)
	m.ExportDone.WithLabelValues("jsonl").Inc()
	m.ExportFailures.WithLabelValues("jsonl").Inc()
	m.ExportLag.WithLabelValues("jsonl").Set(1)
	m.AuthFailures.WithLabelValues("wrong").Inc()
	m.TxnDuration.Observe(0.001)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.Bytes()
	if !bytes.Contains(body, []byte("hipaa_auth_failures_total")) {
		t.Fatalf("exposition lacks the metrics:\n%s", body)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// The units are read by systemd's own verifier (with ExecStart pointed at a
// freshly built binary, which it requires to exist) and scored by its
// security analyzer; the sysusers entry is applied to a scratch root.
func TestSystemdUnits(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	bin := buildService(t, dir)
	units := []string{"matrix-hipaa.service", "matrix-hipaa-verify.service", "matrix-hipaa-backup.service", "matrix-hipaa-verify.timer", "matrix-hipaa-backup.timer"}
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(u, ".service") && !bytes.Contains(b, []byte("ExecStart=/usr/local/bin/matrix-hipaa ")) {
			t.Fatalf("%s: ExecStart is not /usr/local/bin/matrix-hipaa", u)
		}
		// Documentation= points at docs/ as docs/deploy.md installs it.
		for _, m := range regexp.MustCompile(`file:/usr/share/doc/matrix-hipaa/(\S+)`).FindAllSubmatch(b, -1) {
			if _, err := os.Stat(filepath.Join("..", "docs", string(m[1]))); err != nil {
				t.Errorf("%s: Documentation names %s, which docs/ lacks", u, m[1])
			}
		}
		if bytes.Contains(b, []byte("man:")) {
			t.Errorf("%s: names a man page; there is none", u)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/matrix-hipaa"), []byte(bin))
		if err := os.WriteFile(filepath.Join(dir, u), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		// Warnings (unknown keys, bad values) go to the output with exit 0.
		if out := run(t, dir, analyze, "verify", "--man=no", "./"+u); strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s:\n%s", u, out)
		}
	}
	for _, u := range units[:3] {
		out := run(t, dir, analyze, "security", "--offline=yes", "--no-pager", "--threshold=20", "./"+u)
		if !strings.Contains(out, "Overall exposure level for "+u) {
			t.Fatalf("no score for %s:\n%s", u, out)
		}
		score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
		if score == nil {
			t.Fatalf("no score for %s:\n%s", u, out)
		}
		if v, err := strconv.ParseFloat(score[1], 64); err != nil || v > 2.0 {
			t.Errorf("%s exposure %v, want at most 2.0:\n%s", u, score, out)
		}
	}
	// The command lines the units run are ones the binary accepts.
	for _, args := range [][]string{{"run", "-config", "/nonexistent/config.yaml"}, {"audit", "verify", "-config", "/nonexistent/config.yaml"},
		{"backup", "-config", "/nonexistent/config.yaml", "-dir", "/nonexistent", "-keep", "7"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "/nonexistent/config.yaml") {
			t.Errorf("matrix-hipaa %v: %v, %s (want a complaint about the missing config)", args, err, out)
		}
	}
	sysusers := tool(t, "systemd-sysusers", "systemd")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	abs, _ := filepath.Abs("systemd/matrix-hipaa.sysusers")
	run(t, ".", sysusers, "--root="+root, abs)
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil || !regexp.MustCompile(`(?m)^matrix-hipaa:x:\d+:\d+:[^:]*:/var/lib/matrix-hipaa:/usr/sbin/nologin$`).Match(passwd) {
		t.Fatalf("sysusers did not create the service user: %v\n%s", err, passwd)
	}
}

// buildService builds matrix-hipaa into dir.
func buildService(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "matrix-hipaa")
	build := exec.Command("go", "build", "-tags", "goolm", "-o", bin, "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}
