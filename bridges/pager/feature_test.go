package pager_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/pager"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/snpp/snpptest"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp/wctptest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// canary is PHI as a room would hold it: in a room's name, a sender's
// display name, a message. None of it may reach a gateway.
const canary = "CANARY-Jane-Doe-MRN-4471"

type noticed struct {
	mu    sync.Mutex
	texts []string
}

func (n *noticed) SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.texts = append(n.texts, text)
	return nil
}

type rig struct {
	p       *apptest.Pipeline
	f       *pager.Feature
	carrier *wctptest.Carrier
	perl    *snpptest.PerlServer
	notices *noticed
	dir     string
}

// newRig is the engine with the pager bridge, a WCTP carrier ("spok") and
// Net::SNPP::Server ("legacy"): alice carries a WCTP pager, bob and dave
// SNPP ones; bob is on call for icu now, dave from tomorrow.
func newRig(t *testing.T, policyYAML string) *rig {
	p := apptest.New(t, "sqlite3")
	r := &rig{p: p, carrier: wctptest.Start(t, "hipaa-hs", "wctp-code"), perl: snpptest.StartPerl(t), notices: &noticed{}, dir: t.TempDir()}
	now := p.Clock.Now().UTC()
	write := func(name, body string) string {
		path := filepath.Join(r.dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	dirFile := write("pagers.yaml", `version: 1
pagers:
  - user: "@alice:h"
    gateway: spok
    recipient: "5551001"
    two_way: true
    multiple_choice: true
  - user: "@bob:h"
    gateway: legacy
    recipient: "5552002"
  - user: "@dave:h"
    gateway: legacy
    recipient: "5554004"
`)
	schedFile := write("oncall.yaml", fmt.Sprintf(`version: 1
zone: UTC
roles:
  - name: icu
    backup: "@alice:h"
    shifts:
      - user: "@bob:h"
        from: "%s"
        to: "%s"
      - user: "@dave:h"
        from: "%s"
        to: "%s"
`, now.Add(-time.Hour).Format("2006-01-02T15:04"), now.Add(24*time.Hour).Format("2006-01-02T15:04"),
		now.Add(24*time.Hour).Format("2006-01-02T15:04"), now.Add(48*time.Hour).Format("2006-01-02T15:04")))
	p.UsePolicy(t, policyYAML)
	env := p.Env()
	env.Config.Pager = config.Pager{Directory: dirFile, Schedule: schedFile, Template: config.DefaultPageTemplate, EndpointSecurityCode: "push-code-for-tests",
		Gateways: []config.Gateway{
			{Name: "spok", Protocol: "wctp", URL: r.carrier.Server.URL, SenderID: "hipaa-hs", SecurityCode: "wctp-code", CAFile: r.carrier.CAFile(r.dir)},
			{Name: "legacy", Protocol: "snpp", Address: r.perl.Addr, Login: r.perl.Login, Password: config.Secret(r.perl.Password), TwoWay: true},
		}}
	r.f = pager.New(env)
	r.f.Notice = r.notices
	p.Add(t, r.f)
	r.f.Start(context.Background())
	srv := httptest.NewServer(p.Server)
	t.Cleanup(srv.Close)
	r.carrier.PushURL, r.carrier.PushCode = srv.URL+"/_hipaa/wctp/spok", "push-code-for-tests"
	return r
}

func encrypted(id, room, sender string) map[string]any {
	return map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": "m.room.encrypted", "origin_server_ts": 1,
		"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": canary, "session_id": "s", "sender_key": "k", "device_id": "D"}}
}

const linked = `version: 1
rooms:
  - room_id: "!icu:h"
    page: ["@alice:h", "role:icu"]
    page_priority: urgent
`

