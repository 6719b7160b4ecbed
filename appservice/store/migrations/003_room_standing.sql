-- Rooms where policy could not be enforced: one row per room and action that
-- failed for good (missing power, the bot refused entry…), cleared when the
-- same action later succeeds. `matrix-hipaa rooms` lists them; a metric counts them.
CREATE TABLE room_problem (
    room_id    TEXT NOT NULL,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    since      BIGINT NOT NULL,
    PRIMARY KEY (room_id, action)
);

-- The E2EE bot's standing in rooms it joined: its power level and the level
-- the room's settings events (encryption, join rules, guest access) need.
CREATE TABLE room_bot (
    room_id    TEXT PRIMARY KEY,
    power      INTEGER NOT NULL,
    needed     INTEGER NOT NULL,
    encrypted  BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);
