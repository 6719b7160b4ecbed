package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Event is the part of a pushed event the pipeline needs to route it; the raw
// JSON is kept beside it for the policy rules.
type Event struct {
	ID     string `json:"event_id"`
	RoomID string `json:"room_id"`
	Type   string `json:"type"`
	Sender string `json:"sender"`
	// OriginTS is origin_server_ts, part of the inbox's dedupe key.
	OriginTS int64   `json:"origin_server_ts"`
	StateKey *string `json:"state_key"`
	Content  struct {
		Membership string `json:"membership"`
	} `json:"content"`
	Raw json.RawMessage `json:"-"`
	// ReceivedAt is when the service stored it (unix ms), set by the dispatcher.
	ReceivedAt int64 `json:"-"`
}

// class is a coarse, closed label for metrics and logs.
func (e *Event) class() string {
	switch {
	case e.Type == "m.room.member":
		return "member"
	case e.Type == "m.room.encrypted":
		return "encrypted"
	case e.Type == "m.room.redaction":
		return "redaction"
	case e.StateKey != nil:
		return "state"
	case e.Type == "m.room.message" || e.Type == "m.sticker":
		return "message"
	}
	return "other"
}

// storedContent is what the inbox keeps of an event for policy to read. An
// encrypted event's ciphertext is useless to policy (and to anyone without
// the keys), so it is not written at all: most events cost only metadata;
// only where a feature keeps ciphertext (the archive, which decrypts it
// later even if the event is redacted meanwhile) is it kept, until the
// event is decided on.
func (e *Event) storedContent(ciphertext func(room string) bool) []byte {
	if e.Type == "m.room.encrypted" && (ciphertext == nil || !ciphertext(e.RoomID)) {
		return nil
	}
	return e.Raw
}

var memberships = map[string]bool{"join": true, "leave": true, "invite": true, "ban": true, "knock": true}

// auditDetail says what kind of state change an event is, from a closed set.
func (e *Event) auditDetail() string {
	if e.Type == "m.room.member" {
		// Someone else's leave is a kick (or a withdrawn invite); one's own
		// is leaving. The distinction matters to an investigator.
		if e.Content.Membership == "leave" && e.StateKey != nil && *e.StateKey != e.Sender {
			return "kick"
		}
		if memberships[e.Content.Membership] {
			return e.Content.Membership
		}
		return "other"
	}
	if e.StateKey != nil {
		return "state"
	}
	return ""
}

// Inbox durably stores pushed transactions: each new event and its
// event.received audit record are committed in one database transaction
// before the homeserver gets its 200.
type Inbox struct {
	db      *store.DB
	chain   *audit.Chain
	metrics *Metrics
	// mu orders commits so inbox seq order is commit order: the dispatcher
	// walks seq and must never pass a row that commits later.
	mu     sync.Mutex
	notify chan struct{}
	// bot is the service's own user; its keep-alive posts are dropped.
	bot string
	// lastSeen is when a transaction last brought events (unix ms).
	lastSeen atomic.Int64
	// keepReceipt, when set, says which rooms' read receipts are kept
	// (read tracking is a policy choice per room); the rest are dropped.
	keepReceipt func(room string) bool
	// keepCiphertext, when set, says in which rooms encrypted events' JSON
	// is kept until the dispatcher has decided on them.
	keepCiphertext func(room string) bool
}

func NewInbox(db *store.DB, chain *audit.Chain, m *Metrics, bot string) *Inbox {
	return &Inbox{db: db, chain: chain, metrics: m, notify: make(chan struct{}, 1), bot: bot}
}

// StoreReceipts keeps the receipts of rooms whose reads are tracked (all,
// when no feature says which), each user's newest per room, type and
// thread; the others are counted as untracked and dropped.
func (in *Inbox) StoreReceipts(ctx context.Context, rs []Receipt, now time.Time) error {
	if in.keepReceipt != nil {
		kept := rs[:0:0]
		for _, r := range rs {
			if in.keepReceipt(r.RoomID) {
				kept = append(kept, r)
			}
		}
		in.metrics.Events.WithLabelValues("receipt", "untracked").Add(float64(len(rs) - len(kept)))
		rs = kept
	}
	if err := storeReceipts(ctx, in.db, rs, now); err != nil {
		return err
	}
	in.metrics.Events.WithLabelValues("receipt", "stored").Add(float64(len(rs)))
	return nil
}

// Notify fires after each commit that stored new events.
func (in *Inbox) Notify() <-chan struct{} { return in.notify }

