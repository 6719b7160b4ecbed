-- What the service knows of each room's current state, kept up to date by the
-- dispatcher from the state events it sees, for policy to match and decide on.
-- Aliases may name a ward or a patient: they never leave this table.
CREATE TABLE room_state (
    room_id      TEXT PRIMARY KEY,
    creator      TEXT NOT NULL DEFAULT '',
    encrypted    BOOLEAN NOT NULL DEFAULT FALSE,
    join_rule    TEXT NOT NULL DEFAULT '',
    guest_access TEXT NOT NULL DEFAULT '',
    aliases      TEXT NOT NULL DEFAULT '',
    spaces       TEXT NOT NULL DEFAULT '',
    updated_at   BIGINT NOT NULL
);
