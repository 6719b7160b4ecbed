package appservice

import (
	"context"
	"fmt"
	"testing"
)

func TestReadStatus(t *testing.T) {
	for _, dbType := range []string{"sqlite3", "postgres"} {
		t.Run(dbType, func(t *testing.T) {
			p := newPipeline(t, dbType)
			ctx := context.Background()
			evs := make([]*Event, 10)
			for j := range evs {
				evs[j] = &Event{ID: fmt.Sprintf("$s%d", j), OriginTS: 5, RoomID: "!r:hs", Type: "m.room.encrypted", Sender: "@u:hs"}
			}
			if _, err := p.inbox.Store(ctx, "t1", evs); err != nil {
				t.Fatal(err)
			}
			if _, err := p.disp.DispatchBatch(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := p.inbox.Store(ctx, "t2", []*Event{{ID: "$late", OriginTS: 6, RoomID: "!r:hs", Type: "m.room.encrypted", Sender: "@u:hs"}}); err != nil {
				t.Fatal(err)
			}
			for i, state := range []string{"pending", "failed", "failed", "done"} {
				p.exec(t, `INSERT INTO job (kind, dedupe_key, payload, state, due_at, created_at, updated_at) VALUES ('redact', $1, $2, $3, 0, 0, 0)`, fmt.Sprint("k", i), []byte("{}"), state)
			}
			p.exec(t, `INSERT INTO audit_export_cursor (name, seq, updated_at) VALUES ('siem', 4, 1000)`)
			p.exec(t, `INSERT INTO legal_hold (room_id, reason, placed_by, placed_at) VALUES ('!r:hs', 'case', 'os:x', 1)`)
			p.exec(t, `INSERT INTO legal_hold (room_id, reason, placed_by, placed_at, released_by, released_at) VALUES ('!r:hs', 'old', 'os:x', 1, 'os:x', 2)`)
			st, err := ReadStatus(ctx, p.db, "")
			if err != nil {
				t.Fatal(err)
			}
			want := Status{Schema: st.Schema, DatabaseBytes: -1, EventsReceived: 11, LastReceived: p.clock.Now().UnixMilli(), Waiting: 1,
				JobsPending: 1, JobsFailed: 2, AuditHead: 11, AuditHeadTime: p.clock.Now().UnixMilli(),
				// Rooms and RoomIssues are the rooms listing's (enforce.TestRoomCounts).
				Exporters: []ExporterStatus{{Name: "siem", Seq: 4, Behind: 7, LastDelivered: 1000}}, HoldsStanding: 1}
			if st.Schema < 15 || fmt.Sprintf("%+v", st) != fmt.Sprintf("%+v", want) {
				t.Fatalf("status\n got %+v\nwant %+v", st, want)
			}
		})
	}
}
