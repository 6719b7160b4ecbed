package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// Someone who can write to the service's database queues a redaction of a
// colleague's message, in the service's name, while it runs. The service
// refuses the job (it carries no MAC from the service's key): the message
// stays for everyone, and the refusal is in the audit trail.
func TestRedTeamDatabaseWriterCannotQueueActions(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  encryption: optional\n  plaintext: allow\n"))
	alice := newUser(t, st, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendText(ctx, room.RoomID, "handover notes")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(filepath.Dir(st.ServiceConfig), "matrix-hipaa.db")+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	payload := fmt.Sprintf(`{"room":%q,"event_id":%q,"act_as":%q,"reason":"x"}`, room.RoomID, msg.EventID, alice.UserID)
	if _, err := db.Exec(`INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at, priority, mac) VALUES ('redact', 'insider', ?, 'pending', 0, 0, 0, 2, ?)`,
		[]byte(payload), "0000000000000000000000000000000000000000000000000000000000000000"); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the refusal", func(l auditLine) bool {
		return l.Type == "job.failed" && l.Outcome == "denied" && l.Detail == "mac-mismatch" && l.Action == "redact"
	})
	if redacted(ctx, alice, room.RoomID, msg.EventID) {
		t.Fatal("the inserted redaction ran")
	}
	verify(t, st)
}
