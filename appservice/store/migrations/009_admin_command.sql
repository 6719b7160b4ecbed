-- Commands taken from the management room, one row per message: a command
-- job that runs again (after a crash, or to retry its reply) finds its row
-- and does not act twice. reply is what the bot answered to a command that
-- changed something, sent again if the first send failed.
CREATE TABLE admin_command (
    event_id TEXT PRIMARY KEY,
    command  TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    ref_id   BIGINT NOT NULL DEFAULT 0,
    reply    TEXT NOT NULL DEFAULT '',
    at       BIGINT NOT NULL
);
