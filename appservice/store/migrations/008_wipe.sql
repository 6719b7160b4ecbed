-- Remote wipes: one row per request, its progress through the steps
-- (requested → revoked → redacted → offboarded → done, or failed) and what
-- each step did. reason is admin-written and stays here, out of the audit trail.
CREATE TABLE wipe (
    id           IDENTITY_PK,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL DEFAULT '',
    offboard     BOOLEAN NOT NULL DEFAULT FALSE,
    scope        TEXT NOT NULL,
    since        BIGINT NOT NULL DEFAULT 0,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    state        TEXT NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0,
    confirmed_at BIGINT NOT NULL DEFAULT 0,
    redacted     INTEGER NOT NULL DEFAULT 0,
    rooms_left   INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    updated_at   BIGINT NOT NULL
);
