-- The media of archived messages (their files and thumbnails, by mxc URI),
-- so that when a message is redacted or expires its files can be deleted
-- from the media repository too (Synapse), and the pseudonym of who sent
-- the message: a file is deleted if its sender uploaded it. Rows go once
-- the files are.
CREATE TABLE archive_media (
    event_id TEXT NOT NULL,
    mxc      TEXT NOT NULL,
    sender_p TEXT NOT NULL,
    PRIMARY KEY (event_id, mxc)
);
