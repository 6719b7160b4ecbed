package appservice

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// Status is the service's state as its database shows it, for an operator's
// glance: counts, positions and times only, nothing about what anyone wrote.
type Status struct {
	Schema         int
	DatabaseBytes  int64 // SQLite file and WAL; -1 on PostgreSQL
	EventsReceived int64 // every event ever stored (the inbox's last seq)
	LastReceived   int64 // unix ms; 0 if none
	Waiting        int64 // stored, not yet through policy
	JobsPending    int64
	JobsFailed     int64
	AuditHead      int64
	AuditHeadTime  int64 // unix ms
	CheckpointSeq  int64 // last record a signed checkpoint vouches for; 0 if none
	CheckpointTime int64 // unix ms, when it was written
	Exporters      []ExporterStatus
	HoldsStanding  int64
	// Rooms and RoomIssues are the rooms listing's (package enforce), which
	// the caller fills in.
	Rooms, RoomIssues int
}

// ExporterStatus is one audit exporter's position.
type ExporterStatus struct {
	Name          string
	Seq, Behind   int64
	LastDelivered int64 // unix ms
}

// ReadStatus gathers Status; dbFile is the SQLite file ("" on PostgreSQL).
func ReadStatus(ctx context.Context, db *store.DB, dbFile string) (Status, error) {
	var s Status
	one := func(q string, dest ...any) error {
		err := db.R.QueryRowContext(ctx, q).Scan(dest...)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	}
	var cursor int64
	for _, q := range []struct {
		sql  string
		dest []any
	}{
		{`SELECT COALESCE(MAX(version), 0) FROM schema_version`, []any{&s.Schema}},
		{`SELECT seq, received_at FROM inbox ORDER BY seq DESC LIMIT 1`, []any{&s.EventsReceived, &s.LastReceived}},
		{`SELECT seq FROM dispatch_cursor WHERE id = 1`, []any{&cursor}},
		{`SELECT COUNT(*) FROM job WHERE state = 'pending'`, []any{&s.JobsPending}},
		{`SELECT COUNT(*) FROM job WHERE state = 'failed'`, []any{&s.JobsFailed}},
		{`SELECT seq, ts FROM audit_head WHERE id = 1`, []any{&s.AuditHead, &s.AuditHeadTime}},
		{`SELECT seq, written_at FROM audit_checkpoint ORDER BY seq DESC LIMIT 1`, []any{&s.CheckpointSeq, &s.CheckpointTime}},
		{`SELECT COUNT(*) FROM legal_hold WHERE released_at = 0`, []any{&s.HoldsStanding}},
	} {
		if err := one(q.sql, q.dest...); err != nil {
			return s, fmt.Errorf("read status: %w", err)
		}
	}
	s.Waiting = max(s.EventsReceived-cursor, 0)
	rows, err := db.R.QueryContext(ctx, `SELECT name, seq, updated_at FROM audit_export_cursor ORDER BY name`)
	if err != nil {
		return s, err
	}
	defer rows.Close()
	for rows.Next() {
		var e ExporterStatus
		if err := rows.Scan(&e.Name, &e.Seq, &e.LastDelivered); err != nil {
			return s, err
		}
		e.Behind = max(s.AuditHead-e.Seq, 0)
		s.Exporters = append(s.Exporters, e)
	}
	if err := rows.Err(); err != nil {
		return s, err
	}
	s.DatabaseBytes = -1
	if dbFile != "" {
		s.DatabaseBytes = 0
		for _, p := range []string{dbFile, dbFile + "-wal"} {
			if st, err := os.Stat(p); err == nil {
				s.DatabaseBytes += st.Size()
			}
		}
	}
	return s, nil
}
