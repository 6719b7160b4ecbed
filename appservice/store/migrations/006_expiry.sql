-- Message lifetimes: one row per message event in a room with a retention
-- policy, due at (received + lifetime). state: pending (waiting for its
-- time), held (due, but under a legal hold), queued (its redaction job is in
-- the job table), cancelled. The expiry pump walks (state, due_at) in pages.
CREATE TABLE expiry (
    event_id    TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    due_at      BIGINT NOT NULL,
    state       TEXT NOT NULL
);
CREATE INDEX expiry_due ON expiry (state, due_at);
CREATE INDEX expiry_room ON expiry (room_id, state);
CREATE INDEX expiry_sender ON expiry (sender, state);

-- Legal holds: while a hold stands on a room or a user, their messages are
-- not expired. released_at is 0 while it stands. reason is admin-written.
CREATE TABLE legal_hold (
    id          IDENTITY_PK,
    room_id     TEXT NOT NULL DEFAULT '',
    user_id     TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,
    placed_by   TEXT NOT NULL,
    placed_at   BIGINT NOT NULL,
    released_by TEXT NOT NULL DEFAULT '',
    released_at BIGINT NOT NULL DEFAULT 0
);
