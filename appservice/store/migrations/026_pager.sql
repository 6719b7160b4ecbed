-- The pager bridge's outbox: one row per page, keyed by the message ID the
-- gateway knows it by (at most 32 characters, as WCTP allows). No content:
-- which event in which room paged whom through which gateway, and how far
-- the page got. ref is the opaque reference the page text carries.
CREATE TABLE page (
    id           TEXT PRIMARY KEY,
    ref          TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    target       TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    gateway      TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    priority     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL,
    tag          TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    sent_at      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    unknown_sends INTEGER NOT NULL,
    watch_user   TEXT NOT NULL,
    sender       TEXT NOT NULL
);
CREATE INDEX page_event ON page (event_id);
CREATE INDEX page_ref ON page (ref);
-- Statuses and replies a gateway pushed or a poll returned, once each:
-- gateways re-send until confirmed. key is a digest of the message, never
-- its text.
CREATE TABLE page_inbound (
    gateway     TEXT NOT NULL,
    key         TEXT NOT NULL,
    page_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, key)
);
-- Messages to a person that must be read (a direct message, or any in a
-- room with acknowledge: on, where read_tracking is on): one row per
-- message and person, until they read it, accept a page for it, or it has
-- gone to the backup. No content.
CREATE TABLE page_watch (
    event_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    priority    TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    step        INTEGER NOT NULL,
    next_at     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX page_watch_due ON page_watch (state, next_at);
