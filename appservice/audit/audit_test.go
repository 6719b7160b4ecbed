package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func testKeys(t testing.TB) *Keys {
	master, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	k, err := NewKeys(master)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Known answers pin the record encoding, the MAC and the pseudonyms: a change
// to any of them would make every existing trail unverifiable, so it must be a
// deliberate new version, not a refactor's side effect.
func TestKnownAnswers(t *testing.T) {
	k := testKeys(t)
	rec := &Record{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: k.User("@alice:example.org"),
		Room: k.Room("!abc:example.org"), EventID: "$ev1", EventType: "m.room.message", Detail: "", JobID: 0}
	enc := string(rec.encode(nil))
	wantEnc := `{"type":"event.received","outcome":"success","actor":"` + k.User("@alice:example.org") + `","room":"` + k.Room("!abc:example.org") + `","event_id":"$ev1","event_type":"m.room.message"}`
	if enc != wantEnc {
		t.Fatalf("encoding\n got %s\nwant %s", enc, wantEnc)
	}
	vectors := []struct{ name, got, want string }{
		{"user pseudonym", k.User("@alice:example.org"), "u_" + pinned["user"]},
		{"room pseudonym", k.Room("!abc:example.org"), "r_" + pinned["room"]},
		{"genesis MAC", hex.EncodeToString(computeMAC(hmac.New(sha256.New, k.chain), 1, 1767225600000, zeroMAC, []byte(`{"type":"service.start","outcome":"success"}`), nil)), pinned["mac1"]},
	}
	for _, v := range vectors {
		if v.got != v.want {
			t.Errorf("%s = %s, want %s", v.name, v.got, v.want)
		}
	}
	// The MAC is HMAC-SHA256 over "MHA1" || seq (8 bytes BE) || ts_ms (8 bytes BE) || prev || rec,
	// under HMAC-SHA256(master, "matrix-hipaa audit chain v1"): recompute it from that description.
	m := hmac.New(sha256.New, []byte(mustDerive(t)))
	m.Write([]byte("MHA1"))
	m.Write([]byte{0, 0, 0, 0, 0, 0, 0, 1})
	m.Write([]byte{0, 0, 0x01, 0x9b, 0x76, 0xda, 0xa8, 0x00}) // 1767225600000
	m.Write(zeroMAC)
	m.Write([]byte(`{"type":"service.start","outcome":"success"}`))
	if got := hex.EncodeToString(m.Sum(nil)); got != pinned["mac1"] {
		t.Errorf("MAC from the documented construction = %s, want %s", got, pinned["mac1"])
	}
}

func mustDerive(t *testing.T) string {
	master, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	m := hmac.New(sha256.New, master)
	m.Write([]byte("matrix-hipaa audit chain v1"))
	return string(m.Sum(nil))
}

var pinned = map[string]string{
	"user": "7ba8b2af64b0705d3cc56ba4ce965d53",
	"room": "31ffce4e3848c12f3189d96dd7f81daf",
	"mac1": "3337c212c16b57b9b8be288c34cc4b6a9ccf3fe47a1b5e4ade8b076adde748a9",
}

func TestJSONStringEncoding(t *testing.T) {
	for _, s := range []string{"plain", `quote " and \ backslash`, "ctrl \x00\x01\x1f", "bad utf8 \xff\xfe", "line\u2028sep", "emoji 🙂"} {
		enc := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("%q encoded as invalid JSON %s: %v", s, enc, err)
		}
		if !strings.Contains(s, "\xff") && back != s {
			t.Errorf("%q round-tripped to %q", s, back)
		}
	}
}

func newChain(t testing.TB, db *store.DB) *Chain {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	return NewChain(testKeys(t), db, func() time.Time { n++; return base.Add(time.Duration(n) * time.Second) })
}

func appendN(t testing.TB, ctx context.Context, c *Chain, db *store.DB, n int) {
	t.Helper()
	recs := make([]*Record, n)
	for i := range recs {
		recs[i] = &Record{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: c.keys.User("@u:hs"), Room: c.keys.Room("!r:hs"),
			EventID: "$e" + string(rune('a'+i%26)), EventType: "m.room.message"}
	}
	if err := c.AppendTx(ctx, db, recs...); err != nil {
		t.Fatal(err)
	}
}

