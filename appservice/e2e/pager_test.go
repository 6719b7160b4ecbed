package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/bridges/pager"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp/snpptest"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// pagerCanary is PHI as clinicians write it: in the room's name, the
// sender's display name and the message. None of it may reach a gateway.
const pagerCanary = "CANARY-Jane-Doe-MRN-5512"

// onCallSchedule names who covers role icu from an hour ago for a day.
func onCallSchedule(user string) string {
	now := time.Now().UTC()
	return fmt.Sprintf("version: 1\nzone: UTC\nroles:\n  - name: icu\n    shifts:\n      - user: %q\n        from: %q\n        to: %q\n",
		user, now.Add(-time.Hour).Format("2006-01-02T15:04"), now.Add(24*time.Hour).Format("2006-01-02T15:04"))
}

// A message in a room linked to pagers, from a real E2EE client, pages a
// person through a WCTP carrier and an on-call role through SNPP, with
// nothing of the room in any page; the pager's Accept comes back into the
// room, encrypted; and after the schedule changes, the role pages whoever
// it names at that moment (through HylaFAX's hfaxd).
func TestPagerBridge(t *testing.T) {
	carrier := wctptest.Start(t, "hipaa-test", "wctp-secret-code")
	perl := snpptest.StartPerl(t)
	hfax := snpptest.StartHylaFAX(t)
	dir := t.TempDir()
	domain := "localhost"
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path+".tmp", []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	directory := write("pagers.yaml", fmt.Sprintf(`version: 1
pagers:
  - user: "@alice:%[1]s"
    gateway: spok
    recipient: "5551001"
    two_way: true
    multiple_choice: true
  - user: "@bob:%[1]s"
    gateway: legacy
    recipient: "5552002"
  - user: "@dave:%[1]s"
    gateway: hylafax
    recipient: "5554004"
`, domain))
	schedule := write("oncall.yaml", onCallSchedule("@bob:"+domain))
	st := startStack(t, devstack.Options{Pager: map[string]any{
		"directory": directory, "schedule": schedule, "endpoint_security_code": "push-secret-code",
		"gateways": []map[string]any{
			{"name": "spok", "protocol": "wctp", "url": carrier.Server.URL, "sender_id": "hipaa-test", "security_code": "wctp-secret-code", "ca_file": carrier.CAFile(dir)},
			{"name": "legacy", "protocol": "snpp", "address": perl.Addr, "login": perl.Login, "password": perl.Password, "two_way": true},
			{"name": "hylafax", "protocol": "snpp", "address": hfax.Addr, "login": hfax.Login, "password": hfax.Password, "site_commands": []string{"JQUEUE YES"}},
		},
	}})
	carrier.PushURL, carrier.PushCode = fmt.Sprintf("http://127.0.0.1:%d/_hipaa/wctp/spok", st.Opts.ASPort), "push-secret-code"
	ctx := context.Background()
	carol := newE2EEUser(t, st, "carol")
	if err := carol.SetDisplayName(ctx, "Dr Carol "+pagerCanary); err != nil {
		t.Fatal(err)
	}
	// Created encrypted, as Element creates private rooms: the bot is not
	// in it until it has something to say (the sender invites it).
	created, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "ICU bed 4 " + pagerCanary,
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	waitFor(t, "carol's client to see the encrypted room", func() bool {
		enc, _ := carol.StateStore.IsEncrypted(ctx, room)
		return enc
	})
	setPolicy(t, st, []byte(fmt.Sprintf("version: 1\nrooms:\n  - room_id: %q\n    page: [\"@alice:%s\", \"role:icu\"]\n    page_priority: stat\n", room, domain)))

	sent := time.Now()
	if _, err := carol.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "Patient " + pagerCanary + " is crashing"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a page at the WCTP carrier and at Net::SNPP::Server", func() bool {
		return len(carrier.Submitted()) >= 1 && len(perl.Pages(t)) >= 1
	})
	t.Logf("pages at both gateways %s after the message was sent", time.Since(sent).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // any second page would have come by now
	subs, pages := carrier.Submitted(), perl.Pages(t)
	if len(subs) != 1 || subs[0].Recipient != "5551001" || subs[0].Priority != "HIGH" {
		t.Fatalf("WCTP pages %+v, want one to alice's pager", subs)
	}
	if len(pages) != 1 || pages[0].Pager != "5552002" || fmt.Sprint(pages[0].Level) != "0" {
		t.Fatalf("SNPP pages %+v, want one to bob's pager (on call for icu) at level 0", pages)
	}
	ref := pager.Ref(subs[0].MessageID)
	if !strings.Contains(subs[0].Text, ref) || !strings.Contains(pages[0].Message, "(ref ") {
		t.Fatalf("page texts %q and %q carry no reference", subs[0].Text, pages[0].Message)
	}
	if errs := carrier.Problems(); len(errs) > 0 {
		t.Fatalf("documents not valid against the WCTP DTD: %v", errs)
	}

	// The pager answers Accept (pushed twice, as gateways do): the room is
	// told once, encrypted, and the audit trail has it without the text.
	carrier.Reply(subs[0].MessageID, "5551001", "Accept", true)
	notice := carol.waitMessage(t, "the page's acceptance", func(e *event.Event) bool {
		return strings.Contains(textOf(e), "accepted (ref "+ref+")")
	})
	if notice.Type != event.EventMessage || !strings.Contains(textOf(notice), "@alice:"+domain) {
		t.Fatalf("notice %q", textOf(notice))
	}
	waitAudit(t, st, "the acceptance on the record", func(l auditLine) bool { return l.Type == "page" && l.Action == "accepted" })
	time.Sleep(time.Second)
	if n := countAudit(t, st, func(l auditLine) bool { return l.Type == "page" && l.Action == "accepted" }); n != 1 {
		t.Fatalf("%d acceptances on the record for one reply pushed twice", n)
	}

	// The schedule now names dave: the next message pages him, through
	// HylaFAX, with no restart.
	write("oncall.yaml", onCallSchedule("@dave:"+domain))
	waitFor(t, "the new schedule in force", func() bool {
		return countAudit(t, st, func(l auditLine) bool {
			return l.Type == "admin.command" && l.Action == "pager-schedule-load" && l.Outcome == "success"
		}) >= 2
	})
	if _, err := carol.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "Second: " + pagerCanary}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a page in HylaFAX's spool", func() bool { return len(hfax.Pages(t)) >= 1 })
	time.Sleep(2 * time.Second)
	hpages := hfax.Pages(t)
	if len(hpages) != 1 || hpages[0].Pager != "5554004" || !strings.Contains(hpages[0].Text, "(ref ") {
		t.Fatalf("HylaFAX page jobs %+v, want one to dave's pager", hpages)
	}
	if n := len(perl.Pages(t)); n != 1 {
		t.Fatalf("bob, no longer on call, was paged again (%d pages)", n)
	}
	if n := len(carrier.Submitted()); n != 2 {
		t.Fatalf("%d WCTP pages after two messages, want 2", n)
	}

	// The canary scan: every byte any gateway was sent.
	var all [][]byte
	all = append(all, carrier.Raw()...)
	for _, p := range perl.Pages(t) {
		all = append(all, []byte(fmt.Sprintf("%+v", p)))
	}
	for _, p := range hfax.Pages(t) {
		all = append(all, []byte(fmt.Sprintf("%+v", p)))
	}
	hits := 0
	for _, b := range all {
		for _, needle := range []string{pagerCanary, "carol", "Carol", "ICU bed", string(room)} {
			if bytes.Contains(b, []byte(needle)) {
				hits++
				t.Errorf("%q reached a gateway: %s", needle, b)
			}
		}
	}
	t.Logf("canary scan of %d documents and pages sent to gateways: %d hits", len(all), hits)
	lines, raw := export(t, st)
	if bytes.Contains(raw, []byte(pagerCanary)) || bytes.Contains(raw, []byte("Accept")) {
		t.Fatal("the audit trail holds PHI or a reply's text")
	}
	if n := len(lines); n == 0 {
		t.Fatal("no audit trail")
	}
	verify(t, st)
}

