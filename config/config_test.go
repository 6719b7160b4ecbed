package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml/strictyamltest"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Parse("example-config.yaml", Example())
	if err != nil {
		t.Fatalf("the shipped example does not load:\n%v", err)
	}
	if cfg.Database.Type != "sqlite3" || cfg.AppService.MaxBodyBytes != 64<<20 || cfg.BotMXID() != "@hipaa:example.org" {
		t.Fatalf("unexpected example values: %+v", cfg)
	}
}

// Every problem in a broken file is reported, each at its own line and column.
func TestBrokenConfigReportsEveryProblem(t *testing.T) {
	_, err := Load("testdata/broken.yaml")
	want := []string{
		`testdata/broken.yaml:2:3: unknown key "adress" in homeserver (did you mean "address"?)`,
		`testdata/broken.yaml:2:3: homeserver.address is required`,
		`testdata/broken.yaml:3:11: homeserver.domain "bad domain!" is not a valid server name`,
		`testdata/broken.yaml:4:13: homeserver.software must be synapse, dendrite or generic, not "conduit"`,
		`testdata/broken.yaml:6:11: appservice.listen "127.0.0.1" is not host:port`,
		`testdata/broken.yaml:7:8: appservice.url "ftp://x" must be an http:// or https:// URL`,
		`testdata/broken.yaml:8:8: appservice.bot "Hipaa" is not a valid user localpart (lowercase letters, digits, ._=/+-)`,
		`testdata/broken.yaml:9:13: appservice.as_token is too short: use at least 32 random characters (generate-registration makes them)`,
		`testdata/broken.yaml:10:19: appservice.max_body_bytes: "lots" is not a valid value here`,
		`testdata/broken.yaml:11:3: appservice: duplicate key "max_body_bytes"`,
		`testdata/broken.yaml:16:11: metrics.listen: expected a single value, not a list`,
		`testdata/broken.yaml:18:10: logging.level must be trace, debug, info, warn or error`,
		`testdata/broken.yaml:21:12: jobs.backoff: "10 minutes" is not a duration (use e.g. 30s, 15m, 72h, 30d)`,
		`testdata/broken.yaml:22:1: unknown key "extra"`,
	}
	strictyamltest.ExpectLines(t, err, want)
}