func TestChainAppendsAndVerifies(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			res, err := Verify(ctx, db, c.keys)
			if err != nil || res.Bad != nil || res.Records != 0 {
				t.Fatalf("empty chain: %+v %v", res, err)
			}
			appendN(t, ctx, c, db, 3)
			appendN(t, ctx, c, db, 450) // spans insert chunks
			res, err = Verify(ctx, db, c.keys)
			if err != nil {
				t.Fatal(err)
			}
			if res.Bad != nil || res.Records != 453 || res.HeadSeq != 453 {
				t.Fatalf("got %+v, bad %v", res, res.Bad)
			}
			// A different key must not verify.
			other, _ := NewKeys(bytes.Repeat([]byte{7}, 32))
			res, _ = Verify(ctx, db, other)
			if res.Bad == nil || res.Bad.Seq != 1 {
				t.Fatalf("wrong key verified: %+v", res)
			}
		})
	}
}

// Every way of tampering with the stored chain must be caught, and the first
// bad record named.
func TestTamperIsDetected(t *testing.T) {
	forged := []byte(`{"type":"event.received","outcome":"failure"}`)
	badMAC := bytes.Repeat([]byte{0xab}, 32)
	cases := []struct {
		name    string
		sql     string
		args    []any
		wantSeq int64
		only    string // a dialect, for edits only it allows
	}{
		{"edit seq", `UPDATE audit SET seq = 1000 WHERE seq = 5`, nil, 5, ""},
		{"edit ts", `UPDATE audit SET ts = ts + 1 WHERE seq = 5`, nil, 5, ""},
		{"edit rec", `UPDATE audit SET rec = $1 WHERE seq = 5`, []any{forged}, 5, ""},
		{"edit mac", `UPDATE audit SET mac = $1 WHERE seq = 5`, []any{badMAC}, 5, ""},
		{"delete middle", `DELETE FROM audit WHERE seq = 5`, nil, 5, ""},
		{"delete first", `DELETE FROM audit WHERE seq = 1`, nil, 1, ""},
		{"delete last", `DELETE FROM audit WHERE seq = 10`, nil, 10, ""},
		{"truncate tail", `DELETE FROM audit WHERE seq > 7`, nil, 8, ""},
		{"swap two records", `UPDATE audit SET seq = -4 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -4`, nil, 4, ""},
		{"swap two records' contents", `UPDATE audit SET rec = CASE seq WHEN 4 THEN (SELECT rec FROM audit WHERE seq = 6) ELSE (SELECT rec FROM audit WHERE seq = 4) END WHERE seq IN (4, 6)`, nil, 4, ""},
		{"insert forged record", `INSERT INTO audit (seq, ts, rec, mac) VALUES (11, 0, $1, $2)`, []any{forged, badMAC}, 11, ""},
		{"rewind head", `UPDATE audit_head SET seq = 9`, nil, 10, ""},
		{"forge head mac", `UPDATE audit_head SET mac = $1`, []any{badMAC}, 10, ""},
		// SQLite's replace() turns a BLOB into TEXT; storing text in a BLOB column is allowed there.
		{"edit rec in place, now text", `UPDATE audit SET rec = replace(rec, 'event', 'evenX') WHERE seq = 5`, nil, 5, "sqlite3"},
		{"mac replaced by text", `UPDATE audit SET mac = 'not a mac' WHERE seq = 6`, nil, 6, "sqlite3"},
		{"ts replaced by text", `UPDATE audit SET ts = 'yesterday' WHERE seq = 3`, nil, 3, "sqlite3"},
	}
	for _, split := range []int64{100_000, 1} {
		for _, dbType := range storetest.Dialects {
			for _, tc := range cases {
				if tc.only != "" && tc.only != dbType {
					continue
				}
				t.Run(fmt.Sprintf("%s/split-from-%d/%s", dbType, split, tc.name), func(t *testing.T) {
					defer func(old int64) { parallelFrom = old }(parallelFrom)
					parallelFrom = split
					ctx := context.Background()
					db, _ := storetest.Open(t, dbType)
					c := newChain(t, db)
					appendN(t, ctx, c, db, 10)
					for _, stmt := range strings.Split(tc.sql, ";") {
						if _, err := db.W.Exec(stmt, tc.args...); err != nil {
							t.Fatal(err)
						}
					}
					res, err := Verify(ctx, db, c.keys)
					if err != nil {
						t.Fatal(err)
					}
					if res.Bad == nil {
						t.Fatal("tampering was not detected")
					}
					if res.Bad.Seq != tc.wantSeq {
						t.Fatalf("first bad record %d (%s), want %d", res.Bad.Seq, res.Bad.Reason, tc.wantSeq)
					}
				})
			}
		}
	}
}

