package appservice

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// strictDecider puts the pipeline under the built-in (strict) policy.
func (p *pipeline) strictDecider(t *testing.T) { p.policyDecider(t, "version: 1\n") }

// policyDecider puts the pipeline under a policy and returns its holder.
func (p *pipeline) policyDecider(t *testing.T, yaml string) *PolicyHolder {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	holder, err := NewPolicyHolder(context.Background(), path, p.db, p.chain, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	p.disp = NewDispatcher(p.db, p.chain, &PolicyDecider{Policy: holder, Bot: "@hipaa:h", Keys: p.chain.Keys()}, p.m, zerolog.Nop(), p.runner.Wake)
	return holder
}

type queued struct {
	Kind    string
	Payload actionPayload
}

func (p *pipeline) queuedJobs(t *testing.T) []queued {
	t.Helper()
	rows, err := p.db.R.Query(`SELECT kind, payload FROM job ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []queued
	for rows.Next() {
		var q queued
		var raw []byte
		if err := rows.Scan(&q.Kind, &raw); err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(raw, &q.Payload)
		out = append(out, q)
	}
	return out
}

// Users of another server flood an encrypted room with plaintext, each
// message back-dated to its own origin_server_ts (the remote server sets
// it). Every message is redacted, but as the bot: the service cannot act as
// a remote user, and queuing a job as one would fail on every retry. The
// sender hears once per window of the service's own receive time, not once
// per invented timestamp; and a room created by a remote user is fixed by
// the bot, not "as" its creator.
func TestHostileRemoteFloodOfBackdatedPlaintext(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			p.strictDecider(t)
			room := "!ward:h"
			evs := []map[string]any{
				stateEvent("$create", room, "@alice:h", "m.room.create", "", map[string]any{"room_version": "10"}),
				stateEvent("$enc", room, "@alice:h", "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}),
			}
			const flood = 50
			for i := range flood {
				e := msgEvent(ids("flood", flood)[i], room, "@mallory:evil.example", "plaintext")
				e["origin_server_ts"] = int64(i) * 3_600_000 // an hour apart, by its own clock
				evs = append(evs, e)
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			// A room a remote user created, found on its first message.
			remoteRoom := "!theirs:evil.example"
			if rec := p.put(t, "t2", txnBodyOf(stateEvent("$rcreate", remoteRoom, "@mallory:evil.example", "m.room.create", "", map[string]any{"room_version": "10"}))); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			if _, err := p.disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			var redactions, notices int
			for _, j := range p.queuedJobs(t) {
				switch j.Kind {
				case "redact":
					redactions++
					if j.Payload.ActAs != "@hipaa:h" {
						t.Fatalf("redaction queued as %q, want the bot", j.Payload.ActAs)
					}
				case "notice":
					notices++
					if j.Payload.Target != "@mallory:evil.example" || j.Payload.ActAs != "@alice:h" {
						t.Fatalf("notice %+v", j.Payload)
					}
				case "enable_encryption", "bot_join":
					if j.Payload.Room == remoteRoom && j.Payload.ActAs != "@hipaa:h" && j.Payload.ActAs != "" {
						t.Fatalf("%s in the remote user's room queued as %q", j.Kind, j.Payload.ActAs)
					}
				}
			}
			if redactions != flood || notices != 1 {
				t.Fatalf("%d redactions and %d notices, want %d and 1", redactions, notices, flood)
			}
			// The same again eleven minutes later (by the service's clock) is
			// told once more.
			p.clock.Advance(11 * time.Minute)
			if rec := p.put(t, "t3", txnBodyOf(msgEvent("$later", room, "@mallory:evil.example", "again"))); rec.Code != 200 {
				t.Fatal(rec.Code)
			}
			if _, err := p.disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			notices = 0
			for _, j := range p.queuedJobs(t) {
				if j.Kind == "notice" {
					notices++
				}
			}
			if notices != 2 {
				t.Fatalf("%d notices after a new window, want 2", notices)
			}
		})
	}
}