func TestConfigErrorsTable(t *testing.T) {
	base := string(Example())
	cases := []struct {
		name, from, to, want string
	}{
		{"syntax error", "homeserver:", "homeserver: [", "config.yaml:"},
		{"tab indentation", "  domain: example.org", "\tdomain: example.org", "config.yaml:"},
		{"unknown database", "type: sqlite3", "type: mysql", `database.type must be sqlite3 or postgres, not "mysql"`},
		{"postgres without URL", "type: sqlite3\n  # For sqlite3", "type: postgres\n  # For sqlite3", "database.uri must be a postgres:// URL"},
		{"negative max conns", "max_open_conns: 0", "max_open_conns: -1", "database.max_open_conns cannot be negative"},
		{"tiny body limit", "max_body_bytes: 67108864", "max_body_bytes: 10", "appservice.max_body_bytes must be at least 1024"},
		{"exporter without a type", "      type: jsonl\n", "", `audit.exporters[0].type must be jsonl, syslog or fhir, not ""`},
		{"jsonl exporter without a path", "      path: audit/audit.jsonl\n", "", "audit.exporters[0].path is required for a jsonl exporter"},
		{"exporter name", "    - name: local", "    - name: Local SIEM", `audit.exporters[0].name "Local SIEM" must be 1-40 lowercase letters`},
		{"fhir with nowhere to go", "      type: jsonl\n      path: audit/audit.jsonl", "      type: fhir", "audit.exporters[0] needs path (an NDJSON file), url (a FHIR server), or both"},
		{"fhir bad url", "      type: jsonl\n      path: audit/audit.jsonl", "      type: fhir\n      url: fhir.example", `audit.exporters[0].url "fhir.example" must be an http:// or https:// URL`},
		{"syslog without address", "      type: jsonl\n      path: audit/audit.jsonl", "      type: syslog", "audit.exporters[0].address is required for a syslog exporter"},
		{"syslog half a client cert", "      type: jsonl\n      path: audit/audit.jsonl", "      type: syslog\n      address: siem:6514\n      cert_file: c.pem", "audit.exporters[0].cert_file and key_file go together"},
		{"syslog bad sd_id", "      type: jsonl\n      path: audit/audit.jsonl", "      type: syslog\n      address: siem:6514\n      sd_id: hipaa", `audit.exporters[0].sd_id "hipaa" must look like name@<enterprise number>`},
		{"two exporters one name", "      max_age: 24h\n", "      max_age: 24h\n    - name: local\n      type: jsonl\n      path: b.jsonl\n", `audit.exporters[1].name "local" is used twice`},
		{"admin with a short token", "  listen: \"\"\n  token: \"\"", "  listen: 127.0.0.1:29332\n  token: short", "admin.token must be at least 32 random characters"},
		{"management room not a room ID", "  room: \"\"\n  users: []", "  room: \"#admins:hs\"\n  users: [\"@a:hs\"]", `admin.room "#admins:hs" is not a room ID`},
		{"management room without admins", "  room: \"\"\n  users: []", "  room: \"!admins:hs\"\n  users: []", "admin.room is set but admin.users lists no one"},
		{"admin not a user ID", "  room: \"\"\n  users: []", "  room: \"!admins:hs\"\n  users: [\"@a:hs\", \"bob\"]", `admin.users: "bob" is not a user ID`},
		{"admin token hash not hex", "  tokens: []", "  tokens: [{name: alice, sha256: secret}]", "admin.tokens[0].sha256 must be the token's SHA-256"},
		{"admin token name twice", "  tokens: []", "  tokens: [{name: alice, sha256: " + strings.Repeat("a", 64) + "}, {name: alice, sha256: " + strings.Repeat("b", 64) + "}]", `admin.tokens[1].name "alice" is listed twice`},
		{"admin token name with spaces", "  tokens: []", "  tokens: [{name: \"dr who\", sha256: " + strings.Repeat("a", 64) + "}]", `admin.tokens[0].name "dr who" must be`},
		{"admin API in clear beyond loopback", "  listen: \"\"\n  token: \"\"", "  listen: 0.0.0.0:29332\n  token: 0123456789abcdef0123456789abcdef", `admin.listen "0.0.0.0:29332" is not a loopback address: set admin.tls_cert_file`},
		{"admin listen not host:port", "  listen: \"\"\n  token: \"\"", "  listen: nowhere\n  token: 0123456789abcdef0123456789abcdef", `admin.listen "nowhere" is not host:port`},
		{"expire as someone else", "expire_as: sender", "expire_as: admin", `jobs.expire_as must be sender or bot, not "admin"`},
		{"max backoff below backoff", "max_backoff: 5m", "max_backoff: 1ms", "jobs.max_backoff must not be shorter than jobs.backoff"},
		{"bad metrics address", "listen: 127.0.0.1:29331", "listen: nowhere", `metrics.listen "nowhere" is not host:port`},
		{"bad log format", "format: json", "format: xml", "logging.format must be json or pretty"},
		{"section as scalar", "metrics:\n  # Prometheus metrics at http://<listen>/metrics. Empty disables them.\n  listen: 127.0.0.1:29331", "metrics: 5", "metrics: expected a mapping"},
		{"too many workers", "workers: 4", "workers: 1000", "jobs.workers must be between 1 and 256"},
		{"two documents", "jobs:", "---\njobs:", "only one YAML document is allowed"},
		{"tls cert without key", "  max_body_bytes: 67108864\n", "  max_body_bytes: 67108864\n  tls_cert_file: c.pem\n", "appservice.tls_cert_file needs appservice.tls_key_file beside it"},
		{"tls key without cert", "  max_body_bytes: 67108864\n", "  max_body_bytes: 67108864\n  tls_key_file: k.pem\n", "appservice.tls_key_file needs appservice.tls_cert_file beside it"},
		{"tls with an http url", "  max_body_bytes: 67108864\n", "  max_body_bytes: 67108864\n  tls_cert_file: c.pem\n  tls_key_file: k.pem\n", "appservice.url must be https:// when the service serves TLS"},
		{"admin tls key without cert", "  listen: \"\"\n  token: \"\"", "  listen: \"\"\n  token: \"\"\n  tls_key_file: k.pem", "admin.tls_key_file needs admin.tls_cert_file beside it"},
		{"tls files missing", "  max_body_bytes: 67108864\n", "  max_body_bytes: 67108864\n  tls_cert_file: no-such.pem\n  tls_key_file: k.pem\n", "no-such.pem: no such file or directory"},
		{"page template with a room name", `template: "New secure message in Element (ref {ref})"`, `template: "{room}: new message (ref {ref})"`, "pager.template may hold only {ref} and {priority}"},
		{"page template without a reference", `template: "New secure message in Element (ref {ref})"`, `template: "New secure message"`, "pager.template must hold {ref}"},
		{"gateway without a directory", "  gateways: []", "  gateways: [{name: spok, protocol: wctp, url: \"https://gw.example/wctp\", sender_id: hipaa}]", "pager.directory is required with gateways"},
		{"pushes without a security code", "  gateways: []", "  gateways: [{name: spok, protocol: wctp, url: \"https://gw.example/wctp\", sender_id: hipaa}]", "pager.endpoint_security_code must be at least 16 characters when a WCTP gateway pushes"},
		{"WCTP in clear to another host", "  gateways: []", "  gateways: [{name: spok, protocol: wctp, url: \"http://gw.example/wctp\", sender_id: hipaa}]", "pager.gateways[0].url: WCTP carries the security code: use https://"},
		{"SNPP without a port", "  gateways: []", "  gateways: [{name: legacy, protocol: snpp, address: pager.example}]", "pager.gateways[0].address must be host:port"},
		{"gateway protocol", "  gateways: []", "  gateways: [{name: tap, protocol: tap}]", "pager.gateways[0].protocol must be wctp or snpp"},
		{"gateway name", "  gateways: []", "  gateways: [{name: Spok Prod, protocol: snpp, address: \"h:444\"}]", `pager.gateways[0].name "Spok Prod" must be`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.from, tc.to, 1)
			if src == base {
				t.Fatalf("fixture did not change the example")
			}
			_, err := Parse("config.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want it to contain %q", err, tc.want)
			}
			strictyamltest.ExpectPositions(t, err, "config.yaml")
		})
	}
	if _, err := Parse("empty.yaml", nil); err == nil || !strings.Contains(err.Error(), "empty.yaml:1:1: file is empty") {
		t.Fatalf("empty file: %v", err)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("super-secret-token-value-0123456789")
	cfg := Config{}
	cfg.AppService.ASToken = s
	cfg.AppService.HSToken = s
	outputs := map[string]string{
		"%v":  fmt.Sprintf("%v", cfg),
		"%+v": fmt.Sprintf("%+v", cfg),
		"%#v": fmt.Sprintf("%#v", cfg),
		"%s":  fmt.Sprintf("%s", s),
	}
	j, _ := json.Marshal(cfg)
	outputs["json"] = string(j)
	y, _ := yaml.Marshal(cfg)
	outputs["yaml"] = string(y)
	for name, out := range outputs {
		if strings.Contains(out, "super-secret") {
			t.Errorf("%s output leaks the secret: %s", name, out)
		}
	}
	if s.Reveal() != "super-secret-token-value-0123456789" {
		t.Fatal("Reveal lost the value")
	}
}

func TestEnsureTokensWritesBackAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, Example(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := cfg.EnsureTokens()
	if err != nil || !changed {
		t.Fatalf("EnsureTokens: %v %v", changed, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("config mode %o, want 600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if !bytes.Contains(data, []byte("# Where this service listens")) {
		t.Fatal("comments were lost")
	}
	again, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	as, hs := again.AppService.ASToken.Reveal(), again.AppService.HSToken.Reveal()
	if len(as) != 64 || len(hs) != 64 || as == hs {
		t.Fatalf("tokens %d/%d chars, equal=%v", len(as), len(hs), as == hs)
	}
	// Second run keeps them.
	if changed, err := again.EnsureTokens(); err != nil || changed {
		t.Fatalf("second EnsureTokens changed=%v err=%v", changed, err)
	}
	reg := again.Registration()
	if reg.Namespaces.Users[0].Exclusive || reg.ASToken != as || reg.SenderLocalpart != "hipaa-as" {
		t.Fatalf("registration %+v", reg)
	}
	checkUserNamespace(t, reg.Namespaces.Users[0].Regex)
	// Only the keep-alive room's alias is reserved (Synapse lets the bot
	// create no other), exclusively and exactly.
	if a := reg.Namespaces.Aliases; len(a) != 1 || !a[0].Exclusive ||
		!regexp.MustCompile(a[0].Regex).MatchString("#_hipaa_keepalive:"+again.Homeserver.Domain) ||
		regexp.MustCompile(a[0].Regex).MatchString("#_hipaa_keepalive:"+again.Homeserver.Domain+".evil") ||
		regexp.MustCompile(a[0].Regex).MatchString("#icu:"+again.Homeserver.Domain) {
		t.Fatalf("alias namespaces %+v", a)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestRandomTokenAlphabet(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		tok := RandomToken()
		if len(tok) != 64 || strings.Trim(tok, tokenAlphabet) != "" || seen[tok] {
			t.Fatalf("bad token %q", tok)
		}
		seen[tok] = true
	}
}

func TestParseDuration(t *testing.T) {
	cases := map[string]string{"0": "0s", "10s": "10s", "72h": "72h0m0s", "30d": "720h0m0s", "1d12h": "36h0m0s", "x": "error", "-5s": "error", "": "error", "d": "error", "5dd": "error"}
	for in, want := range cases {
		d, err := ParseDuration(in)
		got := d.String()
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("ParseDuration(%q) = %s, want %s", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Example())
	b, _ := os.ReadFile("testdata/broken.yaml")
	f.Add(b)
	f.Add([]byte("homeserver: &a\n  x: *a\n"))
	f.Add([]byte("jobs:\n  workers: 99999999999999999999\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			strictyamltest.ExpectPositions(t, err, "fuzz.yaml")
			return
		}
		if cfg.AppService.Listen == "" || cfg.Homeserver.Domain == "" {
			t.Fatal("accepted a config missing required keys")
		}
	})
}

func TestAliasBombIsRefused(t *testing.T) {
	src := "jobs: &a\n  workers: 1\n"
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	_ = src
	if _, err := Parse("bomb.yaml", []byte(b.String())); err == nil {
		t.Fatal("alias bomb accepted")
	}
}

func TestPurgeHistoryNeedsSynapse(t *testing.T) {
	src := strings.Replace(string(Example()), "purge_history: false", "purge_history: true", 1)
	if _, err := Parse("config.yaml", []byte(src)); err != nil {
		t.Fatalf("purge on synapse refused: %v", err)
	}
	src = strings.Replace(src, "software: synapse", "software: dendrite", 1)
	_, err := Parse("config.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), "homeserver.purge_history needs Synapse's admin API") {
		t.Fatalf("purge on dendrite: %v", err)
	}
	strictyamltest.ExpectPositions(t, err, "config.yaml")
}

// A certificate and key that load and match, with an https:// url, are
// accepted; a key that belongs to another certificate is not.
func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "a")
	_, otherKey := selfSigned(t, dir, "b")
	base := strings.Replace(string(Example()), "  url: http://127.0.0.1:29330", "  url: https://127.0.0.1:29330", 1)
	with := func(c, k string) string {
		return strings.Replace(base, "  max_body_bytes: 67108864\n", "  max_body_bytes: 67108864\n  tls_cert_file: "+c+"\n  tls_key_file: "+k+"\n", 1)
	}
	cfg, err := Parse(filepath.Join(dir, "config.yaml"), []byte(with(cert, key)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AppService.TLSCertFile != cert {
		t.Fatalf("tls_cert_file %q", cfg.AppService.TLSCertFile)
	}
	if _, err := Parse(filepath.Join(dir, "config.yaml"), []byte(with(cert, otherKey))); err == nil || !strings.Contains(err.Error(), "private key does not match public key") {
		t.Fatalf("mismatched key: %v", err)
	}
}

func selfSigned(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}

// checkUserNamespace: the namespace claims exactly the local users. Unanchored,
// `@.*:example\.org` also claimed @x:example.org.evil.com, a user of another
// server, whom the service would then act as and be sent events for.
func checkUserNamespace(t *testing.T, expr string) {
	t.Helper()
	// Homeservers match the whole user ID (Synapse re.match, Dendrite MatchString).
	re := regexp.MustCompile(expr)
	for id, want := range map[string]bool{
		"@alice:example.org": true, "@a.b_c=d/e+f:example.org": true,
		"@x:example.org.evil.com": false, "@x:exampleXorg": false, "@x:evil.com:example.org": false,
		"x@y:example.org": false, "@x:example.org\n": false, "@:example.org": false,
	} {
		if re.MatchString(id) != want {
			t.Errorf("namespace %q matches %q: %v, want %v", expr, id, !want, want)
		}
	}
}

func TestHostileUserNamespaceIsAnchored(t *testing.T) {
	c := &Config{}
	c.Homeserver.Domain = "example.org"
	checkUserNamespace(t, c.Registration().Namespaces.Users[0].Regex)
}

// Per-person admin tokens stand in for the shared one.
func TestAdminTokensWithoutASharedOne(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	data := strings.Replace(strings.Replace(string(Example()), "  listen: \"\"\n  token: \"\"", "  listen: 127.0.0.1:29332\n  token: \"\"", 1),
		"  tokens: []", "  tokens: [{name: alice, sha256: "+strings.Repeat("a", 64)+"}]", 1)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Admin.Tokens) != 1 || c.Admin.Tokens[0].Name != "alice" {
		t.Fatalf("tokens %+v", c.Admin.Tokens)
	}
}

// Paths are resolved once, at load, against the config file's folder (not
// the working directory): the rest of the service takes them as they are.
func TestPathsResolvedAtLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		cfg.Policy: "policy.yaml", cfg.Database.URI: "matrix-hipaa.db", cfg.Audit.KeyFile: "audit.key",
		cfg.Keys.JobFile: "keys/job.key", cfg.Audit.Exporters[0].Path: "audit/audit.jsonl",
	} {
		if got != filepath.Join(dir, want) {
			t.Errorf("%s resolved to %s", want, got)
		}
	}
}
