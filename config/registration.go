package config

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"gopkg.in/yaml.v3"
)

// Registration is the appservice registration file the homeserver loads.
type Registration struct {
	ID              string `yaml:"id"`
	URL             string `yaml:"url"`
	ASToken         string `yaml:"as_token"`
	HSToken         string `yaml:"hs_token"`
	SenderLocalpart string `yaml:"sender_localpart"`
	RateLimited     bool   `yaml:"rate_limited"`
	// ReceiveEphemeral asks for ephemeral events (read receipts) in
	// transactions (MSC2409); PushEphemeral is the name Synapse read
	// before the MSC was merged. Dendrite sends none either way.
	ReceiveEphemeral bool       `yaml:"receive_ephemeral"`
	PushEphemeral    bool       `yaml:"de.sorunome.msc2409.push_ephemeral"`
	Namespaces       Namespaces `yaml:"namespaces"`
}

type Namespaces struct {
	Users   []Namespace `yaml:"users"`
	Aliases []Namespace `yaml:"aliases"`
	Rooms   []Namespace `yaml:"rooms"`
}

type Namespace struct {
	Exclusive bool   `yaml:"exclusive"`
	Regex     string `yaml:"regex"`
}

// Registration builds the registration for this config. The user namespace is
// every local user, non-exclusive: the service must see every room on the
// server and act as any local user (to redact their own plaintext), while users
// keep registering and logging in as usual.
//
// The registration's sender is a user of its own (SenderLocalpart), not the
// bot: Synapse refuses /sync to an application service's sender, and the
// bot syncs like any client, which is how room keys reach it. The bot is a
// user of the namespace, logged in the application service way.
func (c *Config) Registration() Registration {
	return Registration{
		ID:              c.AppService.ID,
		URL:             c.AppService.URL,
		ASToken:         c.AppService.ASToken.Reveal(),
		HSToken:         c.AppService.HSToken.Reveal(),
		SenderLocalpart: c.SenderLocalpart(),
		RateLimited:     false,
		// Read receipts: escalation of unread messages judges from them.
		ReceiveEphemeral: true,
		PushEphemeral:    true,
		Namespaces: Namespaces{
			Users: []Namespace{{Exclusive: false, Regex: UserNamespace(c.Homeserver.Domain)}},
			// The bot's keep-alive room's alias (homeserver.keepalive):
			// Synapse lets an application service create only aliases it
			// reserved.
			Aliases: []Namespace{{Exclusive: true, Regex: "^#" + regexp.QuoteMeta(KeepAliveAlias) + ":" + regexp.QuoteMeta(c.Homeserver.Domain) + "$"}},
			Rooms:   []Namespace{},
		},
	}
}

// KeepAliveAlias is the localpart of the bot's keep-alive room's alias.
const KeepAliveAlias = "_hipaa_keepalive"

// SenderLocalpart is the registration's sender: the bot's localpart with
// "-as" after it. The service never acts as it.
func (c *Config) SenderLocalpart() string { return c.AppService.Bot + "-as" }

// UserNamespace is the regex of every local user: anchored at both ends
// (homeservers search with it, so `@.*:example\.org` alone also matched
// @x:example.org.evil.com), and a localpart has no colon.
func UserNamespace(domain string) string {
	return "^@[^:]+:" + regexp.QuoteMeta(domain) + "$"
}

// EnsureTokens fills empty as_token/hs_token with fresh random 64-character
// tokens and writes them back into the config file, keeping its comments, by
// an atomic rename with mode 0600. It reports whether the file changed.
func (c *Config) EnsureTokens() (bool, error) {
	if c.AppService.ASToken.Set() && c.AppService.HSToken.Set() {
		return false, nil
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		return false, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return false, err
	}
	as := c.AppService.ASToken
	hs := c.AppService.HSToken
	if !as.Set() {
		as = Secret(RandomToken())
	}
	if !hs.Set() {
		hs = Secret(RandomToken())
	}
	section := mappingValue(root.Content[0], "appservice")
	if section == nil {
		return false, fmt.Errorf("%s: no appservice section to write tokens into", c.path)
	}
	setScalar(section, "as_token", as.Reveal())
	setScalar(section, "hs_token", hs.Reveal())
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return false, err
	}
	if err := WriteFileAtomic(c.path, buf.Bytes(), 0o600); err != nil {
		return false, err
	}
	c.AppService.ASToken, c.AppService.HSToken = as, hs
	return true, nil
}

func mappingValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func setScalar(m *yaml.Node, key, value string) {
	if v := mappingValue(m, key); v != nil {
		v.Kind, v.Tag, v.Value, v.Style = yaml.ScalarNode, "!!str", value, yaml.DoubleQuotedStyle
		return
	}
	m.Content = append(m.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key},
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Style: yaml.DoubleQuotedStyle})
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// RandomToken returns 64 characters from a 62-letter alphabet (~381 bits).
func RandomToken() string {
	out := make([]byte, 64)
	buf := make([]byte, 1)
	for i := 0; i < len(out); {
		if _, err := rand.Read(buf); err != nil {
			panic(err) // the OS random source never fails on Linux
		}
		// Reject the top of the byte range so every letter is equally likely.
		if int(buf[0]) >= 256-256%len(tokenAlphabet) {
			continue
		}
		out[i] = tokenAlphabet[int(buf[0])%len(tokenAlphabet)]
		i++
	}
	return string(out)
}

// WriteFileAtomic writes data to a temp file beside path, syncs it and renames
// it over path, so readers see the old file or the new one, never half of one.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
