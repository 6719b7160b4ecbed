package audit

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Keys are derived from one 32-byte master key kept in audit.key_file: one for
// the chain MAC, one for pseudonyms and one that pickles the bot's encryption
// keys at rest, so no use can be turned against another.
type Keys struct {
	chain  []byte
	pseudo []byte
	pickle []byte
	job    []byte
}

// NewKeys derives the working keys from a master key.
func NewKeys(master []byte) (*Keys, error) {
	if len(master) < 32 {
		return nil, fmt.Errorf("audit key must be at least 32 bytes, got %d", len(master))
	}
	return &Keys{
		chain:  derive(master, "matrix-hipaa audit chain v1"),
		pseudo: derive(master, "matrix-hipaa pseudonym v1"),
		pickle: derive(master, "matrix-hipaa bot crypto pickle v1"),
		job:    derive(master, "matrix-hipaa job mac v1"),
	}, nil
}

// JobKey MACs each queued job, so that a database writer cannot queue one.
func (k *Keys) JobKey() []byte { return k.job }

// PickleKey encrypts the bot's Olm and Megolm state in the database.
func (k *Keys) PickleKey() []byte { return k.pickle }

func derive(master []byte, label string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// LoadOrCreateKey reads the hex master key at path, creating it (mode 0600,
// never overwriting) if it does not exist. A key file others can read is
// refused: with it anyone could forge the chain or match pseudonyms.
func LoadOrCreateKey(path string) (*Keys, error) {
	master, err := loadOrCreateSecret(path, "audit key", 32)
	if err != nil {
		return nil, err
	}
	return NewKeys(master)
}

// loadOrCreateSecret reads n or more random bytes kept hex-encoded in path,
// creating the file (mode 0600, never overwriting) if it does not exist, and
// refusing one that other users can read.
func loadOrCreateSecret(path, what string, n int) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		secret := make([]byte, n)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return loadOrCreateSecret(path, what, n) // another process made it first
		}
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", what, err)
		}
		_, err = f.WriteString(hex.EncodeToString(secret) + "\n")
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return nil, fmt.Errorf("write %s: %w", what, err)
		}
		return secret, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return checkSecret(path, what, n, data)
}

// CheckKeyFiles checks the audit key and signing key files that exist as the
// service reads them at start (private, hex, long enough); missing ones are
// fine, the service makes them.
func CheckKeyFiles(keyFile, signingKeyFile string) error {
	var errs []error
	for _, k := range []struct {
		path, what string
		n          int
	}{{keyFile, "audit key", 32}, {signingKeyFile, "audit signing key", ed25519.SeedSize}} {
		data, err := os.ReadFile(k.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			_, err = checkSecret(k.path, k.what, k.n, data)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkSecret decodes a secret file's contents, refusing one other users can
// read or that is too short.
func checkSecret(path, what string, n int, data []byte) ([]byte, error) {
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s is readable by other users (mode %04o): run chmod 600 on it", what, path, st.Mode().Perm())
	}
	secret, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("%s %s is not hex", what, path)
	}
	if len(secret) < n {
		return nil, fmt.Errorf("%s %s holds %d bytes, want %d", what, path, len(secret), n)
	}
	return secret, nil
}

// User is the pseudonym of a Matrix user ID: stable for one deployment, not
// reversible without the key (a plain hash of a user ID falls to a dictionary).
func (k *Keys) User(mxid string) string { return k.pseudonym("u_", "user", mxid) }

// Room is the pseudonym of a room ID.
func (k *Keys) Room(roomID string) string { return k.pseudonym("r_", "room", roomID) }

func (k *Keys) pseudonym(prefix, kind, id string) string {
	if id == "" {
		return ""
	}
	m := hmac.New(sha256.New, k.pseudo)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(id))
	var sum [32]byte
	return prefix + hex.EncodeToString(m.Sum(sum[:0])[:16])
}
