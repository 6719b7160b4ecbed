-- The bot's own cross-signing keys (sealed under a key derived from its
-- pickle key), generated once and kept here so a restart or a new bot
-- device keeps the same identity; published_master is the master key the
-- homeserver was last seen to hold for the bot ('' until published).
CREATE TABLE bot_cross_signing (
    user_id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    master_key TEXT NOT NULL,
    published_master TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
-- Administrators' master keys as the bot first saw them. Changing commands
-- in the management room run only from a device cross-signed by the pinned
-- key; a changed key is refused until an operator unpins it.
CREATE TABLE admin_key_pin (
    user_id TEXT PRIMARY KEY,
    master_key TEXT NOT NULL,
    pinned_at BIGINT NOT NULL
);
