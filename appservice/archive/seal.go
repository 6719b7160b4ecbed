package archive

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
)

// The at-rest format of one archive record (docs/archive.md):
//
//	byte 0      version, 1
//	bytes 1-8   key ID: the first 8 bytes of SHA-256("matrix-hipaa archive key id v1" || key)
//	bytes 9-32  XChaCha20-Poly1305 nonce (24 random bytes)
//	the rest    ciphertext and its 16-byte tag
//
// The additional data is "matrix-hipaa archive v1", a zero byte and the
// record's own name (its kind and ID): a sealed blob moved onto another
// record does not open.
const (
	formatVersion = 1
	keyIDLen      = 8
	headerLen     = 1 + keyIDLen + chacha20poly1305.NonceSizeX
	aadPrefix     = "matrix-hipaa archive v1\x00"
	keyIDLabel    = "matrix-hipaa archive key id v1"
)

// Keyring is the archive key in force, which seals, and the retired ones,
// which still open what they sealed.
type Keyring struct {
	current string
	keys    map[string][]byte
}

// KeyID names a key in records: hex of its first 8 digest bytes.
func KeyID(key []byte) string {
	sum := sha256.Sum256(append([]byte(keyIDLabel), key...))
	return hex.EncodeToString(sum[:keyIDLen])
}

// NewKeyring is a ring sealing with current and opening with every key.
func NewKeyring(current []byte, retired ...[]byte) (*Keyring, error) {
	if len(current) != chacha20poly1305.KeySize {
		return nil, fmt.Errorf("archive key must be %d bytes, got %d", chacha20poly1305.KeySize, len(current))
	}
	r := &Keyring{current: KeyID(current), keys: map[string][]byte{}}
	for _, k := range append([][]byte{current}, retired...) {
		if len(k) != chacha20poly1305.KeySize {
			return nil, fmt.Errorf("retired archive key must be %d bytes, got %d", chacha20poly1305.KeySize, len(k))
		}
		r.keys[KeyID(k)] = k
	}
	return r, nil
}

// LoadKeyring reads the archive key file (created 0600 if missing) and the
// retired keys beside it.
func LoadKeyring(path string) (*Keyring, error) {
	cur, old, err := audit.LoadKeyRing(path, audit.HeadArchive)
	if err != nil {
		return nil, fmt.Errorf("archive key: %w", err)
	}
	return NewKeyring(cur, old...)
}

// Current is the ID of the key that seals.
func (r *Keyring) Current() string { return r.current }

// Has reports whether the ring holds the key with this ID.
func (r *Keyring) Has(id string) bool { _, ok := r.keys[id]; return ok }

// Seal encrypts plaintext for the record named name, with the key in force.
func (r *Keyring) Seal(name string, plaintext []byte) ([]byte, error) {
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return r.sealWith(r.current, nonce, name, plaintext)
}

func (r *Keyring) sealWith(keyID string, nonce []byte, name string, plaintext []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(r.keys[keyID])
	if err != nil {
		return nil, err
	}
	id, _ := hex.DecodeString(keyID)
	out := make([]byte, 0, headerLen+len(plaintext)+aead.Overhead())
	out = append(out, formatVersion)
	out = append(out, id...)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, []byte(aadPrefix+name)), nil
}

// ErrTampered is what Open says of a record that does not authenticate.
var ErrTampered = errors.New("does not authenticate: the record was altered, moved from another record, or sealed with another key of the same ID")

// Open decrypts the record named name. Every failure names the record.
func (r *Keyring) Open(name string, sealed []byte) ([]byte, error) {
	if len(sealed) < headerLen+chacha20poly1305.Overhead {
		return nil, fmt.Errorf("archive record %s: %d bytes is too short to be a sealed record", name, len(sealed))
	}
	if sealed[0] != formatVersion {
		return nil, fmt.Errorf("archive record %s: format version %d is not one this build reads (1)", name, sealed[0])
	}
	keyID := hex.EncodeToString(sealed[1 : 1+keyIDLen])
	key, ok := r.keys[keyID]
	if !ok {
		return nil, fmt.Errorf("archive record %s: sealed with key %s, which is not in the archive key file or its retired keys", name, keyID)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, sealed[1+keyIDLen:headerLen], sealed[headerLen:], []byte(aadPrefix+name))
	if err != nil {
		return nil, fmt.Errorf("archive record %s (key %s): %w", name, keyID, ErrTampered)
	}
	return plain, nil
}

// KeyOf is the ID of the key that sealed a record ("" if it is too short).
func KeyOf(sealed []byte) string {
	if len(sealed) < headerLen {
		return ""
	}
	return hex.EncodeToString(sealed[1 : 1+keyIDLen])
}
