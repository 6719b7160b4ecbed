package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/assembly"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/decisions.golden")

// goldenPolicy sets off every kind of decision the features make.
const goldenPolicy = `version: 1
defaults:
  retention: 48h
  room_retention: honour
  retention_min: 1h
rooms:
  - room_id: "!ward:example.org"
    members: verified
  - room_id: "!canteen:example.org"
    encryption: optional
    plaintext: allow
    retention: 0
  - room_id: "!drill:example.org"
    dry_run: true
`

// goldenEvents are rooms being made and used: creations, joins and invites,
// settings changed to looser ones, plaintext, attachments, a room's own
// lifetime, an alias claim, ciphertext, a room the service never saw made,
// and commands in the management room.
func goldenEvents() [][]map[string]any {
	st := func(id, room, sender, typ, key string, content map[string]any) map[string]any {
		return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": typ, "state_key": key,
			"origin_server_ts": 1000, "content": content}
	}
	msg := func(id, room, sender string, content map[string]any) map[string]any {
		return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": "m.room.message",
			"origin_server_ts": 2000, "content": content}
	}
	enc := func(id, room, sender string) map[string]any {
		return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": "m.room.encrypted",
			"origin_server_ts": 3000, "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA"}}
	}
	member := func(id, room, sender, target, m string) map[string]any {
		return st(id, room, sender, "m.room.member", target, map[string]any{"membership": m})
	}
	var txns [][]map[string]any
	for _, room := range []string{"!icu:example.org", "!ward:example.org", "!canteen:example.org", "!drill:example.org"} {
		r := strings.TrimPrefix(strings.Split(room, ":")[0], "!")
		encryption := st("$encryption-"+r, room, "@alice:example.org", "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"})
		if r == "canteen" {
			// Left unencrypted, as its policy allows until the policy changes.
			encryption = msg("$late-"+r, room, "@alice:example.org", map[string]any{"msgtype": "m.text", "body": "later"})
		}
		txns = append(txns, []map[string]any{
			st("$create-"+r, room, "@alice:example.org", "m.room.create", "", map[string]any{"creator": "@alice:example.org", "room_version": "10"}),
			member("$alice-"+r, room, "@alice:example.org", "@alice:example.org", "join"),
			st("$power-"+r, room, "@alice:example.org", "m.room.power_levels", "", map[string]any{"users": map[string]any{"@alice:example.org": 100}}),
			st("$rules-"+r, room, "@alice:example.org", "m.room.join_rules", "", map[string]any{"join_rule": "public"}),
			st("$guest-"+r, room, "@alice:example.org", "m.room.guest_access", "", map[string]any{"guest_access": "can_join"}),
		}, []map[string]any{
			member("$invite-"+r, room, "@alice:example.org", "@bob:example.org", "invite"),
			member("$bob-"+r, room, "@bob:example.org", "@bob:example.org", "join"),
			member("$remote-"+r, room, "@carol:elsewhere.example", "@carol:elsewhere.example", "join"),
			msg("$plain-"+r, room, "@bob:example.org", map[string]any{"msgtype": "m.text", "body": "hello"}),
			msg("$remoteplain-"+r, room, "@carol:elsewhere.example", map[string]any{"msgtype": "m.text", "body": "hi"}),
			msg("$image-"+r, room, "@alice:example.org", map[string]any{"msgtype": "m.image", "body": "x.png", "url": "mxc://example.org/abc",
				"info": map[string]any{"thumbnail_url": "mxc://example.org/thumb"}}),
			enc("$cipher-"+r, room, "@alice:example.org"),
			st("$retention-"+r, room, "@alice:example.org", "m.room.retention", "", map[string]any{"max_lifetime": 7200000}),
			enc("$cipher2-"+r, room, "@bob:example.org"),
			st("$alias-"+r, room, "@alice:example.org", "m.room.canonical_alias", "", map[string]any{"alias": "#icu-" + r + ":example.org"}),
			encryption,
			enc("$cipher3-"+r, room, "@alice:example.org"),
			member("$bobleaves-"+r, room, "@bob:example.org", "@bob:example.org", "leave"),
		})
	}
	txns = append(txns, []map[string]any{
		msg("$old-msg", "!old:example.org", "@dave:example.org", map[string]any{"msgtype": "m.text", "body": "older than the service"}),
		enc("$old-cipher", "!old:example.org", "@dave:example.org"),
		msg("$cmd1", "!mgmt:example.org", "@admin:example.org", map[string]any{"msgtype": "m.text", "body": "!holds"}),
		enc("$cmd2", "!mgmt:example.org", "@admin:example.org"),
		msg("$botsays", "!mgmt:example.org", "@hipaa:example.org", map[string]any{"msgtype": "m.notice", "body": "ok"}),
	})
	return txns
}

