package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
// the keys), so it is not written at all: most events cost only metadata.
func (e *Event) storedContent() []byte {
	if e.Type == "m.room.encrypted" {
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
}

func NewInbox(db *store.DB, chain *audit.Chain, m *Metrics, bot string) *Inbox {
	return &Inbox{db: db, chain: chain, metrics: m, notify: make(chan struct{}, 1), bot: bot}
}

// Notify fires after each commit that stored new events.
func (in *Inbox) Notify() <-chan struct{} { return in.notify }

// Store writes a transaction. It returns how many events were new; events
// already stored (a re-sent transaction, perhaps with more events appended)
// are skipped, so each event is stored and audited once.
func (in *Inbox) Store(ctx context.Context, txnID string, events []*Event) (int, error) {
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
	err := in.db.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		if err := insertEvents(ctx, in.db, tx, txnID, uniq, now.UnixMilli(), inserted); err != nil {
			return err
		}
		recs = make([]*audit.Record, 0, len(inserted))
		keys := in.chain.Keys()
		for _, e := range uniq {
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
		if err := in.chain.Append(ctx, tx, recs...); err != nil {
			in.metrics.AuditFailures.Inc()
			return err
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
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
	if len(recs) > 0 {
		select {
		case in.notify <- struct{}{}:
		default:
		}
	}
	return len(recs), nil
}

// insertEvents stores events, skipping those already stored, and notes in
// inserted which ones were new.
func insertEvents(ctx context.Context, db *store.DB, tx *sql.Tx, txnID string, events []*Event, nowMs int64, inserted map[string]struct{}) error {
	if db.Dialect == store.Postgres {
		return insertEventsPG(ctx, tx, txnID, events, nowMs, inserted)
	}
	args := make([]any, 0, 8*min(len(events), inboxChunk))
	for start := 0; start < len(events); start += inboxChunk {
		chunk := events[start:min(start+inboxChunk, len(events))]
		args = args[:0]
		for _, e := range chunk {
			args = append(args, e.ID, e.OriginTS, txnID, e.RoomID, e.Type, e.Sender, nowMs, e.storedContent())
		}
		rows, err := db.Query(ctx, tx, inboxInsert(len(chunk)), args...)
		if err != nil {
			return fmt.Errorf("store events: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			inserted[id] = struct{}{}
		}
		if err := rows.Close(); err != nil {
			return err
		}
	}
	return nil
}

// insertEventsPG sends the events as one array per column: one statement of
// eight parameters however many events, which PostgreSQL binds and runs
// faster than a VALUES list of hundreds.
func insertEventsPG(ctx context.Context, tx *sql.Tx, txnID string, events []*Event, nowMs int64, inserted map[string]struct{}) error {
	ids, rooms, types, senders := make([]string, len(events)), make([]string, len(events)), make([]string, len(events)), make([]string, len(events))
	ots, contents := make([]int64, len(events)), make([][]byte, len(events))
	for i, e := range events {
		ids[i], ots[i], rooms[i], types[i], senders[i], contents[i] = e.ID, e.OriginTS, e.RoomID, e.Type, e.Sender, e.storedContent()
	}
	rows, err := tx.QueryContext(ctx, `INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content)
		SELECT e, o, $7, r, t, s, $8, c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bytea[]) WITH ORDINALITY AS u(e, o, r, t, s, c, n)
		ORDER BY n ON CONFLICT (origin_ts, event_id) DO NOTHING RETURNING event_id`, ids, ots, rooms, types, senders, contents, txnID, nowMs)
	if err != nil {
		return fmt.Errorf("store events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		inserted[id] = struct{}{}
	}
	return rows.Err()
}

const inboxChunk = 100

func inboxInsert(n int) string {
	return store.ValuesQuery("INSERT INTO inbox (event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content) VALUES ", 8, n,
		" ON CONFLICT (origin_ts, event_id) DO NOTHING RETURNING event_id")
}

// Clock is the time source; tests inject a fake one.
type Clock func() time.Time