// An administrator pages an on-call role from the management room (the one
// room the bot reads); someone not listed as an administrator cannot.
func TestPageFromManagementRoom(t *testing.T) {
	perl := snpptest.StartPerl(t)
	dir := t.TempDir()
	directory := filepath.Join(dir, "pagers.yaml")
	schedule := filepath.Join(dir, "oncall.yaml")
	if err := os.WriteFile(directory, []byte("version: 1\npagers:\n  - user: \"@bob:localhost\"\n    gateway: legacy\n    recipient: \"5552002\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(schedule, []byte(onCallSchedule("@bob:localhost")), 0o600); err != nil {
		t.Fatal(err)
	}
	st := startStack(t, devstack.Options{Pager: map[string]any{"directory": directory, "schedule": schedule,
		"gateways": []map[string]any{{"name": "legacy", "protocol": "snpp", "address": perl.Addr, "login": perl.Login, "password": perl.Password}}}})
	ctx := context.Background()
	botID := botOf(t, st)
	admin := newE2EEUser(t, st, "admin")
	admin.crossSign(t)
	mallory := newE2EEUser(t, st, "mallory")
	mgmt := sharedEncryptedRoom(t, admin, mallory)
	if err := st.SetManagementRoom(string(mgmt), string(admin.UserID)); err != nil {
		t.Fatal(err)
	}
	st.StopService()
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bot to take its seat in the management room", func() bool {
		return admin.StateStore.IsInRoom(ctx, mgmt, botID) && mallory.StateStore.IsInRoom(ctx, mgmt, botID)
	})
	say := func(u *e2eeUser, text string) {
		t.Helper()
		if _, err := u.SendMessageEvent(ctx, mgmt, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: text}); err != nil {
			t.Fatal(err)
		}
	}
	say(mallory, "!page @bob:localhost stat")
	mallory.waitMessage(t, "the refusal", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), "you are not one of the administrators")
	})
	say(admin, "!page role:icu stat")
	reply := admin.waitMessage(t, "the page's answer", func(e *event.Event) bool {
		return e.Sender == botID && strings.Contains(textOf(e), "Paging role:icu (stat), ref ")
	})
	waitFor(t, "bob's page", func() bool { return len(perl.Pages(t)) >= 1 })
	time.Sleep(time.Second)
	pages := perl.Pages(t)
	if len(pages) != 1 || pages[0].Pager != "5552002" || fmt.Sprint(pages[0].Level) != "0" {
		t.Fatalf("pages %+v, want one to bob (on call for icu) at level 0", pages)
	}
	ref := textOf(reply)[strings.Index(textOf(reply), "ref ")+4:][:5]
	if !strings.Contains(pages[0].Message, "(ref "+ref+")") {
		t.Fatalf("the page %q does not carry the reference %s the room was given", pages[0].Message, ref)
	}
	if n := countAudit(t, st, func(l auditLine) bool {
		return l.Type == "admin.command" && l.Action == "page" && l.Outcome == "denied"
	}); n != 1 {
		t.Fatalf("%d refused !page commands on the record, want 1", n)
	}
}