func TestExportJSONL(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	for i := 0; i < 5; i++ {
		appendN(t, ctx, c, db, 1) // one second apart
	}
	var buf bytes.Buffer
	n, err := ExportJSONL(ctx, db, Range{}, &buf)
	if err != nil || n != 5 {
		t.Fatalf("exported %d, %v", n, err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	prev := hex.EncodeToString(zeroMAC)
	for i, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line %d not JSON: %v", i, err)
		}
		if rec["seq"].(float64) != float64(i+1) || rec["type"] != TypeEventReceived || rec["prev_mac"] != prev {
			t.Fatalf("line %d: %v", i, rec)
		}
		prev = rec["mac"].(string)
	}
	// A range starting mid-chain still links to the record before it.
	buf.Reset()
	since := time.Date(2026, 1, 1, 0, 0, 3, 0, time.UTC)
	n, err = ExportJSONL(ctx, db, Range{Since: since}, &buf)
	if err != nil || n != 3 {
		t.Fatalf("ranged export %d, %v", n, err)
	}
	var first map[string]any
	json.Unmarshal([]byte(strings.SplitN(buf.String(), "\n", 2)[0]), &first)
	if first["seq"].(float64) != 3 || first["prev_mac"] == hex.EncodeToString(zeroMAC) {
		t.Fatalf("ranged export starts %v", first)
	}
	// Since and until together; until is exclusive.
	buf.Reset()
	n, err = ExportJSONL(ctx, db, Range{Since: since, Until: since.Add(2 * time.Second)}, &buf)
	if err != nil || n != 2 {
		t.Fatalf("bounded export %d, %v:\n%s", n, err, buf.String())
	}
	// Past the end, and before the start.
	for _, r := range []Range{{Since: since.Add(time.Hour)}, {Until: since.Add(-time.Hour)}} {
		buf.Reset()
		if n, err := ExportJSONL(ctx, db, r, &buf); err != nil || n != 0 {
			t.Fatalf("empty range %+v exported %d, %v", r, n, err)
		}
	}
}

