-- Every event received, once (event_id is the dedupe key), with the ID of
-- the transaction that first brought it. seq is the order of receipt; the
-- dispatcher walks it. content is the raw event JSON, cleared once the event
-- has been dispatched, so message bodies do not linger here.
CREATE TABLE inbox (
    seq         IDENTITY_PK,
    event_id    TEXT NOT NULL UNIQUE,
    txn_id      TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    sender      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    content     BYTES
);

-- How far the dispatcher has got through the inbox.
CREATE TABLE dispatch_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO dispatch_cursor (id, seq) VALUES (1, 0);

-- The tamper-evident audit chain. rec is canonical JSON with no PHI; mac is
-- HMAC-SHA256 over (seq, ts, previous mac, rec). ts never decreases along seq
-- (the chain clamps it), so time ranges are found by binary search on seq and
-- need no index of their own.
CREATE TABLE audit (
    seq INT64_PK,
    ts  BIGINT NOT NULL,
    rec BYTES NOT NULL,
    mac BYTES NOT NULL
);

-- The chain head, updated in the same transaction as every append; appenders
-- lock it, so the chain has one writer at a time across processes.
CREATE TABLE audit_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    ts  BIGINT NOT NULL,
    mac BYTES NOT NULL
);

-- Durable actions. dedupe_key makes enqueueing idempotent; state is pending,
-- done or failed (a job being run stays pending, so a crash re-runs it).
CREATE TABLE job (
    id          IDENTITY_PK,
    kind        TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL UNIQUE,
    payload     BYTES NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    last_error  TEXT NOT NULL DEFAULT '',
    dry_run     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX job_due ON job (state, due_at);
