package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// waitAudit polls the export until match finds a record.
func waitAudit(t *testing.T, st *devstack.Stack, what string, match func(auditLine) bool) auditLine {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lines, _ := export(t, st)
		for _, l := range lines {
			if match(l) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the audit trail", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Dry-run changes nothing but audits what it would have done; a broken policy
// edit is refused and the policy in force (here, dry-run) stays.
func TestDryRunAndBadPolicyEdit(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	setPolicy(t, st, []byte("version: 1\ndefaults:\n  dry_run: true\n"))
	policyFile := filepath.Join(filepath.Dir(st.ServiceConfig), "policy.yaml")
	alice := newUser(t, st, "alice")

	checkDryRun := func(label string) {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatal(err)
		}
		sent, err := alice.SendText(ctx, room.RoomID, "plaintext under dry-run")
		if err != nil {
			t.Fatal(err)
		}
		waitAudit(t, st, label+": would-redact decision", func(l auditLine) bool {
			return l.Type == "policy.decision" && l.Outcome == "would" && l.Action == "redact" && l.EventID == string(sent.EventID)
		})
		waitAudit(t, st, label+": would-encrypt job outcome", func(l auditLine) bool {
			return l.Type == "job.applied" && l.Outcome == "would" && l.Action == "enable_encryption"
		})
		// Nothing was applied: no encryption, the message is intact.
		var enc event.EncryptionEventContent
		if err := alice.StateEvent(ctx, room.RoomID, event.StateEncryption, "", &enc); err == nil && enc.Algorithm != "" {
			t.Fatalf("%s: dry-run encrypted the room", label)
		}
		ev, err := alice.GetEvent(ctx, room.RoomID, sent.EventID)
		if err != nil || ev.Unsigned.RedactedBecause != nil {
			t.Fatalf("%s: dry-run redacted the message (%v)", label, err)
		}
	}
	checkDryRun("dry-run")

	// A broken edit during traffic is refused; dry-run stays in force.
	if err := os.WriteFile(policyFile, []byte("version: 1\ndefaults:\n  dry_run: perhaps\n  encryption: required\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "refused policy.load", func(l auditLine) bool { return l.Type == "policy.load" && l.Outcome == "failure" })
	checkDryRun("after a bad edit")
}
