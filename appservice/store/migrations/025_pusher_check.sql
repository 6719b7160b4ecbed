-- The last check of local users' pushers (Synapse's admin API): one row per
-- user with any pusher, and how many of theirs are sent whole events rather
-- than event IDs only (a phone may show such a message's text). No content.
CREATE TABLE pusher_check (
    user_id      TEXT PRIMARY KEY,
    pushers      INTEGER NOT NULL,
    with_content INTEGER NOT NULL,
    checked_at   BIGINT NOT NULL
);
-- When the last check finished (a check may find no pushers at all).
CREATE TABLE pusher_check_run (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL,
    users      INTEGER NOT NULL
);
