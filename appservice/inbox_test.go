package appservice

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// A homeserver that gets no 200 re-sends the same transaction, and Dendrite
// appends newer events to it. Each event must be stored and audited once.
func TestRetriedTransactionStoresEachEventOnce(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			first := []map[string]any{msgEvent("$a", "!r:hs", "@u:hs", "x"), msgEvent("$b", "!r:hs", "@u:hs", "y")}
			if rec := p.put(t, "txn1", txnBodyOf(first...)); rec.Code != http.StatusOK {
				t.Fatalf("first: %d %s", rec.Code, rec.Body)
			}
			// Same txn ID again, with two more events, one of them repeated inside the body.
			retry := append(first, msgEvent("$c", "!r:hs", "@u:hs", "z"), msgEvent("$d", "!r:hs", "@v:hs", "w"), msgEvent("$c", "!r:hs", "@u:hs", "z"))
			if rec := p.put(t, "txn1", txnBodyOf(retry...)); rec.Code != http.StatusOK {
				t.Fatalf("retry: %d %s", rec.Code, rec.Body)
			}
			// And a plain duplicate of the whole thing under another txn ID.
			if rec := p.put(t, "txn2", txnBodyOf(retry...)); rec.Code != http.StatusOK {
				t.Fatalf("dup: %d %s", rec.Code, rec.Body)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 4 {
				t.Fatalf("inbox holds %d events, want 4", n)
			}
			seen := map[string]int{}
			for _, r := range p.exported(t) {
				if r["type"] == audit.TypeEventReceived {
					seen[r["event_id"].(string)]++
				}
			}
			for _, id := range []string{"$a", "$b", "$c", "$d"} {
				if seen[id] != 1 {
					t.Errorf("%s audited %d times", id, seen[id])
				}
			}
			if len(seen) != 4 {
				t.Errorf("audited events %v", seen)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox WHERE txn_id = 'txn1'`); n != 4 {
				t.Errorf("%d events recorded as first brought by txn1, want 4", n)
			}
		})
	}
}

// If the audit record cannot be written, the transaction is not acknowledged
// and nothing of it is stored; once the trail works again, the retry lands.
func TestAuditFailureIsNotAcknowledged(t *testing.T) {
	breakAudit := map[string][2]string{
		"sqlite3": {`CREATE TRIGGER audit_broken BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END`, `DROP TRIGGER audit_broken`},
		"postgres": {`CREATE FUNCTION audit_broken() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql;
			CREATE TRIGGER audit_broken BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_broken()`, `DROP TRIGGER audit_broken ON audit`},
	}
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			if _, err := p.db.W.Exec(breakAudit[dbType][0]); err != nil {
				t.Fatal(err)
			}
			body := txnBodyOf(msgEvent("$a", "!r:hs", "@u:hs", "x"))
			// Twice: the connection a failure leaves behind must still work.
			for range 2 {
				if rec := p.put(t, "t1", body); rec.Code == http.StatusOK {
					t.Fatal("acknowledged a transaction whose audit record failed")
				}
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 0 {
				t.Fatalf("%d events stored without audit", n)
			}
			if _, err := p.db.W.Exec(breakAudit[dbType][1]); err != nil {
				t.Fatal(err)
			}
			if rec := p.put(t, "t1", body); rec.Code != http.StatusOK {
				t.Fatalf("retry after repair: %d", rec.Code)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM audit`); n != 1 {
				t.Fatalf("%d audit records, want 1", n)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 1 {
				t.Fatalf("%d events stored, want 1", n)
			}
		})
	}
}

func TestDispatcherWalksInboxInOrderAndClearsBodies(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			var seen []string
			p.disp.decider = deciderFunc(func(e *Event, _ *RoomInfo) Decision {
				seen = append(seen, e.ID)
				if len(e.Raw) == 0 {
					t.Errorf("%s dispatched without its content", e.ID)
				}
				return Decision{Jobs: []JobSpec{{Kind: "test", DedupeKey: "test:" + e.ID}}}
			})
			evs := ids("e", 7)
			for i, id := range evs {
				if rec := p.put(t, "t"+id, txnBodyOf(msgEvent(id, "!r:hs", "@u:hs", "secret body"))); rec.Code != 200 {
					t.Fatal(i, rec.Code)
				}
			}
			p.disp.batch = 3
			total := 0
			for {
				n, err := p.disp.DispatchBatch(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				total += n
			}
			if total != 7 || len(seen) != 7 {
				t.Fatalf("dispatched %d", total)
			}
			for i := range evs {
				if seen[i] != evs[i] {
					t.Fatalf("order %v", seen)
				}
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox WHERE content IS NOT NULL`); n != 0 {
				t.Fatalf("%d bodies left after dispatch", n)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM job WHERE state = 'pending'`); n != 7 {
				t.Fatalf("%d jobs enqueued, want 7", n)
			}
			// Dispatching again decides nothing new.
			if n, _ := p.disp.DispatchBatch(context.Background()); n != 0 {
				t.Fatalf("re-dispatched %d", n)
			}
		})
	}
}

