package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/compliance"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/compliance/compliancetest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// complianceReport runs `compliance report -format json` with args and
// parses it.
func complianceReport(t *testing.T, st *devstack.Stack, args ...string) (*compliance.Report, []byte) {
	t.Helper()
	out, errOut, err := st.Service(append([]string{"compliance", "report", "-format", "json", "-since", "2h"}, args...)...)
	if err != nil {
		t.Fatalf("compliance report: %v\n%s", err, errOut)
	}
	var rep compliance.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	return &rep, out
}

func findingIDs(rep *compliance.Report) []string {
	var ids []string
	for _, f := range rep.Findings {
		ids = append(ids, f.ID)
	}
	return ids
}

// The compliance report from a real run on Dendrite, with the condition of
// every finding seeded by doing what causes it: a room the bot cannot
// encrypt, one whose plain image cannot be quarantined, one in dry-run; plaintext,
// redacted, once with the homeserver frozen while the redaction is under
// way; an unverified person refused; an unverified session warned; a wipe
// the homeserver cannot do; an archived room whose key a client withheld;
// emergency access; rules sent and not acknowledged, then training turned
// off; an exporter that cannot deliver; no backup; a homeserver older than
// the minimum; a policy file that does not load. Then the same run with
// the homeserver down (version unknown, a wipe waiting), without a
// minimum, and with the checkpoints deleted and a record edited. Each
// report is checked field by field; the HTML one is rendered in Chromium;
// no report holds a name, a message or an ID. Between them the reports
// show all 24 finding types.
func TestComplianceReportFromARealRun(t *testing.T) {
	if homeserver == "synapse" {
		t.Skip("the report's real run is on Dendrite (a one-device wipe is how it seeds a failed one)")
	}
	// Federation on: Dendrite says its version only on the federation API.
	e := newEvidenceStack(t, devstack.Options{Federate: true, JobMaxAttempts: 2, AuditExporters: []map[string]any{{
		"name": "siem", "type": "syslog", "address": "127.0.0.1:9",
	}}, HomeserverConfig: map[string]any{"pusher_check_interval": "1s"}}, map[string]map[string]any{"compliance": {"homeserver_min_version": "99.0", "exporter_max_lag": "1s"}})
	st, ctx := e.st, context.Background()
	dir := filepath.Dir(st.ServiceConfig)
	nurse := newE2EEUser(t, st, "nurse")
	visitor := newE2EEUser(t, st, "visitor")
	wes := newE2EEUser(t, st, "wes")
	plain := newUser(t, st, "plain")
	for _, v := range [][]string{{string(nurse.UserID), "1003000126", "nurse"}} {
		if _, errOut, err := st.Service("roster", "verify", "-user", v[0], "-npi", v[1], "-role", v[2]); err != nil {
			t.Fatalf("roster verify: %v %s", err, errOut)
		}
	}
	canaries := []string{string(e.doc.UserID), string(nurse.UserID), string(visitor.UserID), string(wes.UserID), string(plain.UserID), "@officer"}

	// Rooms: a trial in dry-run, an archived one, one the bot cannot
	// encrypt.
	trial := enrolledRoom(t, st, e.doc)
	records := enrolledRoom(t, st, e.doc, wes.UserID)
	if _, err := wes.JoinRoomByID(ctx, records); err != nil {
		t.Fatal(err)
	}
	unencryptable, err := e.doc.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", PowerLevelOverride: &event.PowerLevelsEventContent{
		Users: map[id.UserID]int{e.doc.UserID: 100}, Events: map[string]int{event.StateEncryption.Type: 101}}})
	if err != nil {
		t.Fatal(err)
	}
	pol := bytes.Replace(evidencePolicy(e.icu, e.psych), []byte("rooms:\n"), []byte(fmt.Sprintf(`rooms:
  - room_id: "%s"
    dry_run: true
  - room_id: "%s"
    archive: on
`, trial, records)), 1)
	pol = bytes.Replace(pol, []byte("unverified_sessions: allow"), []byte("unverified_sessions: warn"), 1)
	setPolicy(t, st, pol)
	waitFor(t, "the unencryptable room to need attention", func() bool {
		out, _, _ := st.Service("rooms", "-problems")
		return strings.Contains(string(out), string(unencryptable.RoomID))
	})

	// Training: the visitor is sent the rules and does not answer; the
	// nurse acknowledges hers.
	e.joinLobby(t, visitor)
	e.rules(t, visitor)
	e.joinLobby(t, nurse)
	dm := e.rules(t, nurse).RoomID
	say(t, nurse, dm, "understood")
	// Emergency access: the nurse into the ICU.
	say(t, nurse, dm, fmt.Sprintf("!breakglass %s patient crashing", e.icu))
	waitFor(t, "the nurse in the ICU", func() bool { return nurse.StateStore.IsInRoom(ctx, e.icu, nurse.UserID) })
	// Refused: the visitor invited to the ICU.
	if _, err := e.doc.InviteUser(ctx, e.icu, &mautrix.ReqInviteUser{UserID: visitor.UserID}); err != nil {
		t.Fatal(err)
	}
	// Plaintext in the lobby (required encrypted): redacted; then again with
	// the homeserver frozen for 800 ms as the redaction starts, until one
	// such redaction took over half a second.
	if _, err := e.doc.InviteUser(ctx, e.lobby, &mautrix.ReqInviteUser{UserID: plain.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.JoinRoomByID(ctx, e.lobby); err != nil {
		t.Fatal(err)
	}
	// A plain (unencrypted) image: redacted, and its quarantine fails for
	// good on Dendrite (no media admin API), so the lobby needs attention.
	if _, err := plain.SendMessageEvent(ctx, e.lobby, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgImage, Body: "scan.png",
		URL: id.ContentURIString("mxc://" + st.Opts.ServerName + "/PHICANARYmedia")}); err != nil {
		t.Fatal(err)
	}
	db := serviceDB(t, st, "mode=ro")
	for i := 0; ; i++ {
		sent, err := plain.SendText(ctx, e.lobby, fmt.Sprintf("PHI-CANARY bed %d potassium 6.1", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			continue
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			var n int
			db.QueryRowContext(ctx, `SELECT COUNT(*) FROM job WHERE kind = 'redact' AND payload LIKE ?`, "%"+string(sent.EventID)+"%").Scan(&n)
			if n > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		st.PauseHomeserver(800 * time.Millisecond)
		rep, _ := complianceReport(t, st, "-offline")
		if rep.Evidence.Plaintext.WindowMaxMs > 500 {
			t.Logf("a redaction took %d ms with the homeserver frozen (attempt %d)", rep.Evidence.Plaintext.WindowMaxMs, i)
			break
		}
		if i == 5 {
			t.Fatalf("no redaction was slowed by freezing the homeserver: %+v", rep.Evidence.Plaintext)
		}
	}
	// The archive: wes's client withholds the key from the bot.
	mach := wes.Crypto.(*cryptohelper.CryptoHelper).Machine()
	if _, err := mach.FetchKeys(ctx, []id.UserID{e.botID}, true); err != nil {
		t.Fatal(err)
	}
	devices, err := mach.CryptoStore.GetDevices(ctx, e.botID)
	if err != nil || len(devices) == 0 {
		t.Fatalf("wes sees no devices of the bot (%v)", err)
	}
	for _, d := range devices {
		d.Trust = id.TrustStateBlacklisted
		if err := mach.CryptoStore.PutDevice(ctx, e.botID, d); err != nil {
			t.Fatal(err)
		}
	}
	say(t, wes, records, "PHI-CANARY withheld from the archive")
	// The nurse's phone asks its push gateway for whole events.
	if _, err := nurse.MakeRequest(ctx, http.MethodPost, nurse.BuildClientURL("v3", "pushers", "set"), map[string]any{
		"kind": "http", "app_id": "org.example.hipaa.test", "app_display_name": "Test", "device_display_name": "phone",
		"pushkey": "key-" + string(nurse.DeviceID), "lang": "en", "data": map[string]any{"url": "https://push.example.org/_matrix/push/v1/notify"}}, nil); err != nil {
		t.Fatalf("set pusher: %v", err)
	}
	// A wipe Dendrite cannot do (one device).
	if out, errOut, err := st.Service("wipe", "-user", string(plain.UserID), "-device", "PHONE", "-reason", "lost phone", "-wait", "0s"); !strings.Contains(string(out), "requested") {
		t.Fatalf("wipe: %v %s %s", err, out, errOut)
	}
	// The doc's session is not cross-signed: warned.
	waitForLong(t, "the trail to hold everything seeded", 90*time.Second, func() bool {
		have := map[string]bool{}
		lines, _ := export(t, st)
		for _, l := range lines {
			have[l.Type+"/"+l.Action] = true
		}
		for _, want := range []string{"session/unverified_warned", "wipe/failed", "archive/missing", "membership/refuse", "emergency_access/granted", "training/acknowledged",
			"job.failed/enable_encryption", "policy.decision/pusher_check"} {
			if !have[want] {
				return false
			}
		}
		return true
	})
	// Training off, then a policy file that does not load (the last good
	// one, training off, stays in force).
	setPolicy(t, st, bytes.Replace(pol, []byte("training: on\n"), []byte("training: off\n"), 1))
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte("version: 1\ndefaults:\n  encryption: sometimes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, st, "the broken policy refused", func(l auditLine) bool { return l.Type == "policy.load" && l.Outcome == "failure" })

	// The report, field by field.
	rep, raw := complianceReport(t, st)
	ev := rep.Evidence
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: %s", what, raw)
		}
	}
	check("rooms", ev.Rooms.Known >= 9 && ev.Rooms.Unencrypted == 1 && ev.Rooms.NeedAttention == 2 && ev.Rooms.DryRun == 1 &&
		ev.Rooms.Encrypted == ev.Rooms.Known-1 && ev.Rooms.EncryptionRequired == ev.Rooms.Known)
	check("plaintext", ev.Plaintext.Redacted >= 2 && ev.Plaintext.WindowSamples == int(ev.Plaintext.Redacted) && ev.Plaintext.WindowP50Ms > 0 &&
		ev.Plaintext.WindowMaxMs > 500 && ev.Plaintext.WouldRedact == 0)
	check("membership", ev.Membership.Refused["not_verified"] == 1 && ev.Membership.Refused["role_not_allowed"] == 0 && ev.Membership.Admitted >= 1)
	check("sessions", ev.Sessions.UnverifiedWarned >= 1 && ev.Sessions.UnverifiedSignedOut == 0)
	check("wipes", ev.Wipes == compliance.Wipes{Requested: 1, Failed: 1})
	check("archive", ev.Archive.Missing == 1)
	// Sent to everyone who joined a room under policy once training was on
	// (doc, wes, the visitor, the nurse, plain); only the nurse answered.
	check("training", !ev.Training.On && ev.Training.Sent == 5 && ev.Training.Acknowledged == 1 && ev.Training.Unacknowledged == 4)
	check("emergency", ev.Emergency.Granted == 1 && ev.Emergency.Open == 1 && len(ev.Emergency.Refused) == 0)
	check("jobs", ev.Jobs.Failed >= 1)
	check("audit", ev.Audit.Intact && ev.Audit.CheckpointsChecked >= 1 && ev.Audit.CheckpointSeq > 0 && ev.Audit.Records == ev.Audit.Head && strings.HasPrefix(ev.Audit.KeyID, "ed25519:"))
	check("exporters", slices.ContainsFunc(ev.Exporters, func(x compliance.Exporter) bool { return x.Name == "siem" && x.Lagging && x.Behind > 0 }) &&
		slices.ContainsFunc(ev.Exporters, func(x compliance.Exporter) bool { return x.Name == "local" && !x.Lagging }))
	check("backup", ev.Backup.Applicable && ev.Backup.Last.IsZero())
	check("pushers", ev.Pushers.Checked && ev.Pushers.WithContent == 1 && ev.Pushers.Users >= 5)
	d := rep.Deployment
	check("deployment", d.HomeserverName == "Dendrite" && strings.HasPrefix(d.HomeserverVersion, "0.13.8") && d.HomeserverPatched != nil && !*d.HomeserverPatched &&
		d.PolicyFileRefused && d.Database == "sqlite3" && d.PolicyHash != "")
	want := []string{"rooms-unencrypted", "policy-file-refused", "homeserver-outdated", "exporters-lagging", "backup-stale", "wipes-failed", "jobs-failed",
		"rooms-attention", "rooms-dry-run", "plaintext-sent", "enforcement-slow", "unverified-sessions", "emergency-access-used", "archive-missing",
		"members-refused", "pushers-content", "training-unacknowledged", "training-off"}
	got := findingIDs(rep)
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("no %s finding: %v", w, got)
		}
	}
	if got[0] != "rooms-unencrypted" {
		t.Errorf("the first finding is %s", got[0])
	}

	// HTML, in Chromium: the charts are drawn, nothing is logged.
	htmlPath := filepath.Join(t.TempDir(), "report.html")
	if _, errOut, err := st.Service("compliance", "report", "-format", "html", "-since", "2h", "-out", htmlPath); err != nil {
		t.Fatalf("html report: %v %s", err, errOut)
	}
	compliancetest.CheckInChromium(t, htmlPath, len(rep.Findings))
	mdOut, _, err := st.Service("compliance", "report", "-format", "md", "-since", "2h")
	if err != nil {
		t.Fatal(err)
	}
	htmlOut, _ := os.ReadFile(htmlPath)

	// Without a minimum version: that finding instead.
	if err := st.SetConfig("compliance", map[string]any{"homeserver_min_version": ""}); err != nil {
		t.Fatal(err)
	}
	rep2, raw2 := complianceReport(t, st)
	if ids := findingIDs(rep2); !slices.Contains(ids, "homeserver-minimum-unset") || slices.Contains(ids, "homeserver-outdated") {
		t.Errorf("without a minimum: %v", ids)
	}
	// The homeserver down, a wipe asked meanwhile: the version is unknown
	// and the wipe not confirmed.
	st.StopDendrite()
	if out, errOut, err := st.Service("wipe", "-user", string(visitor.UserID), "-reason", "left", "-wait", "0s"); !strings.Contains(string(out), "requested") {
		t.Fatalf("wipe: %v %s %s", err, out, errOut)
	}
	rep3, raw3 := complianceReport(t, st)
	if ids := findingIDs(rep3); !slices.Contains(ids, "homeserver-version-unknown") || !slices.Contains(ids, "wipes-unconfirmed") || rep3.Evidence.Wipes.Unconfirmed != 1 {
		t.Errorf("with the homeserver down: %v %+v", ids, rep3.Evidence.Wipes)
	}
	// A database writer deletes the checkpoints (table and file) and edits a
	// record: both findings, the broken chain first.
	st.StopService()
	w := serviceDB(t, st, "")
	if _, err := w.ExecContext(ctx, `DELETE FROM audit_checkpoint`); err != nil {
		t.Fatal(err)
	}
	// ...and the pushers check's (the report then says it has not run).
	if _, err := w.ExecContext(ctx, `DELETE FROM pusher_check_run`); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ExecContext(ctx, `UPDATE audit SET rec = replace(rec, '"outcome":"success"', '"outcome":"failure"') WHERE seq = 5`); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "audit-checkpoints.jsonl"), nil, 0o600)
	rep4, raw4 := complianceReport(t, st, "-offline")
	if ids := findingIDs(rep4); len(ids) == 0 || ids[0] != "audit-chain-broken" || !slices.Contains(ids, "checkpoints-missing") || !slices.Contains(ids, "pushers-unchecked") ||
		rep4.Evidence.Audit.BrokenAt != 5 {
		t.Errorf("tampered: %v %+v", ids, rep4.Evidence.Audit)
	}
	all := map[string]bool{}
	for _, r := range []*compliance.Report{rep, rep2, rep3, rep4} {
		for _, id := range findingIDs(r) {
			all[id] = true
		}
	}
	if len(all) != 24 {
		t.Errorf("%d finding types shown, want all 24: %v", len(all), all)
	}
	// No report names anyone or holds a message.
	for _, out := range [][]byte{raw, raw2, raw3, raw4, mdOut, htmlOut} {
		for _, c := range append(canaries, "PHI-CANARY", "patient crashing", "understood", string(e.icu), string(records)) {
			if bytes.Contains(out, []byte(c)) {
				t.Errorf("a report holds %q", c)
			}
		}
	}
}
