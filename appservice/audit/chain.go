package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// macVersion is mixed into every MAC so a future format cannot be confused
// with this one. Changing anything here breaks the known-answer tests, on purpose.
const macVersion = "MHA1"

// Chain appends records to the audit table inside the caller's database
// transaction, so a record and what it describes commit together or not at all.
type Chain struct {
	keys    *Keys
	db      *store.DB
	dialect store.Dialect
	now     func() time.Time
	pool    sync.Pool
}

func NewChain(keys *Keys, db *store.DB, now func() time.Time) *Chain {
	c := &Chain{keys: keys, db: db, dialect: db.Dialect, now: now}
	// Whoever may append to the chain may queue jobs: same keys, same process.
	db.SetJobKey(keys.JobKey())
	c.pool.New = func() any { return hmac.New(sha256.New, keys.chain) }
	return c
}

// Keys returns the keys the chain uses (for pseudonyms).
func (c *Chain) Keys() *Keys { return c.keys }

// DB is the database the chain lives in.
func (c *Chain) DB() *store.DB { return c.db }

// Now is the chain's clock.
func (c *Chain) Now() time.Time { return c.now() }

var zeroMAC = make([]byte, sha256.Size)

// computeMAC is HMAC-SHA256(chainKey, "MHA1" || seq || ts_ms || prev || rec).
func computeMAC(h hash.Hash, seq, tsMillis int64, prev, rec, out []byte) []byte {
	h.Reset()
	var hdr [len(macVersion) + 16]byte
	copy(hdr[:], macVersion)
	binary.BigEndian.PutUint64(hdr[4:], uint64(seq))
	binary.BigEndian.PutUint64(hdr[12:], uint64(tsMillis))
	h.Write(hdr[:])
	h.Write(prev)
	h.Write(rec)
	return h.Sum(out[:0])
}

// Append assigns sequence numbers, times and MACs to recs and inserts them.
// It locks the chain head for the rest of tx, so appenders in other
// goroutines or processes queue behind it and the chain never forks.
func (c *Chain) Append(ctx context.Context, tx *sql.Tx, recs ...*Record) error {
	if len(recs) == 0 {
		return nil
	}
	q := `SELECT seq, ts, mac FROM audit_head WHERE id = 1`
	if c.dialect == store.Postgres {
		q = HeadLockQuery
	}
	var head Head
	err := c.db.QueryRow(ctx, tx, q).Scan(&head.Seq, &head.TS, &head.MAC)
	if errors.Is(err, sql.ErrNoRows) && c.dialect == store.Postgres {
		// An empty chain has no head row for FOR UPDATE to lock, so racing
		// appenders would all start at 1. Insert an empty head: a concurrent
		// appender's insert waits for this transaction, finds the row, and
		// then locks the head this one wrote.
		if _, err := c.db.Exec(ctx, tx, EmptyHeadQuery); err != nil {
			return fmt.Errorf("create audit head: %w", err)
		}
		err = c.db.QueryRow(ctx, tx, q).Scan(&head.Seq, &head.TS, &head.MAC)
	}
	if errors.Is(err, sql.ErrNoRows) {
		head = Head{MAC: zeroMAC}
	} else if err != nil {
		return fmt.Errorf("read audit head: %w", err)
	}
	if c.dialect == store.Postgres {
		q, args := c.SealPG(head, recs)
		if _, err := c.db.Exec(ctx, tx, q, args...); err != nil {
			return fmt.Errorf("append audit records: %w", err)
		}
		return nil
	}
	rows, head := c.seal(head, recs)
	args := make([]any, 0, 4*min(len(recs), insertChunk))
	for start := 0; start < len(recs); start += insertChunk {
		end := min(start+insertChunk, len(recs))
		args = args[:0]
		for i := start; i < end; i++ {
			args = append(args, rows.seq[i], rows.ts[i], rows.rec[i], rows.mac[i])
		}
		if _, err := c.db.Exec(ctx, tx, insertQuery(end-start), args...); err != nil {
			return fmt.Errorf("append audit records: %w", err)
		}
	}
	if _, err := c.db.Exec(ctx, tx, headUpsert("$1", "$2", "$3"), head.Seq, head.TS, head.MAC); err != nil {
		return fmt.Errorf("update audit head: %w", err)
	}
	return nil
}

