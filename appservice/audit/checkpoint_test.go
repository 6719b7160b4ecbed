package audit

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func newCheckpointer(t testing.TB, db *store.DB, c *Chain) *Checkpointer {
	t.Helper()
	dir := t.TempDir()
	key, err := LoadOrCreateSigningKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &Checkpointer{Chain: c, DB: db, Key: key, File: filepath.Join(dir, "checkpoints.jsonl"), Every: 5, Interval: time.Hour}
}

// Checkpoints are written every N records (not for their own records alone),
// and then check out.
func TestCheckpointCadence(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			cp := newCheckpointer(t, db, c)
			if got, err := cp.Once(ctx, false); err != nil || got != nil {
				t.Fatalf("checkpoint of an empty chain: %v %v", got, err)
			}
			appendN(t, ctx, c, db, 4)
			if got, _ := cp.Once(ctx, false); got != nil {
				t.Fatalf("checkpoint after 4 records with every=5")
			}
			appendN(t, ctx, c, db, 1)
			got, err := cp.Once(ctx, false)
			if err != nil || got == nil || got.Seq != 5 {
				t.Fatalf("checkpoint after 5 records: %+v %v", got, err)
			}
			// Its own record (seq 6) is not worth a checkpoint, even forced.
			if got, _ := cp.Once(ctx, true); got != nil {
				t.Fatalf("checkpointed its own checkpoint record: %+v", got)
			}
			appendN(t, ctx, c, db, 1)
			if got, _ := cp.Once(ctx, true); got == nil || got.Seq != 7 {
				t.Fatalf("forced checkpoint: %+v", got)
			}
			file, err := ReadCheckpointFile(cp.File)
			if err != nil || len(file) != 2 {
				t.Fatalf("checkpoint file: %d entries, %v", len(file), err)
			}
			res, err := VerifyCheckpoints(ctx, db, cp.Key.Pub, file)
			if err != nil || res.Bad != nil || res.Checked != 2 || res.Latest != 7 {
				t.Fatalf("verify: %+v %v", res, err)
			}
			if v, _ := Verify(ctx, db, c.keys); v.Bad != nil {
				t.Fatalf("chain with checkpoint records: %v", v.Bad)
			}
		})
	}
}

