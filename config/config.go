// Package config is the one configuration tree of matrix-hipaa: its schema, an
// embedded commented example, strict loading that reports every problem as
// file:line:col, and the homeserver registration derived from it.
package config

import (
	"crypto/tls"
	_ "embed"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
)

//go:embed example-config.yaml
var exampleConfig []byte

// Example returns the commented example configuration.
func Example() []byte { return append([]byte(nil), exampleConfig...) }

type Config struct {
	Homeserver Homeserver `yaml:"homeserver"`
	AppService AppService `yaml:"appservice"`
	Database   Database   `yaml:"database"`
	// Policy is the path of policy.yaml, relative to this file's folder.
	Policy string `yaml:"policy"`
	// Roster is the verified clinician roster file (YAML or CSV), relative
	// to this file's folder; empty: the roster is kept by admin commands
	// and imports only.
	Roster  string  `yaml:"roster"`
	Audit   Audit   `yaml:"audit"`
	Metrics Metrics `yaml:"metrics"`
	Admin   Admin   `yaml:"admin"`
	Logging Logging `yaml:"logging"`
	Jobs    Jobs    `yaml:"jobs"`
	Keys    Keys    `yaml:"keys"`
	Pager   Pager   `yaml:"pager"`
	// Compliance is what `matrix-hipaa compliance report` measures against.
	Compliance Compliance `yaml:"compliance"`

	// path is where the config was read from; relative paths resolve against its folder.
	path string
	// warnings are values left as the example has them (see Warnings).
	warnings strictyaml.Errors
}

// Warnings lists the values still as the example config has them (the
// example.org server name), each as file:line:col: message. Such a config
// loads, but generate-registration refuses it: it would register a user
// namespace on a domain that is not the hospital's.
func (c *Config) Warnings() strictyaml.Errors { return c.warnings }

// exampleDomain reports whether a server name is one RFC 2606 reserves for
// examples (what the example config holds).
func exampleDomain(d string) bool {
	host := strings.ToLower(d)
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	for _, ex := range []string{"example.org", "example.com", "example.net"} {
		if host == ex || strings.HasSuffix(host, "."+ex) {
			return true
		}
	}
	return host == "example" || strings.HasSuffix(host, ".example")
}

type Homeserver struct {
	Address  string `yaml:"address"`
	Domain   string `yaml:"domain"`
	Software string `yaml:"software"`
	// KeepAlive, if set, has the bot post a tiny event of its own in a private
	// room whenever nothing has arrived for this long. Dendrite can hold an
	// event back from the AS for up to ~5 s after an idle spell; steady traffic
	// avoids that. 0 turns it off.
	KeepAlive Duration `yaml:"keepalive"`
	// PurgeHistory (Synapse only): after expiring messages, also purge each
	// room's history older than its lifetime through Synapse's admin API, so
	// the redacted events themselves leave the database. The bot must be a
	// server admin.
	PurgeHistory bool `yaml:"purge_history"`
	// PurgeInterval is how often at most each room's history is purged
	// (default 1h): each purge is a background job on Synapse.
	PurgeInterval Duration `yaml:"purge_interval"`
	// PusherCheckInterval is how often every local user's
	// pushers are listed, to find those sent whole events (default 1h).
	PusherCheckInterval Duration `yaml:"pusher_check_interval"`
}

type AppService struct {
	ID      string `yaml:"id"`
	Listen  string `yaml:"listen"`
	URL     string `yaml:"url"`
	Bot     string `yaml:"bot"`
	ASToken Secret `yaml:"as_token"`
	HSToken Secret `yaml:"hs_token"`
	// MaxBodyBytes bounds a transaction body; larger ones get 413.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// TLSCertFile and TLSKeyFile (PEM), both or neither, make listen serve
	// HTTPS; url must then be https://.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// BotPasswordFile holds the bot account's password, for homeservers
	// that ask for it before they take the bot's cross-signing keys
	// (Dendrite 0.13). Needed once: the keys stay published afterwards.
	BotPasswordFile string `yaml:"bot_password_file"`
}