// A message in a linked room pages each target once, through each
// gateway, with nothing of the room in the page.
func TestLinkedRoomPagesEachTargetOnceWithoutPHI(t *testing.T) {
	r := newRig(t, linked)
	p := r.p
	if code := p.Put(t, "t1",
		apptest.State("$name", "!icu:h", "@carol:h", "m.room.name", "", map[string]any{"name": canary}),
		encrypted("$m1", "!icu:h", "@carol:h"),
		apptest.Message("$plain", "!other:h", "@carol:h", canary)); code != 200 {
		t.Fatalf("put: %d", code)
	}
	p.Put(t, "t1-again", encrypted("$m1", "!icu:h", "@carol:h")) // a re-delivery
	p.Dispatch(t)
	p.RunDue(t)
	subs := r.carrier.Submitted()
	if len(subs) != 1 || subs[0].Recipient != "5551001" || subs[0].Priority != "HIGH" || len(subs[0].Choices) != 2 {
		t.Fatalf("WCTP carrier took %+v", subs)
	}
	pages := r.perl.Pages(t)
	if len(pages) != 1 || pages[0].Pager != "5552002" || fmt.Sprint(pages[0].Level) != "1" {
		t.Fatalf("SNPP server took %+v", pages)
	}
	ref := pager.Ref(subs[0].MessageID)
	if want := pager.Render(config.DefaultPageTemplate, ref, policy.PriorityUrgent, 240); subs[0].Text != want || !strings.Contains(want, ref) {
		t.Fatalf("page text %q, want %q", subs[0].Text, want)
	}
	for _, raw := range r.carrier.Raw() {
		if bytes.Contains(raw, []byte(canary)) || bytes.Contains(raw, []byte("carol")) || bytes.Contains(raw, []byte("!icu")) {
			t.Fatalf("PHI reached the WCTP gateway: %s", raw)
		}
	}
	for _, pg := range pages {
		if strings.Contains(pg.Message, canary) || strings.Contains(pg.Message, "carol") {
			t.Fatalf("PHI reached the SNPP gateway: %+v", pg)
		}
	}
	if errs := r.carrier.Problems(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, rec := range p.Records(t) {
		if strings.Contains(fmt.Sprint(rec), canary) || strings.Contains(fmt.Sprint(rec), "@alice") {
			t.Fatalf("audit record with PHI or a user ID: %v", rec)
		}
	}
	sent := 0
	for _, rec := range p.Records(t) {
		if rec["type"] == "page" && rec["action"] == "sent" {
			sent++
		}
	}
	if sent != 2 {
		t.Fatalf("%d page.sent records, want 2", sent)
	}

	// The carrier reports delivery and read, and alice accepts: each pushed
	// twice, each taken once, each told in the room.
	r.carrier.Status(subs[0].MessageID, "5551001", wctp.Delivered, 0)
	r.carrier.Status(subs[0].MessageID, "5551001", wctp.Read, 0)
	r.carrier.Reply(subs[0].MessageID, "5551001", "Accept", true)
	if r.carrier.Confirmed() != 6 {
		t.Fatalf("%d pushes confirmed, want 6", r.carrier.Confirmed())
	}
	if errs := r.carrier.Problems(); len(errs) > 0 {
		t.Fatal(errs)
	}
	p.RunDue(t)
	want := []string{"Page to @alice:h delivered (ref " + ref + ").", "Page to @alice:h read (ref " + ref + ").", "Page to @alice:h accepted (ref " + ref + ")."}
	if fmt.Sprint(r.notices.texts) != fmt.Sprint(want) {
		t.Fatalf("the room was told %q, want %q", r.notices.texts, want)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'accepted'`); n != 1 {
		t.Fatalf("%d accepted pages", n)
	}
	// A late DELIVERED does not take the page back from accepted.
	r.carrier.Status(subs[0].MessageID, "5551001", wctp.Delivered, 0)
	if n := p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'accepted'`); n != 1 {
		t.Fatal("a late status moved the page back")
	}
}

// The sender is not paged about their own message; a role nobody covers
// fails the page for good, audited.
func TestPageTargetsResolved(t *testing.T) {
	r := newRig(t, `version: 1
rooms:
  - room_id: "!icu:h"
    page: ["@alice:h", "role:icu"]
  - room_id: "!night:h"
    page: ["role:night"]
`)
	p := r.p
	p.Put(t, "t1", encrypted("$a", "!icu:h", "@alice:h"), encrypted("$n", "!night:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	if n := len(r.carrier.Submitted()); n != 0 {
		t.Fatalf("alice was paged about her own message (%d pages)", n)
	}
	if n := len(r.perl.Pages(t)); n != 1 {
		t.Fatalf("%d SNPP pages, want bob's one", n)
	}
	state, lastErr := p.JobState(t, "page:$n:role:night")
	if state != "failed" || !strings.Contains(lastErr, "nobody is on call for role night") {
		t.Fatalf("a role with nobody on call: %s %q", state, lastErr)
	}
	// The schedule decides at the moment of the page: tomorrow, dave.
	p.Clock.Advance(25 * time.Hour)
	p.Put(t, "t2", encrypted("$b", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	pages := r.perl.Pages(t)
	if len(pages) != 2 || pages[1].Pager != "5554004" {
		t.Fatalf("tomorrow's on-call page went to %+v", pages)
	}
}

// A gateway outage: pages queued during it go out after it, none lost;
// a send whose outcome is unknown is audited before it is retried.
func TestGatewayOutage(t *testing.T) {
	r := newRig(t, `version: 1
rooms:
  - room_id: "!icu:h"
    page: ["@alice:h"]
`)
	p := r.p
	r.carrier.SetDown(true)
	p.Put(t, "t1", encrypted("$1", "!icu:h", "@carol:h"), encrypted("$2", "!icu:h", "@carol:h"), encrypted("$3", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	if len(r.carrier.Submitted()) != 0 {
		t.Fatal("pages went out during the outage")
	}
	r.carrier.SetDown(false)
	r.carrier.DropNextAfterTaking(1)
	for i := 0; i < 5 && len(r.carrier.Submitted()) < 4; i++ {
		p.Clock.Advance(15 * time.Second)
		p.RunDue(t)
	}
	ids := map[string]int{}
	for _, s := range r.carrier.Submitted() {
		ids[s.MessageID]++
	}
	if len(ids) != 3 {
		t.Fatalf("%d distinct pages after the outage, want 3: %v", len(ids), ids)
	}
	dups := 0
	for _, n := range ids {
		dups += n - 1
	}
	unknown := 0
	for _, rec := range p.Records(t) {
		if rec["type"] == "page" && rec["action"] == "outcome-unknown" {
			unknown++
		}
	}
	if dups != 1 || unknown != 1 {
		t.Fatalf("%d duplicate pages, %d audited as outcome-unknown; want 1 and 1", dups, unknown)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'sent' AND unknown_sends = 1`); n != 1 {
		t.Fatalf("%d pages marked with an unknown send", n)
	}
}

// A gateway that cannot push is polled: its statuses and replies come in
// with PollForMessages, each acknowledged in the next poll once stored.
func TestPolledGateway(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	carrier := wctptest.Start(t, "hipaa-hs", "wctp-code")
	_, notices := running(t, p, "version: 1\npagers:\n  - user: \"@alice:h\"\n    gateway: spok\n    recipient: \"5551001\"\n", linked, config.Pager{
		Gateways: []config.Gateway{{Name: "spok", Protocol: "wctp", URL: carrier.Server.URL, SenderID: "hipaa-hs", SecurityCode: "wctp-code",
			CAFile: carrier.CAFile(t.TempDir()), PollInterval: config.Duration(time.Second)}}})
	p.Put(t, "t1", encrypted("$m1", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	subs := carrier.Submitted()
	if len(subs) != 1 {
		t.Fatalf("%d pages", len(subs))
	}
	carrier.Status(subs[0].MessageID, "5551001", wctp.Delivered, 0)
	carrier.Reply(subs[0].MessageID, "5551001", "On my way", false)
	deadline := time.Now().Add(10 * time.Second)
	for carrier.Waiting() > 0 || p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'replied'`) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still waiting at the carrier", carrier.Waiting())
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.RunDue(t)
	ref := pager.Ref(subs[0].MessageID)
	want := fmt.Sprint([]string{"Page to @alice:h delivered (ref " + ref + ").", "Reply from @alice:h's pager (ref " + ref + "): On my way"})
	if got := fmt.Sprint(notices.texts); got != want {
		t.Fatalf("the room was told %s, want %s", got, want)
	}
	if errs := carrier.Problems(); len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, rec := range p.Records(t) {
		if strings.Contains(fmt.Sprint(rec), "On my way") {
			t.Fatal("a reply's text is in the audit trail")
		}
	}
}

// A two-way SNPP gateway is asked (MSTAtus) about its level 3 pages:
// delivery and the pager's Accept come back like a WCTP gateway's.
func TestSNPPLevelThreeStatusPolled(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	perl := snpptest.StartPerl(t)
	_, notices := running(t, p, "version: 1\npagers:\n  - user: \"@bob:h\"\n    gateway: legacy\n    recipient: \"5552002\"\n    two_way: true\n    multiple_choice: true\n",
		"version: 1\nrooms:\n  - room_id: \"!icu:h\"\n    page: [\"@bob:h\"]\n", config.Pager{Gateways: []config.Gateway{
			{Name: "legacy", Protocol: "snpp", Address: perl.Addr, Login: perl.Login, Password: config.Secret(perl.Password), TwoWay: true, PollInterval: config.Duration(time.Second)}}})
	p.Put(t, "t1", encrypted("$m1", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	pages := perl.Pages(t)
	if len(pages) != 1 || !strings.HasSuffix(pages[0].Responses["01"], "Accept") {
		t.Fatalf("pages %+v, want one offering Accept", pages)
	}
	var tag string
	if err := p.DB.R.QueryRow(`SELECT tag FROM page`).Scan(&tag); err != nil || tag == "" {
		t.Fatalf("the level 3 page's tag: %q %v", tag, err)
	}
	msgTag, _, _ := strings.Cut(tag, " ")
	waitState := func(state string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p.Count(t, `SELECT COUNT(*) FROM page WHERE state = '`+state+`'`) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("the page never became %s", state)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	perl.SetStatus(t, msgTag, "860 1 20261205100000 Delivered, Awaiting Read Confirmation")
	waitState("delivered")
	perl.SetStatus(t, msgTag, "889 1 20261205100100 01 Accept")
	waitState("accepted")
	p.RunDue(t)
	ref := pager.Ref(pageIDOf(t, p))
	want := fmt.Sprint([]string{"Page to @bob:h delivered (ref " + ref + ").", "Page to @bob:h accepted (ref " + ref + ")."})
	if got := fmt.Sprint(notices.texts); got != want {
		t.Fatalf("the room was told %s, want %s", got, want)
	}
}

// pageIDOf is the one page's ID.
func pageIDOf(t *testing.T, p *apptest.Pipeline) string {
	var id string
	if err := p.DB.R.QueryRow(`SELECT id FROM page`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// A WCTP device the directory gives no length for is asked about
// (LookupSubscriber), and its page is cut to what the gateway reports.
func TestDeviceLengthFromLookup(t *testing.T) {
	p := apptest.New(t, "sqlite3")
	carrier := wctptest.Start(t, "hipaa-hs", "wctp-code")
	carrier.LookupLength = 60
	running(t, p, "version: 1\npagers:\n  - user: \"@alice:h\"\n    gateway: spok\n    recipient: \"5551001\"\n", linked, config.Pager{
		Template: "New secure message waiting for you in Element, the hospital's messenger (ref {ref})", EndpointSecurityCode: "push-code-for-tests",
		Gateways: []config.Gateway{{Name: "spok", Protocol: "wctp", URL: carrier.Server.URL, SenderID: "hipaa-hs", SecurityCode: "wctp-code", CAFile: carrier.CAFile(t.TempDir())}}})
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Contains(bytes.Join(carrier.Raw(), nil), []byte("wctp-LookupSubscriber")) {
		if time.Now().After(deadline) {
			t.Fatal("the device was never looked up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the answer stored
	p.Put(t, "t1", encrypted("$m1", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	subs := carrier.Submitted()
	if len(subs) != 1 || len([]rune(subs[0].Text)) != 60 || !strings.HasSuffix(subs[0].Text, "(ref "+pager.Ref(subs[0].MessageID)+")") {
		t.Fatalf("pages %+v, want one cut to the device's 60 characters, its reference kept", subs)
	}
	if errs := carrier.Problems(); len(errs) > 0 {
		t.Fatal(errs)
	}
}

// running is the bridge on p with one directory and config, started, its
// loops running until the test ends.
func running(t *testing.T, p *apptest.Pipeline, directory, policyYAML string, cfg config.Pager) (*pager.Feature, *noticed) {
	t.Helper()
	dirFile := filepath.Join(t.TempDir(), "pagers.yaml")
	if err := os.WriteFile(dirFile, []byte(directory), 0o600); err != nil {
		t.Fatal(err)
	}
	p.UsePolicy(t, policyYAML)
	env := p.Env()
	cfg.Directory = dirFile
	if cfg.Template == "" {
		cfg.Template = config.DefaultPageTemplate
	}
	env.Config.Pager = cfg
	f := pager.New(env)
	notices := &noticed{}
	f.Notice = notices
	p.Add(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	f.Start(ctx)
	for _, loop := range f.Loops() {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	return f, notices
}

// A gateway's status about no page of ours changes nothing and tells no
// room; a failure status on one of ours fails it and tells the room.
func TestStatusForNoPageAndFailure(t *testing.T) {
	r := newRig(t, `version: 1
rooms:
  - room_id: "!icu:h"
    page: ["@alice:h"]
`)
	p := r.p
	p.Put(t, "t1", encrypted("$m1", "!icu:h", "@carol:h"))
	p.Dispatch(t)
	p.RunDue(t)
	subs := r.carrier.Submitted()
	if len(subs) != 1 {
		t.Fatalf("%d pages", len(subs))
	}
	r.carrier.Status("hpnotoursatall", "5551001", wctp.Read, 0)
	r.carrier.Reply("hpnotoursatall", "5551001", "Accept", true)
	p.RunDue(t)
	if len(r.notices.texts) != 0 || p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'sent'`) != 1 {
		t.Fatalf("a push about no page of ours: room told %q", r.notices.texts)
	}
	r.carrier.Status(subs[0].MessageID, "5551001", "", 503)
	p.RunDue(t)
	ref := pager.Ref(subs[0].MessageID)
	if fmt.Sprint(r.notices.texts) != fmt.Sprint([]string{"The page to @alice:h could not be delivered (ref " + ref + ")."}) ||
		p.Count(t, `SELECT COUNT(*) FROM page WHERE state = 'failed'`) != 1 {
		t.Fatalf("after a failure status: room told %q", r.notices.texts)
	}
}
