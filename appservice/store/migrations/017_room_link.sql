-- Aliases and parent spaces of a room that the homeserver has confirmed:
-- the alias resolves to the room in the directory, or the space lists the
-- room in its m.space.child. A room's own state only claims them; policy
-- overrides that loosen anything match only what is here.
CREATE TABLE room_link (
    room_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, kind, value)
);