// A clock stepped back must not make record times go backwards.
func TestRecordTimesNeverDecrease(t *testing.T) {
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	times := []time.Time{base, base.Add(time.Hour), base.Add(time.Minute), base.Add(2 * time.Hour)}
	i := 0
	c := NewChain(testKeys(t), db, func() time.Time { i++; return times[i-1] })
	for range times {
		if err := c.AppendTx(ctx, db, &Record{Type: TypeServiceStart, Outcome: OutcomeSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	rows, _ := db.R.Query(`SELECT ts FROM audit ORDER BY seq`)
	defer rows.Close()
	var got []int64
	for rows.Next() {
		var ts int64
		rows.Scan(&ts)
		got = append(got, ts)
	}
	want := []int64{base.UnixMilli(), base.Add(time.Hour).UnixMilli(), base.Add(time.Hour).UnixMilli(), base.Add(2 * time.Hour).UnixMilli()}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("times %v, want %v", got, want)
		}
	}
	if res, err := Verify(ctx, db, c.keys); err != nil || res.Bad != nil {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func keyFiles(dir string) KeyFiles {
	return KeyFiles{Chain: dir + "/audit.key", Pseudonym: dir + "/pseudonym.key", Job: dir + "/job.key", Pickle: dir + "/bot-pickle.key"}
}

func TestKeyFiles(t *testing.T) {
	f := keyFiles(t.TempDir())
	k1, err := LoadKeys(f)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadKeys(f)
	if err != nil {
		t.Fatal(err)
	}
	if k1.User("@a:b") != k2.User("@a:b") {
		t.Fatal("reloaded key gives other pseudonyms")
	}
	if k1.User("@a:b") == k1.User("@a:c") || k1.User("@a:b") == k1.Room("@a:b") {
		t.Fatal("pseudonyms collide")
	}
	// Four independent keys, not one in four places.
	seen := map[string]bool{}
	for _, k := range [][]byte{k1.chain, k1.pseudo, k1.job, k1.pickle} {
		if len(k) != 32 || seen[string(k)] {
			t.Fatalf("keys not distinct 32-byte keys")
		}
		seen[string(k)] = true
	}
	if err := chmod(f.Pseudonym, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeys(f); err == nil {
		t.Fatal("a world-readable key was accepted")
	}
}

// An auditor given audit.key alone (the chain key and the checkpoint public
// key are all verifying needs) can verify and can do nothing else: the
// chain key file holds no master from which the pseudonym, job or pickle
// keys could be derived, and loading it creates no other key file.
func TestAuditorsKeyOpensNothingElse(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := keyFiles(dir)
	full, err := LoadKeys(f)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := storetest.Open(t, "sqlite3")
	c := NewChain(full, db, time.Now)
	if err := c.AppendTx(ctx, db, &Record{Type: TypeServiceStart, Outcome: OutcomeSuccess, Actor: full.User("@admin:hs")}); err != nil {
		t.Fatal(err)
	}
	auditor := t.TempDir()
	data, _ := os.ReadFile(f.Chain)
	os.WriteFile(auditor+"/audit.key", data, 0o600)
	k, err := LoadChainKey(auditor + "/audit.key")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Verify(ctx, db, k); err != nil || res.Bad != nil || res.Records != 1 {
		t.Fatalf("verify with the chain key alone: %+v %v", res, err)
	}
	if k.pseudo != nil || k.PickleKey() != nil || k.JobKey() != nil {
		t.Fatal("the chain key carries other keys")
	}
	for _, label := range []string{labelPseudo, labelPickle, labelJob} {
		if d := derive(k.chain, label); bytes.Equal(d, full.pseudo) || bytes.Equal(d, full.pickle) || bytes.Equal(d, full.job) {
			t.Fatalf("%s derives from the chain key", label)
		}
	}
	if entries, _ := os.ReadDir(auditor); len(entries) != 1 {
		t.Fatalf("loading the chain key made files: %v", entries)
	}
}

// A deployment from before the split (one master key in audit.key) starts
// with every value it had: the same chain MACs, pseudonyms, job MACs and bot
// pickle key; afterwards audit.key holds the chain key alone.
func TestOldMasterKeyIsSplit(t *testing.T) {
	dir := t.TempDir()
	f := keyFiles(dir)
	master := bytes.Repeat([]byte{7}, 32)
	if err := os.WriteFile(f.Chain, []byte(hex.EncodeToString(master)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old, _ := NewKeys(master)
	verifier, err := LoadChainKey(f.Chain) // an auditor's old copy still verifies
	if err != nil || !bytes.Equal(verifier.chain, old.chain) {
		t.Fatalf("chain key from an old master: %v", err)
	}
	k, err := LoadKeys(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.chain, old.chain) || !bytes.Equal(k.pseudo, old.pseudo) || !bytes.Equal(k.job, old.job) || !bytes.Equal(k.pickle, old.pickle) {
		t.Fatal("splitting changed a key")
	}
	data, _ := os.ReadFile(f.Chain)
	if bytes.Contains(data, []byte(hex.EncodeToString(master))) || !bytes.HasPrefix(data, []byte(headChain)) {
		t.Fatalf("audit.key still holds the master: %s", data)
	}
	again, err := LoadKeys(f)
	if err != nil || again.User("@a:b") != old.User("@a:b") {
		t.Fatalf("reload after the split: %v", err)
	}
	if v, err := LoadChainKey(f.Chain); err != nil || !bytes.Equal(v.chain, old.chain) {
		t.Fatalf("chain key after the split: %v", err)
	}
	for _, p := range []string{f.Pseudonym, f.Job, f.Pickle, f.Chain} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, st.Mode(), err)
		}
	}
}

// Verify loosens the garbage collector for its scan and puts the caller's
// settings back when it returns.
func TestVerifyRestoresGCSettings(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(1 << 40))
	ctx := context.Background()
	db, _ := storetest.Open(t, "sqlite3")
	c := newChain(t, db)
	appendN(t, ctx, c, db, 10)
	if res, err := Verify(ctx, db, c.keys); err != nil || res.Bad != nil || res.Records != 10 {
		t.Fatalf("%+v %v", res, err)
	}
	if got := debug.SetGCPercent(150); got != 150 {
		t.Errorf("GC percent after Verify = %d, want 150", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 1<<40 {
		t.Errorf("memory limit after Verify = %d, want %d", got, int64(1<<40))
	}
}

// Appenders racing on an empty chain (no head row to lock yet) must queue,
// not fail: on PostgreSQL each one's transaction used to read "no head" and
// all but one then failed on the duplicate first sequence number.
func TestConcurrentAppendsOnAnEmptyChain(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			const n = 8
			errs := make(chan error, n)
			start := make(chan struct{})
			for i := 0; i < n; i++ {
				go func() {
					<-start
					errs <- c.AppendTx(ctx, db, &Record{Type: TypeJobApplied, Outcome: OutcomeSuccess, Action: "redact"})
				}()
			}
			close(start)
			for i := 0; i < n; i++ {
				if err := <-errs; err != nil {
					t.Errorf("append %d: %v", i, err)
				}
			}
			res, err := Verify(ctx, db, c.keys)
			if err != nil || res.Bad != nil || res.Records != n {
				t.Fatalf("%+v %v", res, err)
			}
		})
	}
}

// An investigator's export of one person or room: only the records naming
// the pseudonym, each still checkable on its own with the chain key.
func TestExportAbout(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			ctx := context.Background()
			db, _ := storetest.Open(t, dbType)
			c := newChain(t, db)
			alice, bob := c.keys.User("@alice:hs"), c.keys.User("@bob:hs")
			ward, other := c.keys.Room("!ward:hs"), c.keys.Room("!other:hs")
			recs := []*Record{
				{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: alice, Room: ward, EventID: "$1"},
				{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: bob, Room: other, EventID: "$2"},
				{Type: TypeWipe, Outcome: OutcomeSuccess, Actor: "os:root", Action: "requested", Detail: alice},
				{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: bob, Room: ward, EventID: "$3"},
				// alice's pseudonym as another field's text is not a match.
				{Type: TypeEventReceived, Outcome: OutcomeSuccess, Actor: bob, Room: other, EventID: "$" + alice},
			}
			for _, r := range recs {
				if err := c.AppendTx(ctx, db, r); err != nil {
					t.Fatal(err)
				}
			}
			for _, tc := range []struct {
				name  string
				about []string
				seqs  []float64
			}{
				{"user", []string{alice}, []float64{1, 3}},
				{"room", []string{ward}, []float64{1, 4}},
				{"either", []string{bob, ward}, []float64{1, 2, 4, 5}},
				{"nobody", []string{c.keys.User("@nobody:hs")}, nil},
			} {
				t.Run(tc.name, func(t *testing.T) {
					var buf bytes.Buffer
					n, err := ExportJSONL(ctx, db, Range{About: tc.about}, &buf)
					if err != nil || n != int64(len(tc.seqs)) {
						t.Fatalf("exported %d, %v:\n%s", n, err, buf.String())
					}
					var got []float64
					for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
						if l == "" {
							continue
						}
						var rec map[string]any
						if err := json.Unmarshal([]byte(l), &rec); err != nil {
							t.Fatal(err)
						}
						seq := rec["seq"].(float64)
						got = append(got, seq)
						// Its own MAC, from the previous record's, which the
						// line carries even when that record is left out.
						var st Stored
						if err := db.R.QueryRowContext(ctx, `SELECT ts, rec FROM audit WHERE seq = $1`, int64(seq)).Scan(&st.TS, &st.Rec); err != nil {
							t.Fatal(err)
						}
						prev, _ := hex.DecodeString(rec["prev_mac"].(string))
						want := computeMAC(hmac.New(sha256.New, c.keys.chain), int64(seq), st.TS, prev, st.Rec, nil)
						if hex.EncodeToString(want) != rec["mac"] {
							t.Fatalf("record %v does not check out from its own line", seq)
						}
					}
					if fmt.Sprint(got) != fmt.Sprint(tc.seqs) {
						t.Fatalf("records %v, want %v", got, tc.seqs)
					}
				})
			}
		})
	}
}
