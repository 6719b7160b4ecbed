-- Each user's newest read receipt per room, receipt type and thread, from
-- the ephemeral events the homeserver pushes (MSC2409). No content: who read
-- a room up to which event, and when. Escalation of unread pages reads it.
CREATE TABLE read_receipt (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
