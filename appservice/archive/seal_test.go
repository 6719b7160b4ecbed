package archive

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
)

// The known answer was computed outside this code, with PyCryptodome's
// XChaCha20-Poly1305 (Debian's python3-pycryptodome):
//
//	key = bytes(range(32)); nonce = bytes(range(0x40, 0x58))
//	kid = sha256(b"matrix-hipaa archive key id v1" + key)[:8]
//	c = ChaCha20_Poly1305.new(key=key, nonce=nonce)
//	c.update(b"matrix-hipaa archive v1\x00" + name)
//	blob = b"\x01" + kid + nonce + ciphertext + tag
const (
	katName   = "message/$ev1:hospital.example"
	katPlain  = `{"body":"Canary 7731: K+ 6.1, repeat BMP"}`
	katKeyID  = "ce628fecabb9c962"
	katSealed = "01ce628fecabb9c962404142434445464748494a4b4c4d4e4f5051525354555657" +
		"af1b671fb4995b2cadb7e6d0ceee1cb2a58d9ef5297918b14a07d374252451f5669c631a75d0c940ddcf47879dc34f26d3a19100c326fbaeebf8"
)

func katKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func katNonce() []byte {
	n := make([]byte, 24)
	for i := range n {
		n[i] = byte(0x40 + i)
	}
	return n
}

func TestSealKnownAnswer(t *testing.T) {
	r, err := NewKeyring(katKey())
	if err != nil {
		t.Fatal(err)
	}
	if r.Current() != katKeyID {
		t.Fatalf("key ID %s, want %s", r.Current(), katKeyID)
	}
	got, err := r.sealWith(r.Current(), katNonce(), katName, []byte(katPlain))
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != katSealed {
		t.Fatalf("sealed\n %x\nwant\n %s", got, katSealed)
	}
	want, _ := hex.DecodeString(katSealed)
	plain, err := r.Open(katName, want)
	if err != nil || string(plain) != katPlain {
		t.Fatalf("open: %q, %v", plain, err)
	}
	if KeyOf(want) != katKeyID {
		t.Errorf("KeyOf %s", KeyOf(want))
	}
}

// TestFlippedByteNamesTheRecord: every byte of a sealed record is covered;
// flipping any one fails, with an error that names the record.
func TestFlippedByteNamesTheRecord(t *testing.T) {
	r, _ := NewKeyring(katKey())
	sealed, _ := hex.DecodeString(katSealed)
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		_, err := r.Open(katName, bad)
		if err == nil {
			t.Fatalf("byte %d flipped: opened", i)
		}
		if !strings.Contains(err.Error(), "archive record "+katName) {
			t.Fatalf("byte %d flipped: error %q does not name the record", i, err)
		}
		if i >= headerLen || i == 0 {
			// Past the key ID a flip is an authentication failure (or, in
			// byte 0, an unknown version); in the key ID, an unknown key.
			if i > 0 && !errors.Is(err, ErrTampered) {
				t.Fatalf("byte %d flipped: %v, want ErrTampered", i, err)
			}
		}
	}
	// Moved onto another record: refused.
	if _, err := r.Open("message/$ev2:hospital.example", sealed); !errors.Is(err, ErrTampered) {
		t.Fatalf("moved record: %v", err)
	}
	if _, err := r.Open(katName, sealed[:20]); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Fatalf("truncated record: %v", err)
	}
}

// TestKeyRotationKeepsOldRecordsReadable: after `keys rotate -key
// archive`, new records are sealed with the new key, old ones still open
// with the retired key beside it, and without that file they name the key
// they need.
func TestKeyRotationKeepsOldRecordsReadable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "archive.key")
	r1, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	old, err := r1.Seal("message/$a", []byte("before"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.PrepareRotation(path, "archive"); err != nil {
		t.Fatal(err)
	}
	retired, err := audit.FinishRotation(path, "20261205T000000Z")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Current() == r1.Current() || !r2.Has(r1.Current()) {
		t.Fatalf("after rotation: current %s (was %s), has old %v", r2.Current(), r1.Current(), r2.Has(r1.Current()))
	}
	fresh, _ := r2.Seal("message/$b", []byte("after"))
	if KeyOf(fresh) != r2.Current() || KeyOf(old) != r1.Current() {
		t.Fatalf("key IDs: new %s old %s", KeyOf(fresh), KeyOf(old))
	}
	for name, rec := range map[string][]byte{"message/$a": old, "message/$b": fresh} {
		if _, err := r2.Open(name, rec); err != nil {
			t.Fatalf("open %s after rotation: %v", name, err)
		}
	}
	if err := os.Remove(retired); err != nil {
		t.Fatal(err)
	}
	r3, _ := LoadKeyring(path)
	_, err = r3.Open("message/$a", old)
	if err == nil || !strings.Contains(err.Error(), r1.Current()) || !strings.Contains(err.Error(), "message/$a") {
		t.Fatalf("without the retired key: %v", err)
	}
	// A key file others can read is refused, as every key of the service.
	os.Chmod(path, 0o644)
	if _, err := LoadKeyring(path); err == nil || !strings.Contains(err.Error(), "readable by other users") {
		t.Fatalf("world-readable key: %v", err)
	}
}

// FuzzOpen: whatever a database writer puts in a sealed column, Open
// returns an error naming the record, never a panic and never plaintext,
// unless it is the record sealed under that name.
func FuzzOpen(f *testing.F) {
	sealed, _ := hex.DecodeString(katSealed)
	f.Add(sealed, katName)
	f.Add([]byte{1}, "x")
	f.Add([]byte{}, "")
	f.Fuzz(func(t *testing.T, blob []byte, name string) {
		r, _ := NewKeyring(katKey())
		plain, err := r.Open(name, blob)
		if err == nil {
			if name != katName || !bytes.Equal(blob, sealed) || string(plain) != katPlain {
				t.Fatalf("opened a record that is not the one sealed: %q", plain)
			}
			return
		}
		if !strings.Contains(err.Error(), "archive record "+name) {
			t.Fatalf("error %q does not name the record", err)
		}
	})
}
