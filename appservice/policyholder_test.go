package appservice

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// A bad edit is refused and audited, the last good policy stays in force, and
// a good edit replaces it; each load is audited with the file's hash.
func TestPolicyReload(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good1 := "version: 1\ndefaults:\n  retention: 72h\n"
	write(good1)
	h, err := NewPolicyHolder(ctx, file, p.db, p.chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	first := h.Current()
	if first.Hash != policy.HashOf([]byte(good1)) {
		t.Fatal("wrong policy in force")
	}

	bad := "version: 1\ndefaults:\n  retention: forever\n"
	write(bad)
	if changed, err := h.Reload(ctx, "sighup"); changed || err == nil {
		t.Fatalf("bad policy: changed=%v err=%v", changed, err)
	}
	if h.Current() != first {
		t.Fatal("a refused policy replaced the one in force")
	}

	good2 := "version: 1\ndefaults:\n  retention: 24h\n"
	write(good2)
	if changed, err := h.Reload(ctx, "file-changed"); !changed || err != nil {
		t.Fatalf("good policy: changed=%v err=%v", changed, err)
	}
	if got := h.Current().For(policy.Room{ID: "!r:h"}).Retention.D(); got != 24*time.Hour {
		t.Fatalf("retention in force %s", got)
	}
	// Re-reading the same content changes nothing and adds no record.
	if changed, _ := h.Reload(ctx, "sighup"); changed {
		t.Fatal("identical policy counted as a change")
	}

	var loads []map[string]any
	for _, r := range p.exported(t) {
		if r["type"] == audit.TypePolicyLoad {
			loads = append(loads, r)
		}
	}
	want := []struct{ outcome, hash, detail string }{
		{"success", policy.HashOf([]byte(good1)), "start"},
		{"failure", policy.HashOf([]byte(bad)), "sighup"},
		{"success", policy.HashOf([]byte(good2)), "file-changed"},
	}
	if len(loads) != len(want) {
		t.Fatalf("%d policy.load records, want %d: %v", len(loads), len(want), loads)
	}
	for i, w := range want {
		if loads[i]["outcome"] != w.outcome || loads[i]["policy_version"] != w.hash || loads[i]["detail"] != w.detail {
			t.Errorf("record %d = %v, want %+v", i, loads[i], w)
		}
	}
}

func TestPolicyWatchPicksUpEdits(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	file := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(file, []byte("version: 1\n"), 0o600)
	h, err := NewPolicyHolder(ctx, file, p.db, p.chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	go h.Watch(ctx, 10*time.Millisecond)
	os.WriteFile(file, []byte("version: 1\ndefaults:\n  dry_run: true\n"), 0o600)
	deadline := time.Now().Add(10 * time.Second)
	for !h.Current().For(policy.Room{ID: "!r:h"}).DryRun {
		if time.Now().After(deadline) {
			t.Fatal("the edited policy was not picked up")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMissingPolicyStopsStart(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	if _, err := NewPolicyHolder(context.Background(), filepath.Join(t.TempDir(), "nope.yaml"), p.db, p.chain, zerolog.Nop()); err == nil {
		t.Fatal("started without its policy file")
	}
	h, err := NewPolicyHolder(context.Background(), "", p.db, p.chain, zerolog.Nop())
	if err != nil || h.Current().For(policy.Room{ID: "!r:h"}).Encryption != policy.EncryptionRequired {
		t.Fatalf("built-in policy: %v", err)
	}
}

// A refused edit undone (the file back to the policy in force) is news: it
// is logged and audited as accepted again, once; the policy in force, its
// text and since when are in the database for status and rooms.
func TestPolicyAcceptedAgain(t *testing.T) {
	for _, dbType := range []string{"sqlite3", "postgres"} {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			file := filepath.Join(t.TempDir(), "policy.yaml")
			good := "version: 1\ndefaults:\n  retention: 72h\n"
			os.WriteFile(file, []byte(good), 0o600)
			var logs strings.Builder
			h, err := NewPolicyHolder(ctx, file, p.db, p.chain, zerolog.New(&logs))
			if err != nil {
				t.Fatal(err)
			}
			inForce, since, err := PolicyInForce(ctx, p.db)
			if err != nil || inForce.Hash != h.Current().Hash || since.IsZero() {
				t.Fatalf("policy in force %v %v %v", inForce, since, err)
			}
			os.WriteFile(file, []byte("version: 1\ndefaults:\n  retention: forever\n"), 0o600)
			h.Reload(ctx, "file-changed")
			os.WriteFile(file, []byte(good), 0o600)
			if changed, err := h.Reload(ctx, "file-changed"); changed || err != nil {
				t.Fatalf("restored: changed=%v err=%v", changed, err)
			}
			h.Reload(ctx, "sighup") // nothing new: no second notice
			var outcomes []string
			for _, r := range p.exported(t) {
				if r["type"] == audit.TypePolicyLoad {
					outcomes = append(outcomes, r["outcome"].(string)+":"+r["detail"].(string))
				}
			}
			if strings.Join(outcomes, ",") != "success:start,failure:file-changed,success:accepted-again" {
				t.Fatalf("policy.load records %v", outcomes)
			}
			if n := strings.Count(logs.String(), "policy file accepted again"); n != 1 {
				t.Fatalf("%d 'accepted again' log lines:\n%s", n, logs.String())
			}
			again, since2, _ := PolicyInForce(ctx, p.db)
			if again.Hash != inForce.Hash || !since2.Equal(since) {
				t.Fatal("the policy in force, or its since, changed")
			}
		})
	}
}

// Hooks are lists: every function added runs, in the order added, once per
// new policy.
func TestPolicyChangeHooksRunInOrder(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(file, []byte("version: 1\n"), 0o600)
	h, err := NewPolicyHolder(ctx, file, p.db, p.chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var ran []string
	for _, name := range []string{"sweep", "notices", "reschedule"} {
		h.OnChange(func(context.Context, *policy.Policy, *policy.Policy) { ran = append(ran, name) })
	}
	os.WriteFile(file, []byte("version: 1\ndefaults:\n  retention: 24h\n"), 0o600)
	if changed, err := h.Reload(ctx, "sighup"); !changed || err != nil {
		t.Fatal(changed, err)
	}
	if strings.Join(ran, ",") != "sweep,notices,reschedule" {
		t.Fatalf("hooks ran %v", ran)
	}
}
