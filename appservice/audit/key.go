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
	"path/filepath"
	"strings"
)

// Keys are the service's symmetric keys, one purpose each, each in a file of
// its own: the chain MAC key (audit.key_file: all that verifying the chain
// needs), the pseudonym key (which turns user and room IDs into pseudonyms:
// whoever has it can test a guess), the job MAC key, and the key that
// pickles the bot's encryption keys at rest. An auditor given the chain key
// can neither reverse pseudonyms nor open the bot's crypto store.
type Keys struct {
	chain  []byte
	pseudo []byte
	pickle []byte
	job    []byte
}

// Labels of the derivations from one master key (the layout before keys
// were split, kept so that splitting an old master keeps every value).
const (
	labelChain  = "matrix-hipaa audit chain v1"
	labelPseudo = "matrix-hipaa pseudonym v1"
	labelPickle = "matrix-hipaa bot crypto pickle v1"
	labelJob    = "matrix-hipaa job mac v1"
)

// NewKeys derives every key from one master key (tests, and the old layout).
func NewKeys(master []byte) (*Keys, error) {
	if len(master) < 32 {
		return nil, fmt.Errorf("audit key must be at least 32 bytes, got %d", len(master))
	}
	return &Keys{
		chain:  derive(master, labelChain),
		pseudo: derive(master, labelPseudo),
		pickle: derive(master, labelPickle),
		job:    derive(master, labelJob),
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

// KeyFiles names each key's file.
type KeyFiles struct {
	Chain, Pseudonym, Job, Pickle string
}

// The first line of each key file says what it holds; a chain key file
// without it is a master key of the old, single-key layout.
const (
	headChain  = "# matrix-hipaa audit chain key"
	headPseudo = "# matrix-hipaa pseudonym key"
	headJob    = "# matrix-hipaa job MAC key"
	headPickle = "# matrix-hipaa bot pickle key"
	// HeadArchive heads the archive key file (appservice/archive).
	HeadArchive = "# matrix-hipaa archive key"
)

// LoadKeys reads every key, creating those missing (mode 0600, never
// overwriting). A chain key file of the old layout (one master key from
// which everything was derived) is split first: the other keys are written
// to their files with the values they always had, then the chain key file
// is replaced by the chain key alone, so the master no longer exists.
func LoadKeys(f KeyFiles) (*Keys, error) {
	if err := splitMaster(f); err != nil {
		return nil, err
	}
	var k Keys
	var err error
	for _, x := range []struct {
		dst        *[]byte
		path, head string
	}{{&k.chain, f.Chain, headChain}, {&k.pseudo, f.Pseudonym, headPseudo}, {&k.job, f.Job, headJob}, {&k.pickle, f.Pickle, headPickle}} {
		if *x.dst, err = loadOrCreateSecret(x.path, x.head, 32); err != nil {
			return nil, err
		}
	}
	return &k, nil
}

// rotatable names the keys that rotate in place, with their file heads.
var rotatable = map[string]string{"pseudonym": headPseudo, "job": headJob, "archive": HeadArchive}

// PrepareRotation makes the new key of an in-place rotation, in path+".new"
// (0600, synced), or returns the one an interrupted rotation left there.
func PrepareRotation(path, which string) ([]byte, error) {
	head, ok := rotatable[which]
	if !ok {
		return nil, fmt.Errorf("the %s key does not rotate in place (see docs/keys.md)", which)
	}
	return loadOrCreateSecret(path+".new", head, 32)
}

// FinishRotation puts the new key in place and keeps the old one beside it
// as path+".retired-"+stamp, for the key vault.
func FinishRotation(path, stamp string) (string, error) {
	retired := path + ".retired-" + stamp
	if err := os.Link(path, retired); err != nil {
		return "", err
	}
	if err := os.Rename(path+".new", path); err != nil {
		return "", err
	}
	return retired, syncDir(filepath.Dir(path))
}

// LoadKeyRing reads a key that rotates by keeping its retired keys (the
// archive's): the one in force at path, created (0600) if missing, and every
// retired one beside it (path.retired-*, as FinishRotation leaves them),
// each checked as the service checks its keys.
func LoadKeyRing(path, head string) (current []byte, retired [][]byte, err error) {
	if current, err = loadOrCreateSecret(path, head, 32); err != nil {
		return nil, nil, err
	}
	old, err := filepath.Glob(path + ".retired-*")
	if err != nil {
		return nil, nil, err
	}
	for _, p := range old {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, err
		}
		k, err := checkSecret(p, "retired key", 32, data)
		if err != nil {
			return nil, nil, err
		}
		retired = append(retired, k)
	}
	return current, retired, nil
}

// LoadChainKey reads only the chain key: all that verifying the chain (and
// appending the verification's own record) needs. It creates nothing; a
// master key of the old layout is accepted (the chain key is derived).
func LoadChainKey(path string) (*Keys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the audit chain key: %w", err)
	}
	secret, err := checkSecret(path, "audit chain key", 32, data)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(string(data), headChain) {
		secret = derive(secret, labelChain)
	}
	return &Keys{chain: secret}, nil
}

