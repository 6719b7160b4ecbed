-- A room's own message lifetime (MSC1763 m.room.retention max_lifetime, ms;
-- 0 when unset): policy lets it shorten the lifetime, never lengthen it.
ALTER TABLE room_state ADD COLUMN max_lifetime_ms BIGINT NOT NULL DEFAULT 0;
