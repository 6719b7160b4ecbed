package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestPolicyCommands(t *testing.T) {
	code, out, errOut := runCLI("policy", "validate", "policy/testdata/broken.yaml")
	if code != 1 || out != "" {
		t.Fatalf("validate broken: exit %d, stdout %q", code, out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 11 {
		t.Fatalf("%d error lines, want 11:\n%s", len(lines), errOut)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "policy/testdata/broken.yaml:") {
			t.Errorf("line without file:line:col: %q", l)
		}
	}
	if code, out, _ := runCLI("policy", "validate", "policy/example-policy.yaml"); code != 0 || !strings.Contains(out, "valid (version 1, 2 room overrides") {
		t.Fatalf("validate example: %d %q", code, out)
	}
	code, out, errOut = runCLI("policy", "explain", "-policy", "policy/example-policy.yaml", "-room", "!r:hospital.example", "-alias", "#icu-3:hospital.example")
	if code != 0 || !strings.Contains(out, "retention     72h0m0s            from rooms[0] (alias #icu-*:hospital.example)") {
		t.Fatalf("explain: %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := runCLI("policy", "explain", "-policy", "policy/example-policy.yaml"); code != 2 {
		t.Fatalf("explain without -room exited %d, want 2", code)
	}
	if code, out, _ := runCLI("example-policy"); code != 0 || !strings.HasPrefix(out, "# matrix-hipaa policy") {
		t.Fatalf("example-policy: %d", code)
	}
}

func TestConfigErrorsPrintOnePerLine(t *testing.T) {
	code, _, errOut := runCLI("run", "-config", "config/testdata/broken.yaml")
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if !strings.HasPrefix(l, "config/testdata/broken.yaml:") {
			t.Errorf("line %q is not file:line:col: message", l)
		}
	}
	if code, _, _ := runCLI("frobnicate"); code != 2 {
		t.Fatalf("unknown command exited %d", code)
	}
}

// runningExample writes the example config into a new folder, with the
// service's port held open to play a running service (close it to stop).
func runningExample(t *testing.T) (dir, cfg string, running net.Listener) {
	t.Helper()
	dir = t.TempDir()
	cfg = filepath.Join(dir, "config.yaml")
	running, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { running.Close() })
	cfgText := strings.Replace(string(config.Example()), "  listen: 127.0.0.1:29330\n", "  listen: "+running.Addr().String()+"\n", 1)
	if err := os.WriteFile(cfg, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, running
}

// backup on the example config's SQLite: the copy is written and checked, the
// backup itself is audited, and an existing file is never overwritten.
func TestBackupCommand(t *testing.T) {
	dir, cfg, running := runningExample(t)
	for range 3 {
		if code, _, errOut := runCLI("hold", "-config", cfg, "-list"); code != 0 {
			t.Fatalf("hold -list: %d %s", code, errOut)
		}
	}
	out := filepath.Join(dir, "backups", "b1.db")
	os.Mkdir(filepath.Dir(out), 0o700)
	code, stdout, errOut := runCLI("backup", "-config", cfg, "-out", out)
	// Each listing of holds made one admin.command record.
	if code != 0 || !strings.Contains(stdout, "backup written to "+out+": 0 events, 3 audit records intact (chain head 3)") {
		t.Fatalf("backup: %d %q %q", code, stdout, errOut)
	}
	code, stdout, _ = runCLI("audit", "export", "-config", cfg, "-format", "jsonl")
	if code != 0 || !strings.Contains(stdout, `"type":"audit.read","outcome":"success"`) || !strings.Contains(stdout, `"action":"backup","count":3`) {
		t.Fatalf("the backup is not in the audit trail:\n%s", stdout)
	}
	if code, _, errOut := runCLI("backup", "-config", cfg, "-out", out); code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("backup over an existing file: %d %q", code, errOut)
	}
	for _, bad := range [][]string{{}, {"-out", out + "2", "-dir", dir}, {"-out", out + "3", "-keep", "2"}, {"-dir", dir, "-keep", "-1"}} {
		if code, _, _ := runCLI(append([]string{"backup", "-config", cfg}, bad...)...); code != 2 {
			t.Fatalf("backup %v exited %d, want 2", bad, code)
		}
	}
	// -dir names the copy by the time; -keep leaves the newest there, and
	// only removes copies it named.
	old := filepath.Join(filepath.Dir(out), "matrix-hipaa-20200101T000000Z.db")
	os.WriteFile(old, nil, 0o600)
	code, stdout, errOut = runCLI("backup", "-config", cfg, "-dir", filepath.Dir(out), "-keep", "1")
	m := regexp.MustCompile(`backup written to (\S+/matrix-hipaa-\d{8}T\d{6}Z\.db): `).FindStringSubmatch(stdout)
	if code != 0 || m == nil || !strings.Contains(stdout, "removed the older copy "+old+"\n") {
		t.Fatalf("backup -dir -keep 1: %d %q %q", code, stdout, errOut)
	}
	for _, kept := range []string{m[1], out} {
		if _, err := os.Stat(kept); err != nil {
			t.Fatal(err)
		}
	}

	// restore refuses while the service runs, then puts the first copy back:
	// the records since (the listings and backups above) are gone, and the
	// restore is the restored chain's next record.
	if code, _, errOut := runCLI("restore", "-config", cfg, "-from", out); code != 1 || !strings.Contains(errOut, "the service is running") {
		t.Fatalf("restore while running: %d %q", code, errOut)
	}
	running.Close()
	code, stdout, errOut = runCLI("restore", "-config", cfg, "-from", out)
	if code != 0 || !strings.Contains(stdout, "restored from "+out+": chain head 3, then this restore recorded as record 4\nthe replaced chain had 7 records; records 4 to 7 are not in the restored chain\n") ||
		!strings.Contains(stdout, "kept "+filepath.Join(dir, "matrix-hipaa.db.replaced-")) {
		t.Fatalf("restore: %d %q %q", code, stdout, errOut)
	}
	code, stdout, _ = runCLI("audit", "export", "-config", cfg, "-format", "jsonl")
	if code != 0 || !strings.Contains(stdout, `"seq":4,`) || !strings.Contains(stdout, `"type":"admin.command","outcome":"success","actor":"`) || !strings.Contains(stdout, `"action":"restore","count":7`) {
		t.Fatalf("restored trail:\n%s", stdout)
	}
}