// TestDecisionsUnchanged runs a fixed set of events through the assembled
// service's dispatcher (every feature installed, no job run) and compares
// what it stored with testdata/decisions.golden: the jobs' kinds, dedupe
// keys and payloads in the order queued, the expiries scheduled, and the
// audit records in order. Kinds, keys and payloads are stored, so they must
// not change when the code moves; run with -update only for a change of
// behaviour that is meant, and say so in the commit.
func TestDecisionsUnchanged(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) { decisionsUnchanged(t, dbType) })
	}
}

func decisionsUnchanged(t *testing.T, dbType string) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	cfgText := strings.Replace(string(config.Example()), "  room: \"\"\n  users: []\n", "  room: \"!mgmt:example.org\"\n  users: [\"@admin:example.org\"]\n", 1)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(goldenPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.EnsureTokens(); err != nil {
		t.Fatal(err)
	}
	if cfg, err = config.Load(cfgPath); err != nil {
		t.Fatal(err)
	}
	cfg.Database.Type, cfg.Database.URI = dbType, storetest.NewURI(t, dbType)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ctx := context.Background()
	svc, err := appservice.New(ctx, cfg, zerolog.New(io.Discard), clock)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.DB.Close()
	if err := assembly.AddFeatures(svc); err != nil {
		t.Fatal(err)
	}
	for i, events := range goldenEvents() {
		body, _ := json.Marshal(map[string]any{"events": events})
		req := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/t%d", i), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+cfg.AppService.HSToken.Reveal())
		rec := httptest.NewRecorder()
		svc.Server.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("transaction %d: %d %s", i, rec.Code, rec.Body)
		}
		// One dispatch per transaction, as a running service would mostly do.
		if _, err := svc.Dispatcher.DispatchBatch(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A new policy: a shorter lifetime in one room, encryption required in
	// another, and one room's verified-members rule dropped.
	changed := strings.Replace(goldenPolicy, "    encryption: optional\n    plaintext: allow\n", "", 1)
	changed = strings.Replace(changed, "  retention: 48h\n", "  retention: 24h\n", 1)
	changed = strings.Replace(changed, "    members: verified\n", "    retention: 30m\n    retention_min: 10m\n", 1)
	if changed == goldenPolicy {
		t.Fatal("the changed policy is the same")
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := svc.Policy.Reload(ctx, "test"); !ok || err != nil {
		t.Fatalf("reload: %v %v", ok, err)
	}
	got := goldenDump(t, svc)
	path := filepath.Join("testdata", "decisions.golden")
	if *updateGolden && dbType == "sqlite3" {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("decisions differ from %s at line %d:\n got: %s\nwant: %s", path, i+1, g, w)
			}
		}
	}
}

// goldenDump is what the dispatcher stored, one line each, with
// pseudonyms named by order of appearance (their keys are made at random).
func goldenDump(t *testing.T, svc *appservice.Service) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	rows, err := svc.DB.R.QueryContext(ctx, `SELECT kind, dedupe_key, payload, dry_run, due_at, priority FROM job ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var kind, key, payload string
		var dry bool
		var runAt, prio int64
		if err := rows.Scan(&kind, &key, &payload, &dry, &runAt, &prio); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "job %s %s %s dry=%v due_at=%d priority=%d\n", kind, key, payload, dry, runAt, prio)
	}
	rows.Close()
	rows, err = svc.DB.R.QueryContext(ctx, `SELECT room_id, event_id, sender, received_at, due_at, state FROM expiry ORDER BY due_at, event_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var room, ev, sender, state string
		var received, due int64
		if err := rows.Scan(&room, &ev, &sender, &received, &due, &state); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "expiry %s %s %s received=%d due=%d %s\n", room, ev, sender, received, due, state)
	}
	rows.Close()
	var buf bytes.Buffer
	if _, err := audit.ExportJSONL(ctx, svc.DB, audit.Range{}, &buf); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		delete(m, "hash")
		delete(m, "prev")
		delete(m, "mac")
		delete(m, "prev_mac")
		for _, f := range []string{"actor", "room", "target"} {
			if v, ok := m[f].(string); ok && v != "" {
				if names[v] == "" {
					names[v] = fmt.Sprintf("%s%d", f[:1], len(names)+1)
				}
				m[f] = names[v]
			}
		}
		line, _ := json.Marshal(m)
		fmt.Fprintf(&b, "record %s\n", line)
	}
	return b.String()
}
