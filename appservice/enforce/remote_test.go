package enforce

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

type queued struct {
	Kind    string
	Payload appservice.ActionPayload
}

func queuedJobs(t *testing.T, p *apptest.Pipeline) []queued {
	t.Helper()
	rows, err := p.DB.R.Query(`SELECT kind, payload FROM job ORDER BY id`)
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
			p := apptest.New(t, dbType)
			p.UsePolicy(t, "version: 1\n")
			p.Add(t, New(p.Env()))
			room := "!ward:h"
			evs := []map[string]any{
				apptest.State("$create", room, "@alice:h", "m.room.create", "", map[string]any{"room_version": "10"}),
				apptest.State("$enc", room, "@alice:h", "m.room.encryption", "", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}),
			}
			const flood = 50
			for i := range flood {
				e := apptest.Message(fmt.Sprintf("$flood%d", i), room, "@mallory:evil.example", "plaintext")
				e["origin_server_ts"] = int64(i) * 3_600_000 // an hour apart, by its own clock
				evs = append(evs, e)
			}
			if code := p.Put(t, "t1", evs...); code != 200 {
				t.Fatal(code)
			}
			// A room a remote user created, found on its first message.
			remoteRoom := "!theirs:evil.example"
			if code := p.Put(t, "t2", apptest.State("$rcreate", remoteRoom, "@mallory:evil.example", "m.room.create", "", map[string]any{"room_version": "10"})); code != 200 {
				t.Fatal(code)
			}
			if _, err := p.Disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			var redactions, notices int
			for _, j := range queuedJobs(t, p) {
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
			p.Clock.Advance(11 * time.Minute)
			if code := p.Put(t, "t3", apptest.Message("$later", room, "@mallory:evil.example", "again")); code != 200 {
				t.Fatal(code)
			}
			if _, err := p.Disp.DispatchBatch(context.Background()); err != nil {
				t.Fatal(err)
			}
			notices = 0
			for _, j := range queuedJobs(t, p) {
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
