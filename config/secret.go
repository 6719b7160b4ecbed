package config

// Secret holds a token or password. It prints, logs and marshals as "<secret>"
// so a config dump, a log line or an error message can never leak it; Reveal is
// the one way to read it, and call sites that use it are easy to audit.
type Secret string

const redacted = "<secret>"

func (s Secret) String() string               { return s.mask() }
func (s Secret) GoString() string             { return s.mask() }
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.mask()), nil }
func (s Secret) MarshalYAML() (any, error)    { return s.mask(), nil }
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.mask() + `"`), nil }

// Reveal returns the secret itself, for the HTTP header or file it belongs in.
func (s Secret) Reveal() string { return string(s) }

// Set reports whether a value was configured.
func (s Secret) Set() bool { return s != "" }

func (s Secret) mask() string {
	if s == "" {
		return ""
	}
	return redacted
}