func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, config.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI("hold", "-config", cfg, "-room", "!ward:example.org", "-reason", "case 7"); code != 0 {
		t.Fatalf("hold: %d %s", code, errOut)
	}
	code, out, errOut := runCLI("status", "-config", cfg)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^database +sqlite3, schema \d+, [0-9.]+ MiB$`),
		regexp.MustCompile(`(?m)^events received +0, the last never$`),
		regexp.MustCompile(`(?m)^actions +0 pending, 0 failed for good$`),
		regexp.MustCompile(`(?m)^audit chain +1 records, the last 20\d\d-`),
		regexp.MustCompile(`(?m)^legal holds +1 standing$`),
		regexp.MustCompile(`(?m)^rooms +0 known, 0 need attention`),
	} {
		if !want.MatchString(out) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}
	// Asking is an administrator's command, on the record.
	if _, out, _ := runCLI("audit", "export", "-config", cfg, "-format", "jsonl"); !strings.Contains(out, `"action":"status"`) {
		t.Fatalf("status not audited:\n%s", out)
	}
}

// config validate checks the config and every file it names, reporting each
// problem where it is, and touches no database.
func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("config.yaml", config.Example(), 0o600)
	write("policy.yaml", policy.Example(), 0o600)
	code, out, errOut := runCLI("config", "validate", cfg)
	if code != 0 || !strings.Contains(out, cfg+": valid (homeserver example.org, ") ||
		!strings.Contains(out, "WARNING "+cfg+":8:11: homeserver.domain is still the example's example.org") {
		t.Fatalf("the unedited example: %d %q %q", code, out, errOut)
	}
	// generate-registration refuses it: the namespace would be example.org's.
	if code, _, errOut := runCLI("generate-registration", "-config", cfg); code != 1 || !strings.Contains(errOut, cfg+":8:11: homeserver.domain is still the example's") {
		t.Fatalf("generate-registration on the unedited example: %d %q", code, errOut)
	}
	write("config.yaml", []byte(strings.Replace(string(config.Example()), "  domain: example.org\n", "  domain: hospital.test\n", 1)), 0o600)
	if code, out, _ := runCLI("config", "validate", cfg); code != 0 || strings.Contains(out, "WARNING") {
		t.Fatalf("an edited config: %d %q", code, out)
	}
	if code, out, errOut := runCLI("generate-registration", "-config", cfg); code != 0 || !strings.Contains(out, `hospital\.test`) {
		t.Fatalf("generate-registration on an edited config: %d %q %q", code, out, errOut)
	}
	write("config.yaml", config.Example(), 0o600)
	if _, err := os.Stat(filepath.Join(dir, "matrix-hipaa.db")); !os.IsNotExist(err) {
		t.Fatalf("validate touched the database: %v", err)
	}

	broken, err := os.ReadFile("policy/testdata/broken.yaml")
	if err != nil {
		t.Fatal(err)
	}
	write("policy.yaml", broken, 0o600)
	write("audit.key", []byte(strings.Repeat("ab", 32)+"\n"), 0o644)
	write("roster.yaml", []byte("clinicians:\n  - user_id: \"@a:example.org\"\n    npi: \"1234567890\"\n    role: physician\n    verified_by: office\n"), 0o600)
	write("config.yaml", []byte(strings.Replace(string(config.Example()), "\nroster: \"\"\n", "\nroster: roster.yaml\n", 1)), 0o600)
	code, _, errOut = runCLI("config", "validate", cfg)
	if code != 1 {
		t.Fatalf("broken files: exit %d", code)
	}
	for _, want := range []string{filepath.Join(dir, "policy.yaml") + ":", filepath.Join(dir, "roster.yaml") + ":", "audit.key is readable by other users (mode 0644)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("validate output lacks %q:\n%s", want, errOut)
		}
	}
	if code, _, _ := runCLI("config", "validate"); code != 2 {
		t.Fatalf("no file: exit %d, want 2", code)
	}
}

// What an auditor is given (audit.key, the checkpoint public key, read
// access to the database) verifies the trail, and is all verifying needs:
// with every other key out of reach, audit verify and export work and
// create no key. Rotation refuses while the service runs.
func TestAuditorNeedsOnlyTheChainKey(t *testing.T) {
	dir, cfg, running := runningExample(t)
	if code, _, errOut := runCLI("hold", "-config", cfg, "-list"); code != 0 {
		t.Fatalf("hold -list: %s", errOut)
	}
	_, pub, _ := runCLI("audit", "public-key", "-config", cfg)
	pub = strings.Fields(pub)[0]

	auditor := t.TempDir()
	data, _ := os.ReadFile(filepath.Join(dir, "audit.key"))
	os.WriteFile(filepath.Join(auditor, "audit.key"), data, 0o600)
	text := string(config.Example())
	for old, repl := range map[string]string{
		"  uri: matrix-hipaa.db\n":                     "  uri: " + filepath.Join(dir, "matrix-hipaa.db") + "\n",
		"  checkpoint_file: audit-checkpoints.jsonl\n": "  checkpoint_file: " + filepath.Join(dir, "audit-checkpoints.jsonl") + "\n",
	} {
		text = strings.Replace(text, old, repl, 1)
	}
	auditorCfg := filepath.Join(auditor, "config.yaml")
	os.WriteFile(auditorCfg, []byte(text), 0o600)
	if code, out, errOut := runCLI("audit", "verify", "-config", auditorCfg, "-public-key", pub); code != 0 || !strings.HasPrefix(out, "OK: ") {
		t.Fatalf("audit verify with the chain key alone: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := runCLI("audit", "export", "-config", auditorCfg, "-format", "jsonl"); code != 0 || !strings.Contains(out, `"action":"verify"`) {
		t.Fatalf("audit export with the chain key alone: %d %q", code, errOut)
	}
	entries, _ := os.ReadDir(auditor)
	if len(entries) != 2 {
		t.Fatalf("the auditor's folder holds %v: verifying made keys", entries)
	}
	if code, _, errOut := runCLI("keys", "rotate", "-config", cfg, "-key", "job"); code != 1 || !strings.Contains(errOut, "the service is running") {
		t.Fatalf("rotation while running: %d %q", code, errOut)
	}
	running.Close()
	if code, out, errOut := runCLI("keys", "rotate", "-config", cfg, "-key", "job"); code != 0 || !strings.Contains(out, "job.key.retired-") {
		t.Fatalf("keys rotate: %d %q %q", code, out, errOut)
	}
	if code, _, _ := runCLI("keys", "rotate", "-config", cfg, "-key", "chain"); code != 1 {
		t.Fatal("the chain key rotated in place")
	}
}

// status and rooms while the policy file is broken (when an admin most needs
// them) report on the policy the service keeps in force, and say the file is
// refused; before the service has ever adopted a policy there is nothing
// else to report on, and they fail with the file's errors.
func TestStatusAndRoomsWithABrokenPolicyFile(t *testing.T) {
	dir, cfgPath, _ := runningExample(t)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := []byte("version: 1\ndefaults:\n  retention: forever\n")
	os.WriteFile(filepath.Join(dir, "policy.yaml"), broken, 0o600)
	if code, _, errOut := runCLI("status", "-config", cfgPath); code != 1 || !strings.Contains(errOut, "policy.yaml:3:") {
		t.Fatalf("status before any policy was in force: %d %q", code, errOut)
	}
	// The service adopts the good policy (as at its start).
	os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	h, err := appservice.NewPolicyHolder(ctx, cfg.Resolve(cfg.Policy), db, chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	hash := h.Current().Hash
	db.Close()
	os.WriteFile(filepath.Join(dir, "policy.yaml"), broken, 0o600)
	for _, cmd := range [][]string{{"status"}, {"rooms"}} {
		code, out, errOut := runCLI(append(cmd, "-config", cfgPath)...)
		if code != 0 || !strings.Contains(out, "is REFUSED; the service keeps the policy in force ("+hash+", since ") || !strings.Contains(out, "policy.yaml:3:") {
			t.Fatalf("%s with a broken policy file: %d\n%s%s", cmd[0], code, out, errOut)
		}
	}
}

// docs/audit.md's walkthrough, step by step: the pseudonym of a person, the
// records about them (with the pseudonym key, and by an auditor without
// it), and both searches on the record.
func TestInvestigationWalkthrough(t *testing.T) {
	dir, cfg, _ := runningExample(t)
	for _, args := range [][]string{
		{"-user", "@jdoe:hospital.example", "-reason", "complaint 17"},
		{"-user", "@other:hospital.example", "-reason", "another matter"},
		{"-room", "!ward:hospital.example", "-reason", "ward review"},
	} {
		if code, _, errOut := runCLI(append([]string{"hold", "-config", cfg}, args...)...); code != 0 {
			t.Fatalf("hold %v: %s", args, errOut)
		}
	}
	code, out, errOut := runCLI("audit", "pseudonym", "-config", cfg, "-user", "@jdoe:hospital.example")
	p := strings.TrimSpace(out)
	if code != 0 || !regexp.MustCompile(`^u_[0-9a-f]{32}$`).MatchString(p) {
		t.Fatalf("audit pseudonym: %d %q %q", code, out, errOut)
	}
	code, out, _ = runCLI("audit", "pseudonym", "-config", cfg, "-room", "!ward:hospital.example")
	room := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(room, "r_") {
		t.Fatalf("audit pseudonym -room: %d %q", code, out)
	}
	for _, bad := range [][]string{{}, {"-user", "jdoe"}, {"-user", "@a:b", "-room", "!r:b"}, {"-room", "@jdoe:hospital.example"}} {
		if code, _, _ := runCLI(append([]string{"audit", "pseudonym", "-config", cfg}, bad...)...); code != 2 {
			t.Fatalf("audit pseudonym %v exited %d, want 2", bad, code)
		}
	}
	// By Matrix ID: the hold on jdoe, and the pseudonym's own computation.
	code, out, errOut = runCLI("audit", "export", "-config", cfg, "-format", "jsonl", "-user", "@jdoe:hospital.example")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[0], `"type":"hold"`) || !strings.Contains(lines[0], `"detail":"`+p+`"`) ||
		!strings.Contains(lines[1], `"detail":"`+p+`","action":"pseudonym"`) {
		t.Fatalf("audit export -user: %d %q\n%s", code, errOut, out)
	}
	// An auditor with the chain key alone searches by the pseudonym.
	auditor := t.TempDir()
	key, _ := os.ReadFile(filepath.Join(dir, "audit.key"))
	os.WriteFile(filepath.Join(auditor, "audit.key"), key, 0o600)
	text := strings.Replace(string(config.Example()), "  uri: matrix-hipaa.db\n", "  uri: "+filepath.Join(dir, "matrix-hipaa.db")+"\n", 1)
	auditorCfg := filepath.Join(auditor, "config.yaml")
	os.WriteFile(auditorCfg, []byte(text), 0o600)
	code, out, errOut = runCLI("audit", "export", "-config", auditorCfg, "-format", "fhir", "-user", p, "-room", room)
	if n := strings.Count(out, `"resourceType":"AuditEvent"`); code != 0 || n != 5 {
		// jdoe's hold and pseudonym, then the ward's hold and pseudonym,
		// then the export by ID above (it names jdoe).
		t.Fatalf("auditor's export: %d %q, %d records:\n%s", code, errOut, n, out)
	}
	if code, _, errOut := runCLI("audit", "export", "-config", auditorCfg, "-user", "@jdoe:hospital.example"); code != 1 || !strings.Contains(errOut, "no pseudonym key") {
		t.Fatalf("an ID searched for without the pseudonym key: %d %q", code, errOut)
	}
	if entries, _ := os.ReadDir(auditor); len(entries) != 2 {
		t.Fatalf("the auditor's folder holds %v: searching made keys", entries)
	}
	code, out, _ = runCLI("audit", "export", "-config", cfg, "-format", "jsonl")
	if code != 0 || !strings.Contains(out, `"detail":"`+p+`","action":"export-jsonl","count":2`) ||
		!strings.Contains(out, `"detail":"`+p+` `+room+`","action":"export-fhir","count":5`) {
		t.Fatalf("the searches are not on the record:\n%s", out)
	}
}

// compliance report on the example config, offline: every format, to a
// file or stdout; the report is itself on the record; bad flags are usage
// errors.
func TestComplianceReportCommand(t *testing.T) {
	dir, cfg, _ := runningExample(t)
	if code, _, errOut := runCLI("hold", "-config", cfg, "-user", "@jdoe:hospital.example", "-reason", "complaint"); code != 0 {
		t.Fatalf("hold: %s", errOut)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The service's signing key (a running service makes it).
	if code, _, errOut := runCLI("audit", "public-key", "-config", cfg); code != 0 {
		t.Fatal(errOut)
	}
	code, out, errOut := runCLI("compliance", "report", "-config", cfg, "-offline", "-format", "json")
	var rep struct {
		Evidence struct {
			Holds struct{ Standing, Placed int64 }
			Audit struct {
				Intact  bool
				Records int64
			}
		}
		Findings []struct{ ID, Severity string }
	}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("compliance report -format json: %d %v %q\n%s", code, err, errOut, out)
	}
	if rep.Evidence.Holds.Standing != 1 || rep.Evidence.Holds.Placed != 1 || !rep.Evidence.Audit.Intact || rep.Evidence.Audit.Records != 1 {
		t.Fatalf("report evidence: %+v", rep.Evidence)
	}
	ids := map[string]bool{}
	for _, f := range rep.Findings {
		ids[f.ID] = true
	}
	// Nothing was ever backed up or checkpointed, and the homeserver was
	// not asked.
	if !ids["backup-stale"] || !ids["homeserver-version-unknown"] || !ids["checkpoints-missing"] {
		t.Fatalf("findings %+v", rep.Findings)
	}
	for _, format := range []string{"md", "html"} {
		path := filepath.Join(dir, "report."+format)
		if code, out, errOut := runCLI("compliance", "report", "-config", cfg, "-offline", "-format", format, "-out", path, "-since", "2026-01-01"); code != 0 || out != "" {
			t.Fatalf("compliance report -format %s: %d %q %q", format, code, out, errOut)
		}
		data, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(data), "HIPAA compliance report") || !strings.Contains(string(data), "164.312(b)") ||
			strings.Contains(string(data), "jdoe") {
			t.Fatalf("%s report: %v\n%s", format, err, data)
		}
	}
	for _, bad := range [][]string{{"-format", "pdf"}, {"-since", "yesterdayish"}, {"extra"}} {
		if code, _, _ := runCLI(append([]string{"compliance", "report", "-config", cfg, "-offline"}, bad...)...); code != 2 {
			t.Fatalf("compliance report %v exited %d, want 2", bad, code)
		}
	}
	code, out, _ = runCLI("audit", "export", "-config", cfg)
	if code != 0 || strings.Count(out, `"action":"compliance-report"`) != 3 {
		t.Fatalf("the reports are not on the record:\n%s", out)
	}
}