// Head is the chain's last record: its seq, time (unix ms) and MAC.
type Head struct {
	Seq, TS int64
	MAC     []byte
}

// HeadLockQuery reads and locks the chain head on PostgreSQL; EmptyHeadQuery
// makes sure there is a head row to lock (seq 0, the all-zero MAC).
const (
	HeadLockQuery  = `SELECT seq, ts, mac FROM audit_head WHERE id = 1 FOR UPDATE`
	EmptyHeadQuery = `INSERT INTO audit_head (id, seq, ts, mac) VALUES (1, 0, 0, decode(repeat('00', 32), 'hex')) ON CONFLICT (id) DO NOTHING`
)

// SealPG seals recs after head (locked by the caller's transaction) and
// returns the one PostgreSQL statement that inserts them, as arrays, and
// moves the head.
func (c *Chain) SealPG(head Head, recs []*Record) (string, []any) {
	rows, head := c.seal(head, recs)
	return `WITH a AS (INSERT INTO audit (seq, ts, rec, mac) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]))
		` + headUpsert("$5", "$6", "$7"), []any{rows.seq, rows.ts, rows.rec, rows.mac, head.Seq, head.TS, head.MAC}
}

// seal gives recs their sequence numbers, times and MACs after head, and
// returns them column by column with the new head.
func (c *Chain) seal(head Head, recs []*Record) (auditRows, Head) {
	h := c.pool.Get().(hash.Hash)
	defer c.pool.Put(h)
	now := c.now()
	var rows auditRows
	rows.grow(len(recs))
	var enc []byte
	for _, r := range recs {
		head.Seq++
		if r.Time.IsZero() {
			r.Time = now
		}
		// Record times never go backwards, even if the clock is stepped
		// back: an auditor reads the trail in time order and seq order alike.
		if ms := r.Time.UnixMilli(); ms < head.TS {
			r.Time = time.UnixMilli(head.TS)
		}
		head.TS = r.Time.UnixMilli()
		r.Seq = head.Seq
		enc = r.encode(enc[:0])
		rec := append([]byte(nil), enc...)
		r.MAC = computeMAC(h, head.Seq, head.TS, head.MAC, rec, make([]byte, 0, sha256.Size))
		head.MAC = r.MAC
		rows.add(head.Seq, head.TS, rec, r.MAC)
	}
	return rows, head
}

// auditRows holds records column by column, as PostgreSQL's unnest takes them.
type auditRows struct {
	seq, ts  []int64
	rec, mac [][]byte
}

func (r *auditRows) grow(n int) {
	r.seq, r.ts = make([]int64, 0, n), make([]int64, 0, n)
	r.rec, r.mac = make([][]byte, 0, n), make([][]byte, 0, n)
}

func (r *auditRows) add(seq, ts int64, rec, mac []byte) {
	r.seq, r.ts = append(r.seq, seq), append(r.ts, ts)
	r.rec, r.mac = append(r.rec, rec), append(r.mac, mac)
}

func headUpsert(seq, ts, mac string) string {
	return `INSERT INTO audit_head (id, seq, ts, mac) VALUES (1, ` + seq + `, ` + ts + `, ` + mac + `)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, mac = excluded.mac`
}

const insertChunk = 200

func insertQuery(n int) string {
	return store.ValuesQuery("INSERT INTO audit (seq, ts, rec, mac) VALUES ", 4, n, "")
}

// AppendTx is Append in a transaction of its own, for records that stand
// alone (service start, an audit read).
func (c *Chain) AppendTx(ctx context.Context, db *store.DB, recs ...*Record) error {
	return db.Tx(ctx, store.Durable, func(tx *sql.Tx) error { return c.Append(ctx, tx, recs...) })
}