type deciderFunc func(*Event, *RoomInfo) Decision

func (f deciderFunc) Decide(e *Event, r *RoomInfo) Decision { return f(e, r) }

// The bot's keep-alive posts are the service talking to itself: not stored,
// not audited. The same event type from anyone else is an ordinary event.
func TestKeepAliveEchoIsDropped(t *testing.T) {
	p := newPipeline(t, "sqlite3")
	ka := map[string]any{"event_id": "$ka", "room_id": "!k:hs", "sender": "@hipaa:hs", "type": KeepAliveType, "content": map[string]any{}}
	other := map[string]any{"event_id": "$o", "room_id": "!k:hs", "sender": "@mallory:hs", "type": KeepAliveType, "content": map[string]any{}}
	if rec := p.put(t, "t1", txnBodyOf(ka, other, msgEvent("$m", "!r:hs", "@u:hs", "x"))); rec.Code != 200 {
		t.Fatal(rec.Code)
	}
	if n := p.count(t, `SELECT COUNT(*) FROM inbox WHERE event_id = '$ka'`); n != 0 {
		t.Fatal("keep-alive echo was stored")
	}
	if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 2 {
		t.Fatalf("%d events stored, want 2", n)
	}
	if p.inbox.lastSeen.Load() == 0 {
		t.Fatal("arrival time not noted")
	}
}

// The audit detail of an event comes from a closed set: membership changes
// by kind (a leave by someone else is a kick), other state events as state.
func TestAuditDetail(t *testing.T) {
	sk := func(s string) *string { return &s }
	member := func(sender, target, m string) *Event {
		e := &Event{Type: "m.room.member", Sender: sender, StateKey: sk(target)}
		e.Content.Membership = m
		return e
	}
	cases := []struct {
		ev   *Event
		want string
	}{
		{member("@a:h", "@a:h", "join"), "join"},
		{member("@a:h", "@a:h", "leave"), "leave"},
		{member("@mod:h", "@a:h", "leave"), "kick"},
		{member("@mod:h", "@a:h", "ban"), "ban"},
		{member("@mod:h", "@a:h", "invite"), "invite"},
		{member("@a:h", "@a:h", "knock"), "knock"},
		{member("@a:h", "@a:h", "Patient Jones"), "other"},
		{&Event{Type: "m.room.topic", StateKey: sk("")}, "state"},
		{&Event{Type: "m.room.message"}, ""},
	}
	for _, c := range cases {
		if got := c.ev.auditDetail(); got != c.want {
			t.Errorf("%s %s by %s: %q, want %q", c.ev.Type, c.ev.Content.Membership, c.ev.Sender, got, c.want)
		}
	}
}

// The dispatcher applies events in inbox order, so a transaction's events
// must keep their order in the inbox and in the audit trail, across SQLite's
// 100-row statements and PostgreSQL's one array statement alike, with
// timestamps out of order (a federated server's clock) and a re-send that
// appends to events already stored.
func TestInboxKeepsTransactionOrder(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			var evs []map[string]any
			var want []string
			for i := 0; i < 250; i++ {
				// IDs that sort differently from their position.
				id := fmt.Sprintf("$%03d", (i*97)%250)
				e := msgEvent(id, "!r:hs", "@u:hs", "x")
				e["origin_server_ts"] = 1700000000000 + int64((i*31)%250)
				evs = append(evs, e)
				want = append(want, id)
			}
			if rec := p.put(t, "t1", txnBodyOf(evs[:150]...)); rec.Code != http.StatusOK {
				t.Fatalf("first: %d %s", rec.Code, rec.Body)
			}
			if rec := p.put(t, "t1", txnBodyOf(evs...)); rec.Code != http.StatusOK {
				t.Fatalf("re-send: %d %s", rec.Code, rec.Body)
			}
			rows, err := p.db.R.Query(`SELECT event_id FROM inbox ORDER BY seq`)
			if err != nil {
				t.Fatal(err)
			}
			var stored []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				stored = append(stored, id)
			}
			rows.Close()
			var audited []string
			for _, r := range p.exported(t) {
				if r["type"] == audit.TypeEventReceived {
					audited = append(audited, r["event_id"].(string))
				}
			}
			if fmt.Sprint(stored) != fmt.Sprint(want) {
				t.Errorf("inbox order differs from the transactions' (first %v)", stored[:min(5, len(stored))])
			}
			if fmt.Sprint(audited) != fmt.Sprint(want) {
				t.Errorf("audit order differs from the transactions' (first %v)", audited[:min(5, len(audited))])
			}
		})
	}
}
