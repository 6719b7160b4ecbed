package appservice

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// Rotating the job key keeps every queued job runnable (each is MACed again
// under the new key, in one transaction) and a forged one refused; rotating
// the pseudonym key gives new pseudonyms from then on. Each old key is kept
// beside the new one for the vault, and each rotation is in the trail.
func TestRotateKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, config.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	db, chain, err := OpenStore(ctx, cfg, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	oldJobKey, oldPseudonym := db.JobKey(), chain.Keys().User("@doc:hs")
	if err := db.Tx(ctx, 0, func(tx *sql.Tx) error {
		return Enqueue(ctx, db, tx, time.Now(), JobSpec{Kind: "notice", DedupeKey: "queued", Payload: []byte(`{}`), DueAt: time.UnixMilli(1)})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.ExecContext(ctx, `INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at, mac) VALUES ('notice', 'forged', $1, 'pending', 0, 0, 0, 'feed')`, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	rot, err := RotateKey(ctx, cfg, "job", "os:test", "20261205T000000Z", time.Now)
	if err != nil || rot.Resigned != 1 {
		t.Fatalf("rotate job key: %+v %v", rot, err)
	}
	if _, err := RotateKey(ctx, cfg, "chain", "os:test", "x", time.Now); err == nil {
		t.Fatal("the chain key rotated in place")
	}
	if _, err := RotateKey(ctx, cfg, "pseudonym", "os:test", "20261205T000001Z", time.Now); err != nil {
		t.Fatal(err)
	}
	p := newPipelineOn(t, mustReopen(t, cfg))
	defer p.db.Close()
	old, _ := audit.LoadChainKey(filepath.Join(dir, "audit.key"))
	res, err := audit.Verify(ctx, p.db, old)
	if err != nil || res.Bad != nil {
		t.Fatalf("chain after rotations: %+v %v", res, err)
	}
	n := 0
	stored, _ := audit.ReadAfter(ctx, p.db, 0, 100)
	for _, s := range stored {
		if r, _ := s.Fields(); r.Type == audit.TypeAdminKey && r.Action == "rotate" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d rotate records, want 2", n)
	}
	// (The test pipeline's runner audits under a test key of its own.)
	if string(p.db.JobKey()) == string(oldJobKey) {
		t.Fatal("the job key did not change")
	}
	keys, err := audit.LoadKeys(KeyFiles(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if keys.User("@doc:hs") == oldPseudonym {
		t.Fatal("the pseudonym key did not change")
	}
	p.db.SetJobKey(keys.JobKey())
	var ran []string
	p.runner.Handle("notice", func(ctx context.Context, j *Job) error { ran = append(ran, j.Key); return nil })
	p.runDue(t)
	if len(ran) != 1 || ran[0] != "queued" {
		t.Fatalf("after the rotation ran %v, want only the queued job", ran)
	}
	for _, f := range []string{"keys/job.key.retired-20261205T000000Z", "keys/pseudonym.key.retired-20261205T000001Z"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func mustReopen(t *testing.T, cfg *config.Config) *store.DB {
	t.Helper()
	db, err := openDB(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return db
}
