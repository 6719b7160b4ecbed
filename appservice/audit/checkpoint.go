package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Checkpoints. The HMAC chain shows that no record was altered, removed or
// inserted, but whoever holds the chain key (or can simply delete the last
// records and rewind audit_head) could rewrite or shorten it. So, every N
// records or T seconds, the chain head (seq, time, MAC) is signed with an
// Ed25519 key and written three ways: as an audit.checkpoint record in the
// chain itself (so every exporter carries it off the machine), in the
// audit_checkpoint table, and appended to a checkpoint file meant to live
// elsewhere (another disk, WORM storage). A checkpoint vouching for a record
// the chain no longer has, or for a MAC the chain no longer holds, is proof
// of truncation or rewriting; anyone with the public key can check it.

// checkpointVersion is mixed into every signed message.
const checkpointVersion = "MHC1"

// SigningKey signs checkpoints.
type SigningKey struct {
	priv ed25519.PrivateKey
	Pub  ed25519.PublicKey
}

// LoadOrCreateSigningKey reads the hex Ed25519 seed at path, creating it
// (mode 0600) if missing.
func LoadOrCreateSigningKey(path string) (*SigningKey, error) {
	seed, err := loadOrCreateSecret(path, "# matrix-hipaa audit signing key", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed[:ed25519.SeedSize])
	return &SigningKey{priv: priv, Pub: priv.Public().(ed25519.PublicKey)}, nil
}

// ID names the key: the first 8 bytes of the public key's SHA-256.
func (k *SigningKey) ID() string { return KeyID(k.Pub) }

// KeyID names a public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "ed25519:" + hex.EncodeToString(sum[:8])
}

// FormatPublicKey is how the public key is handed to auditors.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey reads what FormatPublicKey wrote.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), "ed25519:")
	if !ok {
		return nil, errors.New(`public key must look like "ed25519:<base64>"`)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("public key is not 32 bytes of base64")
	}
	return ed25519.PublicKey(b), nil
}

// Checkpoint is a signed statement: record Seq of the chain has time TS and MAC.
type Checkpoint struct {
	Seq   int64
	TS    int64 // unix ms
	MAC   []byte
	Sig   []byte
	KeyID string
}

func checkpointMessage(seq, ts int64, mac []byte) []byte {
	msg := make([]byte, 0, len(checkpointVersion)+16+len(mac))
	msg = append(msg, checkpointVersion...)
	msg = binary.BigEndian.AppendUint64(msg, uint64(seq))
	msg = binary.BigEndian.AppendUint64(msg, uint64(ts))
	return append(msg, mac...)
}

// Valid reports whether the signature is pub's over the checkpoint.
func (c *Checkpoint) Valid(pub ed25519.PublicKey) bool {
	return len(c.Sig) == ed25519.SignatureSize && ed25519.Verify(pub, checkpointMessage(c.Seq, c.TS, c.MAC), c.Sig)
}

type checkpointJSON struct {
	Seq       int64  `json:"seq"`
	Time      string `json:"time"`
	TSMillis  int64  `json:"ts_ms"`
	MAC       string `json:"mac"`
	Signature string `json:"signature"`
	KeyID     string `json:"key_id"`
}

func (c *Checkpoint) line() []byte {
	b, _ := json.Marshal(checkpointJSON{
		Seq: c.Seq, Time: time.UnixMilli(c.TS).UTC().Format("2006-01-02T15:04:05.000Z07:00"), TSMillis: c.TS,
		MAC: hex.EncodeToString(c.MAC), Signature: base64.StdEncoding.EncodeToString(c.Sig), KeyID: c.KeyID,
	})
	return append(b, '\n')
}

