-- The homeserver's timestamp of each expiring message. Synapse purges
-- history by its own event timestamps, so the purge bound must be computed
-- from them, not from when this service received the messages. Rows from
-- before this version keep 0, which holds purges back (never forward) until
-- they are gone.
ALTER TABLE expiry ADD COLUMN origin_ts BIGINT NOT NULL DEFAULT 0;
