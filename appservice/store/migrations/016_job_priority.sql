-- Jobs run by priority, then by due time: a wipe, an admin command or an
-- enforcement action never waits behind a flood of routine notices,
-- expiries or sweeps. 2 urgent, 1 normal, 0 routine; rows queued before
-- this version are normal.
ALTER TABLE job ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
DROP INDEX job_due;
CREATE INDEX job_due ON job (state, priority, due_at);
