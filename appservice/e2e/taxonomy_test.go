package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit/audittest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// One real flow on Dendrite produces every record type the service writes,
// every membership kind, and each as a valid FHIR AuditEvent: the trail
// answers who did what, where and when for all of it.
func TestEveryRecordTypeFromARealFlow(t *testing.T) {
	st := startStack(t, devstack.Options{JobMaxAttempts: 2, AuditExporters: []map[string]any{{
		"name": "fhir", "type": "fhir", "path": "audit/auditevent.ndjson",
	}}})
	ctx := context.Background()
	dir := filepath.Dir(st.ServiceConfig)
	alice := newUser(t, st, "alice")
	bob := newUser(t, st, "bob")
	carol := newUser(t, st, "carol")

	// policy.load: an edit put in force, and a broken one refused.
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), append(policy.Example(), []byte("\n# edited\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "a policy reload", func(l auditLine) bool {
		return l.Type == "policy.load" && l.Detail == "file-changed" && l.Outcome == "success"
	})
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte("version: 1\ndefaults:\n  encryption: sometimes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "a refused policy", func(l auditLine) bool { return l.Type == "policy.load" && l.Outcome == "failure" })

	// Memberships of every kind, a message, a state change; decisions and jobs.
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID, carol.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []*mautrix.Client{bob, carol} {
		if _, err := u.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.SendText(ctx, room.RoomID, "plaintext"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateTopic, "", map[string]string{"topic": "rounds"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.KickUser(ctx, room.RoomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "shift over"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.BanUser(ctx, room.RoomID, &mautrix.ReqBanUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	other, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.LeaveRoom(ctx, other.RoomID); err != nil {
		t.Fatal(err)
	}
	// job.failed: a room whose encryption nobody may turn on.
	if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", PowerLevelOverride: &event.PowerLevelsEventContent{
		Users: map[id.UserID]int{alice.UserID: 100}, Events: map[string]int{event.StateEncryption.Type: 101},
	}}); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "a failed job", func(l auditLine) bool { return l.Type == "job.failed" })
	waitAudit(t, st, "bob's kick", func(l auditLine) bool { return l.Type == "event.received" && l.Detail == "kick" })
	waitAudit(t, st, "carol's ban", func(l auditLine) bool { return l.Type == "event.received" && l.Detail == "ban" })
	waitAudit(t, st, "bob leaving", func(l auditLine) bool { return l.Type == "event.received" && l.Detail == "leave" })

	// service.stop and a final audit.checkpoint, then service.start again;
	// audit.read from the CLI.
	st.StopService()
	// (A bad policy would keep it from starting: put the good one back.)
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), policy.Example(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	verify(t, st)
	if out, errOut, err := st.Service("rooms"); err != nil {
		t.Fatalf("rooms: %v %s%s", err, out, errOut)
	}
	lines, _ := export(t, st)
	types := map[string]int{}
	details := map[string]int{}
	for _, l := range lines {
		types[l.Type]++
		if l.Type == "event.received" && l.EventType == "m.room.member" {
			details[l.Detail]++
		}
	}
	for _, want := range []string{audit.TypeServiceStart, audit.TypeServiceStop, audit.TypeEventReceived, audit.TypePolicyLoad,
		audit.TypePolicyDecision, audit.TypeJobApplied, audit.TypeJobFailed, audit.TypeAuditRead, audit.TypeCheckpoint, audit.TypeAdminCommand} {
		if types[want] == 0 {
			t.Errorf("no %s record from the flow (have %v)", want, types)
		}
	}
	for _, want := range []string{"join", "invite", "leave", "kick", "ban"} {
		if details[want] == 0 {
			t.Errorf("no m.room.member record with detail %s (have %v)", want, details)
		}
	}

	// The FHIR exporter has them all, each a valid R4 AuditEvent.
	var resources []string
	waitFor(t, "an AuditEvent of every record type", func() bool {
		fhir, _ := os.ReadFile(filepath.Join(dir, "audit", "auditevent.ndjson"))
		resources = strings.Split(strings.TrimSpace(string(fhir)), "\n")
		for typ := range types {
			if !strings.Contains(string(fhir), `"code":"`+typ+`"`) {
				return false
			}
		}
		return true
	})
	for _, r := range resources {
		if err := audittest.ValidateFHIR(t, []byte(r)); err != nil {
			t.Fatalf("invalid AuditEvent: %v\n%s", err, r)
		}
	}
	t.Logf("%d records: %v; memberships %v", len(lines), types, details)
}
