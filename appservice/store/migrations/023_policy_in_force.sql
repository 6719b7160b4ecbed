-- The policy in force, as the running service last adopted it: its hash, its
-- text (policy is configuration, never PHI) and since when. `status` and
-- `rooms` report on it when the file on disk has been edited into one the
-- service refuses.
CREATE TABLE policy_in_force (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    hash  TEXT NOT NULL,
    body  BYTES NOT NULL,
    since BIGINT NOT NULL
);