// ReadCheckpointFile reads a checkpoint file. A last line cut short (a crash
// while appending) is ignored; any other malformed line is an error.
func ReadCheckpointFile(path string) ([]Checkpoint, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lines := bytes.Split(data, []byte("\n"))
	var out []Checkpoint
	for i, l := range lines {
		if len(l) == 0 {
			continue
		}
		var j checkpointJSON
		c := Checkpoint{}
		err := json.Unmarshal(l, &j)
		if err == nil {
			c.Seq, c.TS, c.KeyID = j.Seq, j.TSMillis, j.KeyID
			if c.MAC, err = hex.DecodeString(j.MAC); err == nil {
				c.Sig, err = base64.StdEncoding.DecodeString(j.Signature)
			}
		}
		if err != nil {
			if i == len(lines)-1 {
				break // cut short by a crash while appending
			}
			return nil, fmt.Errorf("%s:%d: not a checkpoint: %v", path, i+1, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Checkpointer writes checkpoints.
type Checkpointer struct {
	Chain    *Chain
	DB       *store.DB
	Key      *SigningKey
	File     string // appended to and fsynced; empty for none
	Every    int64  // records between checkpoints
	Interval time.Duration
}

// Run checkpoints until ctx ends, checking once a second.
func (c *Checkpointer) Run(ctx context.Context, onError func(error)) {
	t := time.NewTicker(min(time.Second, c.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := c.Once(ctx, false); err != nil && ctx.Err() == nil {
			onError(err)
		}
	}
}

// Once writes a checkpoint if records other than checkpoints were appended
// since the last one and either Every records or Interval have passed (or
// force). It returns the checkpoint written, if any.
func (c *Checkpointer) Once(ctx context.Context, force bool) (*Checkpoint, error) {
	var cp *Checkpoint
	err := c.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		cp = nil
		q := `SELECT seq, ts, mac FROM audit_head WHERE id = 1`
		if c.DB.Dialect == store.Postgres {
			q += ` FOR UPDATE`
		}
		var head Checkpoint
		err := c.DB.QueryRow(ctx, tx, q).Scan(&head.Seq, &head.TS, &head.MAC)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return err
		}
		var lastRecord, lastWritten sql.NullInt64
		if err := c.DB.QueryRow(ctx, tx, `SELECT MAX(record_seq), MAX(written_at) FROM audit_checkpoint`).Scan(&lastRecord, &lastWritten); err != nil {
			return err
		}
		if head.Seq <= lastRecord.Int64 {
			return nil // nothing but our own last checkpoint since
		}
		if !lastWritten.Valid {
			// The first checkpoint: the interval runs from the chain's start.
			if err := c.DB.QueryRow(ctx, tx, `SELECT ts FROM audit WHERE seq = 1`).Scan(&lastWritten.Int64); err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		now := c.Chain.Now()
		due := force || head.Seq-lastRecord.Int64 >= c.Every || now.Sub(time.UnixMilli(lastWritten.Int64)) >= c.Interval
		if !due {
			return nil
		}
		head.KeyID = c.Key.ID()
		head.Sig = ed25519.Sign(c.Key.priv, checkpointMessage(head.Seq, head.TS, head.MAC))
		rec := &Record{Type: TypeCheckpoint, Outcome: OutcomeSuccess, SignedSeq: head.Seq, SignedMAC: hex.EncodeToString(head.MAC),
			Signature: base64.StdEncoding.EncodeToString(head.Sig), KeyID: head.KeyID}
		if err := c.Chain.Append(ctx, tx, rec); err != nil {
			return err
		}
		if _, err := c.DB.Exec(ctx, tx, `INSERT INTO audit_checkpoint (seq, ts, mac, signature, key_id, record_seq, written_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			head.Seq, head.TS, head.MAC, head.Sig, head.KeyID, rec.Seq, now.UnixMilli()); err != nil {
			return err
		}
		cp = &head
		return nil
	})
	if err != nil || cp == nil {
		return nil, err
	}
	if c.File != "" {
		if err := appendSync(c.File, cp.line()); err != nil {
			return cp, fmt.Errorf("checkpoint file: %w", err)
		}
	}
	return cp, nil
}

func appendSync(path string, line []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(line)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// CheckpointResult is what VerifyCheckpoints found.
type CheckpointResult struct {
	Checked int   // distinct checkpoints checked
	Latest  int64 // the highest seq a valid checkpoint vouches for
	Bad     *Break
}

// VerifyCheckpoints checks the checkpoints in the database and those given
// (from the checkpoint file, kept elsewhere) against the chain: each must be
// signed by pub, and the record it vouches for must exist with the MAC and
// time it states. The lowest-seq inconsistency is reported.
func VerifyCheckpoints(ctx context.Context, db *store.DB, pub ed25519.PublicKey, fromFile []Checkpoint) (CheckpointResult, error) {
	var res CheckpointResult
	all := append([]Checkpoint(nil), fromFile...)
	rows, err := db.R.QueryContext(ctx, `SELECT seq, ts, mac, signature, key_id FROM audit_checkpoint`)
	if err != nil {
		return res, err
	}
	for rows.Next() {
		var c Checkpoint
		if err := rows.Scan(&c.Seq, &c.TS, &c.MAC, &c.Sig, &c.KeyID); err != nil {
			rows.Close()
			return res, err
		}
		all = append(all, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	var headSeq int64
	if err := db.R.QueryRowContext(ctx, `SELECT seq FROM audit_head WHERE id = 1`).Scan(&headSeq); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return res, err
	}
	var maxSeq sql.NullInt64
	if err := db.R.QueryRowContext(ctx, `SELECT MAX(seq) FROM audit`).Scan(&maxSeq); err != nil {
		return res, err
	}
	end := max(headSeq, maxSeq.Int64)
	sort.Slice(all, func(i, j int) bool { return all[i].Seq < all[j].Seq })
	report := func(b *Break) {
		if res.Bad == nil || b.Seq < res.Bad.Seq {
			res.Bad = b
		}
	}
	seen := map[int64]bool{}
	for i := range all {
		c := &all[i]
		if !c.Valid(pub) {
			report(&Break{c.Seq, fmt.Sprintf("a checkpoint for this record is not signed by key %s", KeyID(pub))})
			continue
		}
		if !seen[c.Seq] {
			seen[c.Seq] = true
			res.Checked++
		}
		res.Latest = max(res.Latest, c.Seq)
		if c.Seq > end {
			report(&Break{end + 1, fmt.Sprintf("missing: the chain ends at %d but a signed checkpoint vouches for record %d (the tail was cut off)", end, c.Seq)})
			continue
		}
		var ts int64
		var mac []byte
		err := db.R.QueryRowContext(ctx, `SELECT ts, mac FROM audit WHERE seq = $1`, c.Seq).Scan(&ts, &mac)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			report(&Break{c.Seq, "missing, though a signed checkpoint vouches for it"})
		case err != nil:
			return res, err
		case ts != c.TS || !bytes.Equal(mac, c.MAC):
			report(&Break{c.Seq, "differs from what a signed checkpoint says it was: the chain was rewritten"})
		}
	}
	return res, nil
}
