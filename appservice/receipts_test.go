package appservice

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

func TestParseReceipts(t *testing.T) {
	receipt := func(room, ev, typ, user, extra string) string {
		return fmt.Sprintf(`{"type":"m.receipt","room_id":%q,"content":{%q:{%q:{%q:{"ts":5%s}}}}}`, room, ev, typ, user, extra)
	}
	for _, tc := range []struct {
		name, body string
		want       []Receipt
	}{
		{"stable key", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u:hs", "") + `]}`,
			[]Receipt{{RoomID: "!r:hs", UserID: "@u:hs", EventID: "$e", Type: "m.read", TS: 5}}},
		{"unstable key", `{"de.sorunome.msc2409.ephemeral":[` + receipt("!r:hs", "$e", "m.read.private", "@u:hs", `,"thread_id":"main"`) + `]}`,
			[]Receipt{{RoomID: "!r:hs", UserID: "@u:hs", EventID: "$e", Type: "m.read.private", Thread: "main", TS: 5}}},
		{"both keys read once", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u:hs", "") + `],"de.sorunome.msc2409.ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u:hs", "") + `]}`,
			[]Receipt{{RoomID: "!r:hs", UserID: "@u:hs", EventID: "$e", Type: "m.read", TS: 5}}},
		{"typing and presence skipped", `{"ephemeral":[{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":["@u:hs"]}},{"type":"m.presence","content":{}}]}`, nil},
		{"other receipt types skipped", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.fully_read", "@u:hs", "") + `]}`, nil},
		{"room without sigil", `{"ephemeral":[` + receipt("r:hs", "$e", "m.read", "@u:hs", "") + `]}`, nil},
		{"event without sigil", `{"ephemeral":[` + receipt("!r:hs", "e", "m.read", "@u:hs", "") + `]}`, nil},
		{"user with a space (free text)", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u hs please call", "") + `]}`, nil},
		{"thread that is not an event", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u:hs", `,"thread_id":"ward notes"`) + `]}`, nil},
		{"thread of the wrong type", `{"ephemeral":[` + receipt("!r:hs", "$e", "m.read", "@u:hs", `,"thread_id":7`) + `]}`, nil},
		{"ephemeral not a list", `{"ephemeral":{"type":"m.receipt"}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			txn, err := ParseTransaction([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			got, dropped := txn.Receipts, txn.ReceiptsDropped
			if dropped != 0 || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v (dropped %d), want %+v", got, dropped, tc.want)
			}
		})
	}
}

// A hostile server's flood of receipts is cut at the bound, counted.
func TestReceiptFloodIsBounded(t *testing.T) {
	var users []string
	for i := range MaxReceiptsPerTransaction + 10 {
		users = append(users, fmt.Sprintf(`"@u%d:evil":{"ts":1}`, i))
	}
	body := `{"ephemeral":[{"type":"m.receipt","room_id":"!r:hs","content":{"$e":{"m.read":{` + strings.Join(users, ",") + `}}}}]}`
	txn, err := ParseTransaction([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	got, dropped := txn.Receipts, txn.ReceiptsDropped
	if len(got) != MaxReceiptsPerTransaction || dropped != 10 {
		t.Fatalf("kept %d, dropped %d", len(got), dropped)
	}
}

// Receipts are committed before the 200, each user's newest kept: an older
// one delivered late changes nothing, and a transaction of receipts alone
// is acknowledged like any other.
func TestReceiptsStoredNewestKept(t *testing.T) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			put := func(txn, ev string, ts int) {
				body := fmt.Sprintf(`{"ephemeral":[{"type":"m.receipt","room_id":"!r:hs","content":{%q:{"m.read":{"@u:hs":{"ts":%d}}}}},`+
					`{"type":"m.receipt","room_id":"!r:hs","content":{%q:{"m.read":{"@u:hs":{"ts":%d}}}}}]}`, ev, ts, ev+"x", ts-1)
				if rec := p.put(t, txn, []byte(body)); rec.Code != http.StatusOK {
					t.Fatalf("%s: %d %s", txn, rec.Code, rec.Body)
				}
			}
			put("t1", "$second", 20)
			put("t2", "$first", 10) // late and older
			ev, ts, ok, err := ReadReceipt(context.Background(), p.db, "!r:hs", "@u:hs")
			if err != nil || !ok || ev != "$second" || ts != 20 {
				t.Fatalf("receipt %q at %d (%v, %v), want $second at 20", ev, ts, ok, err)
			}
			put("t3", "$third", 30)
			if ev, _, _, _ := ReadReceipt(context.Background(), p.db, "!r:hs", "@u:hs"); ev != "$third" {
				t.Fatalf("receipt %q, want $third", ev)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM read_receipt`); n != 1 {
				t.Fatalf("%d receipt rows, want 1", n)
			}
			if n := p.count(t, `SELECT COUNT(*) FROM inbox`); n != 0 {
				t.Fatalf("receipts stored as events: %d", n)
			}
		})
	}
}
