-- How many of the user's messages a wipe left because a legal hold binds
-- them (on their room, or on the user).
ALTER TABLE wipe ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
