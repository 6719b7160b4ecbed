-- Which event set the room's own m.room.retention, so that its redaction
-- undoes it: a redacted state event has no effect on the room.
ALTER TABLE room_state ADD COLUMN retention_event TEXT NOT NULL DEFAULT '';
