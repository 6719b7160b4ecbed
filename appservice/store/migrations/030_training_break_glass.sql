-- The rules each local user was sent (in their direct-message room with
-- the bot) and when they acknowledged them (0: not yet).
CREATE TABLE training (
    user_id  TEXT PRIMARY KEY,
    sent_at  BIGINT NOT NULL,
    acked_at BIGINT NOT NULL DEFAULT 0
);

-- Emergency access ("break the glass") to rooms limited to verified
-- clinicians: who, where, why (the reason is told to the privacy officer
-- and kept here, never in the audit trail), until when, and how many
-- messages they sent meanwhile (counted, never read).
CREATE TABLE break_glass (
    id          IDENTITY_PK,
    request_id  TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ends_at     BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL DEFAULT 0,
    messages    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX break_glass_open ON break_glass (ended_at, room_id, user_id);