// Store writes a transaction. It returns how many events were new; events
// already stored (a re-sent transaction, perhaps with more events appended)
// are skipped, so each event is stored and audited once.
func (in *Inbox) Store(ctx context.Context, txnID string, events []*Event) (int, error) {
	return in.StoreTransaction(ctx, txnID, Transaction{Events: events})
}

// StoreTransaction is Store for a parsed transaction: its refused events are
// audited (event.received, failure) in the same commit as the others.
func (in *Inbox) StoreTransaction(ctx context.Context, txnID string, txn Transaction) (int, error) {
	events := txn.Events
	if len(events) > 0 {
		in.lastSeen.Store(time.Now().UnixMilli())
	}
	// Drop repeats inside the transaction itself, and the bot's keep-alive
	// posts, before touching the database.
	seen := make(map[string]struct{}, len(events))
	uniq := events[:0:0]
	for _, e := range events {
		if e.Type == KeepAliveType && e.Sender == in.bot {
			seen[e.ID] = struct{}{}
			in.metrics.Events.WithLabelValues("keepalive", "dropped").Inc()
			continue
		}
		if _, dup := seen[e.ID]; !dup {
			seen[e.ID] = struct{}{}
			uniq = append(uniq, e)
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.chain.Now()
	inserted := make(map[string]struct{}, len(uniq))
	var recs []*audit.Record
	var err error
	refused := in.refusedRecords(txn.Rejected, now)
	if in.db.Dialect == store.Postgres && len(uniq) > 0 {
		recs, err = in.storePG(ctx, txnID, uniq, refused, now, inserted)
	} else {
		err = in.db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
			if err := insertEvents(ctx, in.db, tx, txnID, uniq, now.UnixMilli(), in.keepCiphertext, inserted); err != nil {
				return err
			}
			recs = append(in.records(uniq, inserted, now), refused...)
			if err := in.chain.Append(ctx, tx, recs...); err != nil {
				in.metrics.AuditFailures.Inc()
				return err
			}
			return nil
		})
	}
	if err != nil {
		return 0, err
	}
	// Receipts commit before the acknowledgement too, in a transaction of
	// their own: most transactions have none, and the events' path stays
	// as it is. Were this to fail, the homeserver re-sends the whole
	// transaction: the events dedupe, the receipts upsert.
	if err := in.StoreReceipts(ctx, txn.Receipts, now); err != nil {
		return 0, fmt.Errorf("store receipts: %w", err)
	}
	in.metrics.Events.WithLabelValues("receipt", "dropped").Add(float64(txn.ReceiptsDropped))
	in.metrics.AuditRecords.Add(float64(len(recs)))
	for _, e := range events {
		if e.Type == KeepAliveType && e.Sender == in.bot {
			continue
		}
		delivery := "duplicate"
		if _, ok := inserted[e.ID]; ok {
			delivery = "new"
			delete(inserted, e.ID)
		}
		in.metrics.Events.WithLabelValues(e.class(), delivery).Inc()
	}
	for range txn.Rejected {
		in.metrics.Events.WithLabelValues("malformed", "refused").Inc()
	}
	if len(recs) > len(refused) {
		select {
		case in.notify <- struct{}{}:
		default:
		}
	}
	return len(recs) - len(refused), nil
}

// refusedRecords audit the events of a transaction that were refused one
// by one: what could be read of each, and why, from a closed set.
func (in *Inbox) refusedRecords(rejected []Rejected, now time.Time) []*audit.Record {
	keys := in.chain.Keys()
	recs := make([]*audit.Record, 0, len(rejected))
	for _, r := range rejected {
		rec := &audit.Record{Time: now, Type: audit.TypeEventReceived, Outcome: audit.OutcomeFailure,
			EventID: r.EventID, EventType: r.Type, Detail: "malformed:" + r.Reason}
		if r.Sender != "" {
			rec.Actor = keys.User(r.Sender)
		}
		if r.RoomID != "" {
			rec.Room = keys.Room(r.RoomID)
		}
		recs = append(recs, rec)
	}
	return recs
}

// records are the event.received records of the events that were new.
func (in *Inbox) records(events []*Event, inserted map[string]struct{}, now time.Time) []*audit.Record {
	recs := make([]*audit.Record, 0, len(inserted))
	keys := in.chain.Keys()
	for _, e := range events {
		if _, ok := inserted[e.ID]; !ok {
			continue
		}
		recs = append(recs, &audit.Record{
			Time:      now,
			Type:      audit.TypeEventReceived,
			Outcome:   audit.OutcomeSuccess,
			Actor:     keys.User(e.Sender),
			Room:      keys.Room(e.RoomID),
			EventID:   e.ID,
			EventType: e.Type,
			Detail:    e.auditDetail(),
		})
	}
	return recs
}