// What the chain alone cannot show, checkpoints do: a cut-off tail with the
// head rewound, and a chain rewritten by someone holding the chain key.
func TestCheckpointsCatchTruncationAndRewriting(t *testing.T) {
	cases := []struct {
		name string
		// tamper changes the database (and may rewrite the file's lines).
		tamper    func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string)
		chainOK   bool // the chain check alone misses it
		wantSeq   int64
		wantInMsg string
	}{
		{"tail cut off, head rewound", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			execSQL(t, db, `DELETE FROM audit WHERE seq > 12`)
			execSQL(t, db, `UPDATE audit_head SET seq = 12, ts = (SELECT ts FROM audit WHERE seq = 12), mac = (SELECT mac FROM audit WHERE seq = 12)`)
		}, true, 13, "tail was cut off"},
		{"tail cut off, database checkpoints deleted too (the file remembers)", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			execSQL(t, db, `DELETE FROM audit WHERE seq > 12`)
			execSQL(t, db, `UPDATE audit_head SET seq = 12, ts = (SELECT ts FROM audit WHERE seq = 12), mac = (SELECT mac FROM audit WHERE seq = 12)`)
			execSQL(t, db, `DELETE FROM audit_checkpoint`)
		}, true, 13, "tail was cut off"},
		{"whole chain rewritten with the chain key", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			execSQL(t, db, `DELETE FROM audit`)
			execSQL(t, db, `DELETE FROM audit_head`)
			execSQL(t, db, `DELETE FROM audit_checkpoint`)
			recs := make([]*Record, 20)
			for i := range recs {
				recs[i] = &Record{Type: TypeServiceStart, Outcome: OutcomeSuccess}
			}
			if err := c.AppendTx(ctx, db, recs...); err != nil {
				t.Fatal(err)
			}
		}, true, 10, "rewritten"},
		{"forged checkpoint in the database", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			execSQL(t, db, `UPDATE audit_checkpoint SET mac = (SELECT mac FROM audit WHERE seq = 3), seq = 3 WHERE seq = 10`)
		}, true, 3, "not signed"},
		{"checkpoint file edited", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			data, _ := os.ReadFile(file)
			os.WriteFile(file, []byte(strings.Replace(string(data), `"seq":10`, `"seq":9`, 1)), 0o600)
		}, true, 9, "not signed"},
		{"record edited (the chain catches it first)", func(t *testing.T, ctx context.Context, db *store.DB, c *Chain, file string) {
			execSQL(t, db, `UPDATE audit SET ts = ts + 1 WHERE seq = 4`)
		}, false, 4, ""},
	}
	for _, dbType := range storetest.Dialects {
		for _, tc := range cases {
			t.Run(dbType+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				db, _ := storetest.Open(t, dbType)
				c := newChain(t, db)
				cp := newCheckpointer(t, db, c)
				appendN(t, ctx, c, db, 10)
				if got, _ := cp.Once(ctx, false); got == nil || got.Seq != 10 {
					t.Fatal("no checkpoint at 10")
				}
				appendN(t, ctx, c, db, 3) // 12..14
				if got, _ := cp.Once(ctx, true); got == nil || got.Seq != 14 {
					t.Fatal("no checkpoint at 14")
				}
				tc.tamper(t, ctx, db, c, cp.File)
				chain, err := Verify(ctx, db, c.keys)
				if err != nil {
					t.Fatal(err)
				}
				if (chain.Bad == nil) != tc.chainOK {
					t.Fatalf("chain check: %v (expected it to pass: %v)", chain.Bad, tc.chainOK)
				}
				file, err := ReadCheckpointFile(cp.File)
				if err != nil {
					t.Fatal(err)
				}
				res, err := VerifyCheckpoints(ctx, db, cp.Key.Pub, file)
				if err != nil {
					t.Fatal(err)
				}
				bad := res.Bad
				if chain.Bad != nil && (bad == nil || chain.Bad.Seq < bad.Seq) {
					bad = chain.Bad
				}
				if bad == nil || bad.Seq != tc.wantSeq || !strings.Contains(bad.Reason, tc.wantInMsg) {
					t.Fatalf("first inconsistency %+v, want seq %d mentioning %q", bad, tc.wantSeq, tc.wantInMsg)
				}
			})
		}
	}
}

func execSQL(t testing.TB, db *store.DB, q string) {
	t.Helper()
	if _, err := db.W.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func TestCheckpointFileTornLastLine(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cp.jsonl")
	good := `{"seq":3,"time":"2026-01-01T00:00:00.000Z","ts_ms":1,"mac":"00","signature":"AA==","key_id":"k"}` + "\n"
	os.WriteFile(p, []byte(good+`{"seq":4,"ti`), 0o600)
	got, err := ReadCheckpointFile(p)
	if err != nil || len(got) != 1 || got[0].Seq != 3 {
		t.Fatalf("torn last line: %+v %v", got, err)
	}
	os.WriteFile(p, []byte(`{"seq":4,"ti`+"\n"+good), 0o600)
	if _, err := ReadCheckpointFile(p); err == nil || !strings.Contains(err.Error(), "cp.jsonl:1:") {
		t.Fatalf("a bad line in the middle: %v", err)
	}
	if got, err := ReadCheckpointFile(filepath.Join(dir, "none")); err != nil || got != nil {
		t.Fatalf("missing file: %v %v", got, err)
	}
}

func TestPublicKeyRoundTrip(t *testing.T) {
	k, err := LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(FormatPublicKey(k.Pub))
	if err != nil || !pub.Equal(k.Pub) {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:AAAA", "rsa:" + FormatPublicKey(k.Pub)[8:]} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