// Keys are the service's other secret keys, one purpose each, each in its
// own file (created 0600 if missing). Verifying the audit chain needs none
// of them: audit.key_file and the checkpoint public key are enough.
type Keys struct {
	// PseudonymFile: the key that turns user and room IDs into the audit
	// trail's pseudonyms (whoever has it can test a guess).
	PseudonymFile string `yaml:"pseudonym_file"`
	// JobFile: the key that MACs queued jobs.
	JobFile string `yaml:"job_file"`
	// BotPickleFile: the key that encrypts the bot's Olm/Megolm state and
	// cross-signing keys in the database.
	BotPickleFile string `yaml:"bot_pickle_file"`
	// ArchiveFile: the key that encrypts the archive's records at rest
	// (rooms with archive: on). Retired archive keys stay beside it as
	// ArchiveFile.retired-<time>: records name the key that sealed them.
	ArchiveFile string `yaml:"archive_file"`
}

// BotPassword reads appservice.bot_password_file ("" if none is set).
func (c *Config) BotPassword() (string, error) {
	if c.AppService.BotPasswordFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.AppService.BotPasswordFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Compliance holds the hospital's own thresholds for the compliance report
// (docs/compliance.md): what it counts as out of date or too old.
type Compliance struct {
	// HomeserverMinVersion is the oldest homeserver release the hospital's
	// patching policy accepts ("1.150.0", "0.13.8"); empty: not compared.
	HomeserverMinVersion string `yaml:"homeserver_min_version"`
	// BackupMaxAge is how old the newest backup may be (default 26h).
	BackupMaxAge Duration `yaml:"backup_max_age"`
	// ExporterMaxLag is how long an exporter may go without delivering
	// while records wait for it (default 5m).
	ExporterMaxLag Duration `yaml:"exporter_max_lag"`
	// PrivacyOfficerRoom is the room (ID) the bot tells of every emergency
	// access: who, where, why and until when. The bot must be invited to it
	// by an administrator. Empty: no one is told (the audit trail still
	// records it).
	PrivacyOfficerRoom string `yaml:"privacy_officer_room"`
}

// VersionRE is what a version the hospital names looks like: numbers and
// dots (what follows, "+abc" or "rc1", is not compared).
var VersionRE = regexp.MustCompile(`^\d+(\.\d+){0,3}$`)

type Database struct {
	Type         string `yaml:"type"`
	URI          string `yaml:"uri"`
	MaxOpenConns int    `yaml:"max_open_conns"`
}

type Audit struct {
	KeyFile            string     `yaml:"key_file"`
	SigningKeyFile     string     `yaml:"signing_key_file"`
	CheckpointFile     string     `yaml:"checkpoint_file"`
	CheckpointEvery    int64      `yaml:"checkpoint_every"`
	CheckpointInterval Duration   `yaml:"checkpoint_interval"`
	Exporters          []Exporter `yaml:"exporters"`
}

// Exporter is one destination the audit trail is copied to, continuously.
type Exporter struct {
	Name string `yaml:"name"`
	Type string `yaml:"type"` // jsonl, syslog or fhir

	// jsonl, fhir (NDJSON file)
	Path      string   `yaml:"path"`
	MaxSizeMB int64    `yaml:"max_size_mb"`
	MaxAge    Duration `yaml:"max_age"`

	// syslog (RFC 5424 over TLS, RFC 5425)
	Address    string `yaml:"address"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
	Hostname   string `yaml:"hostname"`
	SDID       string `yaml:"sd_id"`

	// fhir (R4 AuditEvent): path for an NDJSON file and/or url of a FHIR
	// server that takes batch Bundles; site names this deployment.
	URL   string `yaml:"url"`
	Token Secret `yaml:"token"`
	Site  string `yaml:"site"`
}

// Admin is how administrators reach the service besides the command line:
// the admin HTTP API (off unless listen is set; every call needs the bearer
// token) and the management room (off unless room is set), where the users
// listed in users may give commands.
type Admin struct {
	Listen string `yaml:"listen"`
	// Token is one bearer token shared by whoever holds it: who asked is
	// what each request says. Tokens are one per person instead, stored as
	// SHA-256 hashes (matrix-hipaa admin-token makes one): who asked is who
	// the token belongs to.
	Token  Secret       `yaml:"token"`
	Tokens []AdminToken `yaml:"tokens"`
	Room   string       `yaml:"room"`
	Users  []string     `yaml:"users"`
	// TLSCertFile and TLSKeyFile (PEM), both or neither, make listen serve HTTPS.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
}

// AdminToken is one person's admin API token, kept as its SHA-256 (hex):
// the config file never holds the token itself.
type AdminToken struct {
	Name   string `yaml:"name"`
	SHA256 string `yaml:"sha256"`
}

var adminNameRE = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)
var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// loopback reports whether host (from host:port) can only be reached from
// this machine.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsAdmin reports whether user may give commands in the management room.
func (a Admin) IsAdmin(user string) bool {
	for _, u := range a.Users {
		if u == user {
			return true
		}
	}
	return false
}

type Metrics struct {
	Listen string `yaml:"listen"`
}

type Logging struct {
	Level string `yaml:"level"`
	// Format is "json" for machines or "pretty" for a terminal.
	Format string `yaml:"format"`
}

type Jobs struct {
	// Workers is how many jobs run at once.
	Workers int `yaml:"workers"`
	// MaxAttempts before a job is marked failed (and audited as such).
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff is the first retry delay; it doubles per attempt up to MaxBackoff.
	Backoff    Duration `yaml:"backoff"`
	MaxBackoff Duration `yaml:"max_backoff"`
	// ExpireAs is who redacts expired messages: "sender" (needs no power) or
	// "bot" (shows members it was the policy; needs the bot to have the
	// room's redact power level, else the sender is used).
	ExpireAs string `yaml:"expire_as"`
	// KeepMetadata is how long the routing metadata of what is over is
	// kept: inbox rows of events that no wipe could still redact (expired
	// messages, non-message events), done jobs whose dedupe key names one
	// event or time window, and done expiries. Default 30 days, at least a
	// day; see docs/deploy.md ("Metadata the service keeps").
	KeepMetadata Duration `yaml:"keep_metadata"`
}

const DefaultMaxBodyBytes = 64 << 20

// Path is the file the config was loaded from.
func (c *Config) Path() string { return c.path }

// Resolve makes p absolute against the config file's folder.
func (c *Config) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(c.path), p)
}

// BotMXID is the bot's full Matrix user ID.
func (c *Config) BotMXID() string {
	return "@" + c.AppService.Bot + ":" + c.Homeserver.Domain
}

// Load reads and validates a config file. On error it returns an
// strictyaml.Errors listing every problem as file:line:col: message.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is Load for bytes already read; path is used for messages and to
// resolve relative paths.
func Parse(path string, data []byte) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	cfg := &Config{path: abs}
	doc := strictyaml.Decode(path, data, cfg)
	if doc.Root != nil {
		cfg.applyDefaults()
		cfg.resolvePaths()
		cfg.validate(doc)
		if exampleDomain(cfg.Homeserver.Domain) {
			cfg.warnings = append(cfg.warnings, doc.Problem("homeserver.domain",
				"homeserver.domain is still the example's %s: set your homeserver's server name (the part after the colon in user IDs)", cfg.Homeserver.Domain))
		}
	}
	if err := doc.Err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// resolvePaths makes every file path in the config absolute, against the
// config file's folder, once: the rest of the service uses them as they are.
func (c *Config) resolvePaths() {
	for _, p := range []*string{&c.Policy, &c.Roster, &c.Audit.KeyFile, &c.Audit.SigningKeyFile, &c.Audit.CheckpointFile,
		&c.AppService.TLSCertFile, &c.AppService.TLSKeyFile, &c.AppService.BotPasswordFile, &c.Admin.TLSCertFile, &c.Admin.TLSKeyFile,
		&c.Keys.PseudonymFile, &c.Keys.JobFile, &c.Keys.BotPickleFile, &c.Keys.ArchiveFile} {
		*p = c.Resolve(*p)
	}
	if c.Database.Type == "sqlite3" {
		c.Database.URI = c.Resolve(c.Database.URI)
	}
	for i := range c.Audit.Exporters {
		e := &c.Audit.Exporters[i]
		for _, p := range []*string{&e.Path, &e.CAFile, &e.CertFile, &e.KeyFile} {
			*p = c.Resolve(*p)
		}
	}
	c.Pager.resolvePaths(c)
}

func (c *Config) applyDefaults() {
	if c.Homeserver.Software == "" {
		c.Homeserver.Software = "generic"
	}
	if c.AppService.ID == "" {
		c.AppService.ID = "matrix-hipaa"
	}
	if c.AppService.Bot == "" {
		c.AppService.Bot = "hipaa"
	}
	if c.AppService.MaxBodyBytes == 0 {
		c.AppService.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Database.Type == "" {
		c.Database.Type = "sqlite3"
	}
	if c.Database.URI == "" && c.Database.Type == "sqlite3" {
		c.Database.URI = "matrix-hipaa.db"
	}
	if c.Audit.KeyFile == "" {
		c.Audit.KeyFile = "audit.key"
	}
	if c.Audit.SigningKeyFile == "" {
		c.Audit.SigningKeyFile = "audit-signing.key"
	}
	if c.Keys.PseudonymFile == "" {
		c.Keys.PseudonymFile = "keys/pseudonym.key"
	}
	if c.Keys.JobFile == "" {
		c.Keys.JobFile = "keys/job.key"
	}
	if c.Keys.BotPickleFile == "" {
		c.Keys.BotPickleFile = "keys/bot-pickle.key"
	}
	if c.Keys.ArchiveFile == "" {
		c.Keys.ArchiveFile = "keys/archive.key"
	}
	if c.Audit.CheckpointFile == "" {
		c.Audit.CheckpointFile = "audit-checkpoints.jsonl"
	}
	if c.Audit.CheckpointEvery == 0 {
		c.Audit.CheckpointEvery = 10000
	}
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = Duration(time.Minute)
	}
	if c.Logging.Level == "" {
		c.Logging.Level = "info"
	}
	if c.Logging.Format == "" {
		c.Logging.Format = "json"
	}
	if c.Homeserver.PusherCheckInterval == 0 {
		c.Homeserver.PusherCheckInterval = Duration(time.Hour)
	}
	if c.Compliance.BackupMaxAge == 0 {
		c.Compliance.BackupMaxAge = Duration(26 * time.Hour)
	}
	if c.Compliance.ExporterMaxLag == 0 {
		c.Compliance.ExporterMaxLag = Duration(5 * time.Minute)
	}
	if c.Homeserver.PurgeInterval == 0 {
		c.Homeserver.PurgeInterval = Duration(time.Hour)
	}
	if c.Jobs.Workers == 0 {
		c.Jobs.Workers = 4
	}
	if c.Jobs.MaxAttempts == 0 {
		c.Jobs.MaxAttempts = 12
	}
	if c.Jobs.Backoff == 0 {
		c.Jobs.Backoff = Duration(250 * time.Millisecond)
	}
	if c.Jobs.ExpireAs == "" {
		c.Jobs.ExpireAs = "sender"
	}
	if c.Jobs.MaxBackoff == 0 {
		c.Jobs.MaxBackoff = Duration(5 * time.Minute)
	}
	if c.Jobs.KeepMetadata == 0 {
		c.Jobs.KeepMetadata = Duration(30 * 24 * time.Hour)
	}
}

var (
	domainRE    = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)
	localpartRE = regexp.MustCompile(`^[a-z0-9._=/+-]+$`)
	// An exporter's name keys its cursor and labels its metrics.
	exporterNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,40}$`)
	// RFC 5424 SD-ID: name@<private enterprise number>.
	sdidRE = regexp.MustCompile(`^[!-~]{1,32}@[0-9]+(\.[0-9]+)*$`)
)

