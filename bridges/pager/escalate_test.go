package pager_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/apptest"
)

const escalating = `version: 1
escalation:
  stat:
    page_after: 2m
    repeat: 2m
    backup_after: 6m
  backup: "@dave:h"
rooms:
  - room_id: "!dm1:h"
    read_tracking: on
    page_priority: stat
  - room_id: "!dm2:h"
    read_tracking: on
    page_priority: stat
  - room_id: "!dm3:h"
    read_tracking: on
    page_priority: stat
  - room_id: "!quiet:h"
    page_priority: stat
`

// putReceipt sends a read receipt as the homeserver pushes it (MSC2409).
func putReceipt(t *testing.T, r *rig, txn, room, user, eventID string) {
	t.Helper()
	body := fmt.Sprintf(`{"events":[],"ephemeral":[{"type":"m.receipt","room_id":%q,"content":{%q:{"m.read":{%q:{"ts":%d}}}}}]}`,
		room, eventID, user, r.p.Clock.Now().UnixMilli())
	req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/"+txn, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apptest.HSToken)
	w := httptest.NewRecorder()
	r.p.Server.ServeHTTP(w, req)
	if w.Code != 200 {
		t.Fatalf("receipt: %d %s", w.Code, w.Body)
	}
}

// An unread direct message is paged to its reader at page_after, again at
// each repeat, and to the backup at backup_after, on the service's clock;
// a read receipt before a page stops it; an Accept stops it; a room
// without read tracking starts nothing.
func TestEscalationOnAFakeClock(t *testing.T) {
	r := newRig(t, escalating)
	p := r.p
	ctx := context.Background()
	join := func(room string, users ...string) (evs []map[string]any) {
		for _, u := range append(users, "@hipaa:h") {
			evs = append(evs, apptest.Member("$j-"+room+u, room, u, u, "join"))
		}
		return evs
	}
	var evs []map[string]any
	evs = append(evs, join("!dm1:h", "@carol:h", "@bob:h")...)
	evs = append(evs, join("!dm2:h", "@carol:h", "@bob:h")...)
	evs = append(evs, join("!dm3:h", "@carol:h", "@alice:h")...)
	evs = append(evs, join("!quiet:h", "@carol:h", "@bob:h")...)
	p.Put(t, "members", evs...)
	p.Dispatch(t)
	start := p.Clock.Now()
	p.Put(t, "msgs", encrypted("$m1", "!dm1:h", "@carol:h"), encrypted("$m2", "!dm2:h", "@carol:h"),
		encrypted("$m3", "!dm3:h", "@carol:h"), encrypted("$m4", "!quiet:h", "@carol:h"))
	p.Dispatch(t)
	if n := p.Count(t, `SELECT COUNT(*) FROM page_watch`); n != 3 {
		t.Fatalf("%d escalations started, want 3 (not the room without read tracking)", n)
	}
	// Where receipts come from the bot's own sync (not Synapse), the bot is
	// invited into each room with read tracking, once.
	if n := p.Count(t, `SELECT COUNT(*) FROM job WHERE kind = 'bot_join' AND dedupe_key LIKE 'bot_join:read_tracking:%'`); n != 3 {
		t.Fatalf("%d bot joins queued for rooms with read tracking, want 3", n)
	}
	// bob reads $m2 in his client before anything is due. His receipt in
	// the room without read tracking is not kept at all.
	p.Clock.Advance(time.Minute)
	putReceipt(t, r, "r1", "!dm2:h", "@bob:h", "$m2")
	putReceipt(t, r, "r2", "!quiet:h", "@bob:h", "$m4")
	if n := p.Count(t, `SELECT COUNT(*) FROM read_receipt WHERE room_id = '!quiet:h'`); n != 0 {
		t.Fatal("a receipt was stored in a room without read tracking")
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM read_receipt WHERE room_id = '!dm2:h'`); n != 1 {
		t.Fatal("the receipt in the tracked room was not stored")
	}
	step := func(to time.Duration) {
		t.Helper()
		p.Clock.Advance(start.Add(to).Sub(p.Clock.Now()))
		if _, err := r.f.Escalate(ctx); err != nil {
			t.Fatal(err)
		}
		p.RunDue(t)
	}
	bobPages := func() (n int) {
		for _, pg := range r.perl.Pages(t) {
			if pg.Pager == "5552002" {
				n++
			}
		}
		return n
	}
	step(2*time.Minute - time.Second)
	if bobPages() != 0 || len(r.carrier.Submitted()) != 0 {
		t.Fatal("paged before page_after")
	}
	step(2 * time.Minute)
	if bobPages() != 1 || len(r.carrier.Submitted()) != 1 {
		t.Fatalf("at page_after: bob %d pages, alice %d; want 1 and 1", bobPages(), len(r.carrier.Submitted()))
	}
	// alice accepts hers; bob does nothing.
	r.carrier.Reply(r.carrier.Submitted()[0].MessageID, "5551001", "Accept", true)
	step(4 * time.Minute)
	if bobPages() != 2 || len(r.carrier.Submitted()) != 1 {
		t.Fatalf("at the repeat: bob %d pages (want 2), alice %d (want 1: she accepted)", bobPages(), len(r.carrier.Submitted()))
	}
	step(6 * time.Minute)
	var dave int
	for _, pg := range r.perl.Pages(t) {
		if pg.Pager == "5554004" {
			dave++
		}
	}
	if bobPages() != 2 || dave != 1 {
		t.Fatalf("at backup_after: bob %d pages (want 2), the backup %d (want 1)", bobPages(), dave)
	}
	step(20 * time.Minute)
	if n := len(r.perl.Pages(t)); n != 3 {
		t.Fatalf("%d SNPP pages after the escalation ended, want 3", n)
	}
	states := map[string]string{}
	for _, ev := range []string{"$m1", "$m2", "$m3"} {
		var st string
		if err := p.DB.R.QueryRow(`SELECT state FROM page_watch WHERE event_id = $1`, ev).Scan(&st); err != nil {
			t.Fatal(err)
		}
		states[ev] = st
	}
	if fmt.Sprint(states) != "map[$m1:escalated $m2:read $m3:accepted]" {
		t.Fatalf("escalations ended %v", states)
	}
	var actions []string
	for _, rec := range p.Records(t) {
		if rec["type"] == "page" && rec["action"] != "sent" {
			actions = append(actions, fmt.Sprint(rec["action"], " ", rec["detail"]))
		}
	}
	if got := fmt.Sprint(actions); !strings.Contains(got, "read-in-room") || !strings.Contains(got, "escalated backup") || strings.Count(got, "escalated step") != 3 || !strings.Contains(got, "accepted spok") {
		t.Fatalf("audited %s: want three escalation steps (bob twice, alice once), bob's read, alice's acceptance and the backup", got)
	}
}

// With no backup anywhere, an unanswered escalation ends at backup_after,
// audited as unanswered, and pages no one more.
func TestEscalationWithoutBackupEndsUnanswered(t *testing.T) {
	r := newRig(t, `version: 1
escalation:
  stat:
    page_after: 2m
    repeat: 2m
    backup_after: 6m
rooms:
  - room_id: "!dm1:h"
    read_tracking: on
    page_priority: stat
`)
	p := r.p
	var evs []map[string]any
	for _, u := range []string{"@carol:h", "@bob:h"} {
		evs = append(evs, apptest.Member("$j"+u, "!dm1:h", u, u, "join"))
	}
	p.Put(t, "members", evs...)
	p.Dispatch(t)
	start := p.Clock.Now()
	p.Put(t, "msg", encrypted("$m1", "!dm1:h", "@carol:h"))
	p.Dispatch(t)
	for _, at := range []time.Duration{2 * time.Minute, 4 * time.Minute, 6 * time.Minute, 20 * time.Minute} {
		p.Clock.Advance(start.Add(at).Sub(p.Clock.Now()))
		if _, err := r.f.Escalate(context.Background()); err != nil {
			t.Fatal(err)
		}
		p.RunDue(t)
	}
	if n := len(r.perl.Pages(t)); n != 2 {
		t.Fatalf("%d pages, want bob's two", n)
	}
	if n := p.Count(t, `SELECT COUNT(*) FROM page_watch WHERE state = 'unanswered'`); n != 1 {
		t.Fatal("the escalation did not end unanswered")
	}
	unanswered := 0
	for _, rec := range p.Records(t) {
		if rec["type"] == "page" && rec["action"] == "unanswered" && rec["outcome"] == "failure" {
			unanswered++
		}
	}
	if unanswered != 1 {
		t.Fatalf("%d unanswered records", unanswered)
	}
}
