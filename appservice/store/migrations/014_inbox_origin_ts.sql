-- The inbox dedupes on (origin_ts, event_id) instead of event_id alone.
-- An event ID is a hash of the event (room versions 3 and later), and the
-- hashed fields include origin_server_ts, so a re-sent event always carries
-- the same origin_ts and the pair identifies it exactly as its ID does. What
-- changes is where inserts land: event IDs are random, so a unique index on
-- them alone puts a transaction's 100 events on ~100 different index pages,
-- each written to the WAL; ordered by origin_ts first, a transaction's
-- events land on the index's last page or two, and ingest no longer slows as
-- the inbox grows. Rows stored before this migration keep origin_ts 0.
-- only sqlite
CREATE TABLE inbox_next (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL,
    origin_ts   BIGINT NOT NULL,
    txn_id      TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    sender      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    content     BLOB
);
INSERT INTO inbox_next (seq, event_id, origin_ts, txn_id, room_id, event_type, sender, received_at, content)
    SELECT seq, event_id, 0, txn_id, room_id, event_type, sender, received_at, content FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_next RENAME TO inbox;
-- only postgres
ALTER TABLE inbox DROP CONSTRAINT inbox_event_id_key;
ALTER TABLE inbox ADD COLUMN origin_ts BIGINT NOT NULL DEFAULT 0;
-- only end
CREATE UNIQUE INDEX inbox_event ON inbox (origin_ts, event_id);