func (c *Config) validate(d *strictyaml.Doc) {
	checkURL(d, "homeserver.address", c.Homeserver.Address)
	c.Pager.validate(d)
	switch {
	case c.Homeserver.Domain == "":
		d.Errorf("homeserver.domain", "homeserver.domain is required (the server name in user IDs)")
	case !domainRE.MatchString(c.Homeserver.Domain):
		d.Errorf("homeserver.domain", "homeserver.domain %q is not a valid server name", c.Homeserver.Domain)
	}
	if r := c.Compliance.PrivacyOfficerRoom; r != "" && (!strings.HasPrefix(r, "!") || !strings.Contains(r, ":")) {
		d.Errorf("compliance.privacy_officer_room", "compliance.privacy_officer_room %q is not a room ID (!opaque:server)", r)
	}
	if v := c.Compliance.HomeserverMinVersion; v != "" && !VersionRE.MatchString(v) {
		d.Errorf("compliance.homeserver_min_version", "compliance.homeserver_min_version %q is not a version (numbers and dots: 1.150.0)", v)
	}
	if c.Homeserver.KeepAlive != 0 && c.Homeserver.KeepAlive.D() < 500*time.Millisecond {
		d.Errorf("homeserver.keepalive", "homeserver.keepalive must be 0 (off) or at least 500ms")
	}
	if c.Audit.CheckpointEvery < 1 {
		d.Errorf("audit.checkpoint_every", "audit.checkpoint_every must be at least 1 record")
	}
	if c.Audit.CheckpointInterval.D() < time.Second {
		d.Errorf("audit.checkpoint_interval", "audit.checkpoint_interval must be at least 1s")
	}
	names := map[string]bool{}
	for i := range c.Audit.Exporters {
		e := &c.Audit.Exporters[i]
		at := fmt.Sprintf("audit.exporters[%d]", i)
		if !exporterNameRE.MatchString(e.Name) {
			d.Errorf(at+".name", "%s.name %q must be 1-40 lowercase letters, digits, - or _ (it names the exporter's cursor and metrics)", at, e.Name)
		} else if names[e.Name] {
			d.Errorf(at+".name", "%s.name %q is used twice", at, e.Name)
		}
		names[e.Name] = true
		switch e.Type {
		case "jsonl":
			if e.Path == "" {
				d.Errorf(at+".path", "%s.path is required for a jsonl exporter", at)
			}
			if e.MaxSizeMB < 0 {
				d.Errorf(at+".max_size_mb", "%s.max_size_mb must not be negative", at)
			}
		case "syslog":
			if e.Address == "" {
				d.Errorf(at+".address", "%s.address is required for a syslog exporter (host or host:port; port 6514 by default)", at)
			}
			if (e.CertFile == "") != (e.KeyFile == "") {
				d.Errorf(at+".cert_file", "%s.cert_file and key_file go together (the client certificate)", at)
			}
			if e.SDID != "" && !sdidRE.MatchString(e.SDID) {
				d.Errorf(at+".sd_id", "%s.sd_id %q must look like name@<enterprise number>", at, e.SDID)
			}
		case "fhir":
			if e.Path == "" && e.URL == "" {
				d.Errorf(at+".path", "%s needs path (an NDJSON file), url (a FHIR server), or both", at)
			}
			if e.URL != "" {
				checkURL(d, at+".url", e.URL)
			}
		default:
			d.Errorf(at+".type", "%s.type must be jsonl, syslog or fhir, not %q", at, e.Type)
		}
	}
	if c.Jobs.ExpireAs != "sender" && c.Jobs.ExpireAs != "bot" {
		d.Errorf("jobs.expire_as", "jobs.expire_as must be sender or bot, not %q", c.Jobs.ExpireAs)
	}
	if c.Admin.Listen != "" {
		if host, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			d.Errorf("admin.listen", "admin.listen %q is not host:port", c.Admin.Listen)
		} else if !loopback(host) && (c.Admin.TLSCertFile == "" || c.Admin.TLSKeyFile == "") {
			// The bearer token and wipe requests would cross the network
			// in clear.
			d.Errorf("admin.listen", "admin.listen %q is not a loopback address: set admin.tls_cert_file and admin.tls_key_file, or listen on 127.0.0.1", c.Admin.Listen)
		}
		if len(c.Admin.Token.Reveal()) < 32 && (c.Admin.Token.Set() || len(c.Admin.Tokens) == 0) {
			d.Errorf("admin.token", "admin.token must be at least 32 random characters when admin.listen is set (or list per-person admin.tokens instead)")
		}
	}
	seen := map[string]bool{}
	for i, t := range c.Admin.Tokens {
		at := fmt.Sprintf("admin.tokens[%d]", i)
		if !adminNameRE.MatchString(t.Name) {
			d.Errorf(at+".name", "%s.name %q must be 1-64 letters, digits or ._@-", at, t.Name)
		} else if seen[t.Name] {
			d.Errorf(at+".name", "%s.name %q is listed twice", at, t.Name)
		}
		seen[t.Name] = true
		if !sha256HexRE.MatchString(t.SHA256) {
			d.Errorf(at+".sha256", "%s.sha256 must be the token's SHA-256 in 64 lowercase hex digits (matrix-hipaa admin-token -name NAME prints it)", at)
		}
	}
	if c.Admin.Room != "" && (c.Admin.Room[0] != '!' || !strings.Contains(c.Admin.Room, ":")) {
		d.Errorf("admin.room", "admin.room %q is not a room ID (!id:server)", c.Admin.Room)
	}
	if c.Admin.Room != "" && len(c.Admin.Users) == 0 {
		d.Errorf("admin.room", "admin.room is set but admin.users lists no one who may give commands there")
	}
	for i, u := range c.Admin.Users {
		local, server, ok := strings.Cut(strings.TrimPrefix(u, "@"), ":")
		if !strings.HasPrefix(u, "@") || !ok || !localpartRE.MatchString(local) || !domainRE.MatchString(server) {
			d.Errorf(fmt.Sprintf("admin.users[%d]", i), "admin.users: %q is not a user ID (@name:server)", u)
		}
	}
	if c.Homeserver.PurgeHistory && c.Homeserver.Software != "synapse" {
		d.Errorf("homeserver.purge_history", "homeserver.purge_history needs Synapse's admin API (homeserver.software: synapse)")
	}
	if c.Homeserver.PusherCheckInterval != 0 && c.Homeserver.PusherCheckInterval.D() < time.Second {
		d.Errorf("homeserver.pusher_check_interval", "homeserver.pusher_check_interval must be at least 1s, not %s", c.Homeserver.PusherCheckInterval.D())
	}
	if c.Homeserver.PurgeInterval != 0 && c.Homeserver.PurgeInterval.D() < time.Second {
		d.Errorf("homeserver.purge_interval", "homeserver.purge_interval must be at least 1s, not %s", c.Homeserver.PurgeInterval.D())
	}
	switch c.Homeserver.Software {
	case "synapse", "dendrite", "generic":
	default:
		d.Errorf("homeserver.software", "homeserver.software must be synapse, dendrite or generic, not %q", c.Homeserver.Software)
	}
	if c.AppService.Listen == "" {
		d.Errorf("appservice.listen", "appservice.listen is required (host:port the homeserver pushes to)")
	} else if _, _, err := net.SplitHostPort(c.AppService.Listen); err != nil {
		d.Errorf("appservice.listen", "appservice.listen %q is not host:port", c.AppService.Listen)
	}
	checkURL(d, "appservice.url", c.AppService.URL)
	if !localpartRE.MatchString(c.AppService.Bot) {
		d.Errorf("appservice.bot", "appservice.bot %q is not a valid user localpart (lowercase letters, digits, ._=/+-)", c.AppService.Bot)
	}
	for _, t := range []struct {
		key string
		val Secret
	}{{"appservice.as_token", c.AppService.ASToken}, {"appservice.hs_token", c.AppService.HSToken}} {
		// Empty tokens are filled in by generate-registration; short ones are guessable.
		if t.val.Set() && len(t.val.Reveal()) < 32 {
			d.Errorf(t.key, "%s is too short: use at least 32 random characters (generate-registration makes them)", t.key)
		}
	}
	c.validateTLS(d)
	if c.AppService.MaxBodyBytes < 1024 {
		d.Errorf("appservice.max_body_bytes", "appservice.max_body_bytes must be at least 1024")
	}
	switch c.Database.Type {
	case "sqlite3":
		if c.Database.URI == "" {
			d.Errorf("database.uri", "database.uri is required (a file path for sqlite3)")
		}
	case "postgres":
		if !strings.HasPrefix(c.Database.URI, "postgres://") && !strings.HasPrefix(c.Database.URI, "postgresql://") && !strings.Contains(c.Database.URI, "=") {
			d.Errorf("database.uri", "database.uri must be a postgres:// URL or a key=value connection string")
		}
	default:
		d.Errorf("database.type", "database.type must be sqlite3 or postgres, not %q", c.Database.Type)
	}
	if c.Database.MaxOpenConns < 0 {
		d.Errorf("database.max_open_conns", "database.max_open_conns cannot be negative")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			d.Errorf("metrics.listen", "metrics.listen %q is not host:port", c.Metrics.Listen)
		}
	}
	switch c.Logging.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		d.Errorf("logging.level", "logging.level must be trace, debug, info, warn or error")
	}
	switch c.Logging.Format {
	case "json", "pretty":
	default:
		d.Errorf("logging.format", "logging.format must be json or pretty")
	}
	if c.Jobs.Workers < 1 || c.Jobs.Workers > 256 {
		d.Errorf("jobs.workers", "jobs.workers must be between 1 and 256")
	}
	if c.Jobs.MaxAttempts < 1 {
		d.Errorf("jobs.max_attempts", "jobs.max_attempts must be at least 1")
	}
	if c.Jobs.KeepMetadata.D() < 24*time.Hour {
		d.Errorf("jobs.keep_metadata", "jobs.keep_metadata must be at least 24h: a homeserver retrying a transaction must still find its events")
	}
	if c.Jobs.MaxBackoff < c.Jobs.Backoff {
		d.Errorf("jobs.max_backoff", "jobs.max_backoff must not be shorter than jobs.backoff")
	}
}