// splitMaster splits an old-layout master key file (see LoadKeys).
func splitMaster(f KeyFiles) error {
	data, err := os.ReadFile(f.Chain)
	if errors.Is(err, fs.ErrNotExist) || err == nil && strings.HasPrefix(string(data), headChain) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the audit key: %w", err)
	}
	master, err := checkSecret(f.Chain, "audit key", 32, data)
	if err != nil {
		return err
	}
	for _, x := range []struct{ path, head, label string }{
		{f.Pseudonym, headPseudo, labelPseudo}, {f.Job, headJob, labelJob}, {f.Pickle, headPickle, labelPickle},
	} {
		if err := writeSecret(x.path, x.head, derive(master, x.label)); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("split the audit key: %w", err)
		}
	}
	tmp := f.Chain + ".split"
	os.Remove(tmp)
	if err := writeSecret(tmp, headChain, derive(master, labelChain)); err != nil {
		return fmt.Errorf("split the audit key: %w", err)
	}
	if err := os.Rename(tmp, f.Chain); err != nil {
		return fmt.Errorf("split the audit key: %w", err)
	}
	return syncDir(filepath.Dir(f.Chain))
}

// loadOrCreateSecret reads n or more random bytes kept hex-encoded in path,
// creating the file (mode 0600, never overwriting) if it does not exist, and
// refusing one that other users can read.
func loadOrCreateSecret(path, head string, n int) ([]byte, error) {
	what := strings.TrimPrefix(head, "# matrix-hipaa ")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		secret := make([]byte, n)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		err := writeSecret(path, head, secret)
		if errors.Is(err, fs.ErrExist) {
			return loadOrCreateSecret(path, head, n) // another process made it first
		}
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", what, err)
		}
		return secret, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return checkSecret(path, what, n, data)
}

// writeSecret creates path (0600, not if it exists) holding head (a comment
// line, if any) and the secret in hex, synced.
func writeSecret(path, head string, secret []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if head != "" {
		head += "\n"
	}
	_, err = f.WriteString(head + hex.EncodeToString(secret) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// CheckKeyFiles checks the key files that exist as the service reads them
// at start (private, hex, long enough); missing ones are fine, the service
// makes them.
func CheckKeyFiles(f KeyFiles, signingKeyFile string) error {
	var errs []error
	for _, k := range []struct {
		path, what string
		n          int
	}{{f.Chain, "audit key", 32}, {f.Pseudonym, "pseudonym key", 32}, {f.Job, "job MAC key", 32}, {f.Pickle, "bot pickle key", 32},
		{signingKeyFile, "audit signing key", ed25519.SeedSize}} {
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
	var body strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "#") {
			body.WriteString(strings.TrimSpace(line))
		}
	}
	secret, err := hex.DecodeString(body.String())
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
