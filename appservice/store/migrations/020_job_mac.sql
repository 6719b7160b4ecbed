-- Each job carries a MAC over its kind, dedupe key, payload and dry-run flag,
-- keyed by a key derived for that purpose from the audit master key (which is
-- not in the database). The runner refuses a job whose MAC does not match: a
-- database writer cannot queue a redaction as anyone, a public join rule or a
-- notice in the bot's name. Jobs queued before this version are signed once,
-- by the first process that opens the database with the key afterwards
-- (job_mac_legacy.done); after that an unsigned job is refused too.
ALTER TABLE job ADD COLUMN mac TEXT NOT NULL DEFAULT '';
CREATE TABLE job_mac_legacy (done INTEGER NOT NULL);
INSERT INTO job_mac_legacy (done) VALUES (0);