// validateTLS checks the service's own TLS settings: for each listener,
// both files or neither, and a certificate and key that load and match; the
// application service's url must then be https://.
func (c *Config) validateTLS(d *strictyaml.Doc) {
	if c.checkTLSPair(d, "appservice", c.AppService.TLSCertFile, c.AppService.TLSKeyFile) {
		if u, err := url.Parse(c.AppService.URL); err == nil && u.Scheme != "https" {
			d.Errorf("appservice.url", "appservice.url must be https:// when the service serves TLS (appservice.tls_cert_file)")
		}
	}
	c.checkTLSPair(d, "admin", c.Admin.TLSCertFile, c.Admin.TLSKeyFile)
	if pw, err := c.BotPassword(); err != nil || (c.AppService.BotPasswordFile != "" && pw == "") {
		d.Errorf("appservice.bot_password_file", "appservice.bot_password_file: cannot read a password from %s", c.AppService.BotPasswordFile)
	}
}

// checkTLSPair reports whether section's TLS files are set, and says what is
// wrong with them if they are.
func (c *Config) checkTLSPair(d *strictyaml.Doc, section, cert, key string) bool {
	switch {
	case cert == "" && key == "":
		return false
	case cert == "":
		d.Errorf(section+".tls_key_file", "%s.tls_key_file needs %s.tls_cert_file beside it", section, section)
	case key == "":
		d.Errorf(section+".tls_cert_file", "%s.tls_cert_file needs %s.tls_key_file beside it", section, section)
	default:
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			d.Errorf(section+".tls_cert_file", "%s.tls_cert_file and tls_key_file: %v", section, err)
		}
	}
	return true
}

func checkURL(d *strictyaml.Doc, key, v string) {
	if v == "" {
		d.Errorf(key, "%s is required", key)
		return
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.Errorf(key, "%s %q must be an http:// or https:// URL", key, v)
	}
}

// Describe is a one-line, secret-free summary for the start-up log.
func (c *Config) Describe() string {
	return fmt.Sprintf("homeserver=%s software=%s listen=%s db=%s", c.Homeserver.Address, c.Homeserver.Software, c.AppService.Listen, c.Database.Type)
}
