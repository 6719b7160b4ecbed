-- An offboarding wipe may also deactivate the account (Synapse's admin API).
ALTER TABLE wipe ADD COLUMN deactivate BOOLEAN NOT NULL DEFAULT FALSE;
