-- Sessions of verified clinicians found not cross-signed by their user:
-- when first seen so, when the user was warned, when it was signed out.
CREATE TABLE device_trust (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    first_seen    BIGINT NOT NULL,
    warned_at     BIGINT NOT NULL DEFAULT 0,
    signed_out_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
);

-- The bot's direct-message room with each person it has had to tell
-- something privately.
CREATE TABLE bot_dm (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
