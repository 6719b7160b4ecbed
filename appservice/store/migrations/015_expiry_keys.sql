-- Expiry rows are keyed by (received_at, event_id) instead of event_id, for
-- the reason the inbox's key is (migration 14): rows are written in the
-- order messages arrive, so the unique index grows at its end instead of
-- taking a transaction's hundred inserts on a hundred random pages; with a
-- retention policy on every room, those scattered writes cut ingest to a
-- third. received_at is the inbox's own receipt time, the same whenever the
-- dispatcher re-decides an event, so the pair dedupes as the ID did. The
-- (sender, state) index goes: the one query by sender (releasing a user's
-- legal hold) asks for held rows, which the (state, due_at) index finds.
-- only sqlite
CREATE TABLE expiry_next (
    event_id    TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    due_at      BIGINT NOT NULL,
    state       TEXT NOT NULL
);
INSERT INTO expiry_next (event_id, room_id, sender, received_at, due_at, state)
    SELECT event_id, room_id, sender, received_at, due_at, state FROM expiry ORDER BY received_at, event_id;
DROP TABLE expiry;
ALTER TABLE expiry_next RENAME TO expiry;
CREATE INDEX expiry_due ON expiry (state, due_at);
CREATE INDEX expiry_room ON expiry (room_id, state);
-- only postgres
ALTER TABLE expiry DROP CONSTRAINT expiry_pkey;
DROP INDEX expiry_sender;
-- only end
CREATE UNIQUE INDEX expiry_event ON expiry (received_at, event_id);