// storePG is the same transaction on PostgreSQL in two round trips instead
// of five: with one transaction in flight the service waits on each, and
// the waits, not the work, set the pace. The first batch begins, locks the
// chain head and stores the events; the second appends their records and
// commits. Anything that fails rolls back (or, failing that, the connection
// is dropped), so nothing is acknowledged that is not committed.
func (in *Inbox) storePG(ctx context.Context, txnID string, events []*Event, refused []*audit.Record, now time.Time, inserted map[string]struct{}) ([]*audit.Record, error) {
	var recs []*audit.Record
	err := in.db.Pipelined(ctx, func(c *pgx.Conn) error {
		q, args := inboxInsertPG(txnID, events, now.UnixMilli(), in.keepCiphertext)
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue(audit.EmptyHeadQuery)
		b.Queue(audit.HeadLockQuery)
		b.Queue(q, args...)
		br := c.SendBatch(ctx, b)
		defer br.Close()
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		var head audit.Head
		if err := br.QueryRow().Scan(&head.Seq, &head.TS, &head.MAC); err != nil {
			in.metrics.AuditFailures.Inc()
			return fmt.Errorf("read audit head: %w", err)
		}
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("store events: %w", err)
		}
		err = noteIDs(rows, inserted)
		rows.Close()
		if err := errors.Join(err, rows.Err()); err != nil {
			return fmt.Errorf("store events: %w", err)
		}
		if err := br.Close(); err != nil {
			return err
		}
		recs = append(in.records(events, inserted, now), refused...)
		b = &pgx.Batch{}
		if len(recs) > 0 {
			q, args := in.chain.SealPG(head, recs)
			b.Queue(q, args...)
		}
		b.Queue("COMMIT")
		br2 := c.SendBatch(ctx, b)
		defer br2.Close()
		for range b.Len() {
			if _, err := br2.Exec(); err != nil {
				if b.Len() > 1 {
					in.metrics.AuditFailures.Inc()
				}
				return err
			}
		}
		return br2.Close()
	})
	return recs, err
}

// insertEvents stores events on SQLite, skipping those already stored, and
// notes in inserted which ones were new.
func insertEvents(ctx context.Context, db *store.DB, tx *sql.Tx, txnID string, events []*Event, nowMs int64, ciphertext func(string) bool, inserted map[string]struct{}) error {
	args := make([]any, 0, 8*min(len(events), inboxChunk))
	for start := 0; start < len(events); start += inboxChunk {
		chunk := events[start:min(start+inboxChunk, len(events))]
		args = args[:0]
		for _, e := range chunk {
			args = append(args, e.ID, e.OriginTS, txnID, e.RoomID, e.Type, e.Sender, nowMs, e.storedContent(ciphertext))
		}
		rows, err := db.Query(ctx, tx, inboxInsert(len(chunk)), args...)
		if err != nil {
			return fmt.Errorf("store events: %w", err)
		}
		err = noteIDs(rows, inserted)
		if err := errors.Join(err, rows.Close()); err != nil {
			return err
		}
	}
	return nil
}

// noteIDs adds to inserted the event IDs an insert's RETURNING gave back.
func noteIDs(rows interface {
	Next() bool
	Scan(...any) error
}, inserted map[string]struct{}) error {
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		inserted[id] = struct{}{}
	}
	return nil
}

// inboxInsertPG sends the events as one array per column: one statement of
// eight parameters however many events, which PostgreSQL binds and runs
// faster than a VALUES list of hundreds. It returns the new events' IDs.
func inboxInsertPG(txnID string, events []*Event, nowMs int64, ciphertext func(string) bool) (string, []any) {
	ids, rooms, types, senders := make([]string, len(events)), make([]string, len(events)), make([]string, len(events)), make([]string, len(events))
	ots, contents := make([]int64, len(events)), make([][]byte, len(events))
	for i, e := range events {
		ids[i], ots[i], rooms[i], types[i], senders[i], contents[i] = e.ID, e.OriginTS, e.RoomID, e.Type, e.Sender, e.storedContent(ciphertext)
	}
	return `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content)
		SELECT e, o, $7, r, t, s, $8, c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bytea[]) WITH ORDINALITY AS u(e, o, r, t, s, c, n)
		ORDER BY n ON CONFLICT (origin_ts, event_id) DO NOTHING RETURNING event_id`, []any{ids, ots, rooms, types, senders, contents, txnID, nowMs}
}

const inboxChunk = 100

func inboxInsert(n int) string {
	return store.ValuesQuery("INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content) VALUES ", 8, n,
		" ON CONFLICT (origin_ts, event_id) DO NOTHING RETURNING event_id")
}

// Clock is the time source; tests inject a fake one.
type Clock func() time.Time
