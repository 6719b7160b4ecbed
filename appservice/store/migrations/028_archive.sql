-- The archive of rooms with archive: on (appservice/archive). What it
-- indexes is only event IDs, pseudonyms and times; everything a person
-- wrote, and who and where in the clear, is in sealed (XChaCha20-Poly1305
-- under the archive key key_id names, bound to the row's kind and event).
-- kind: message (a message, an edit, a sticker), redaction, member.
-- keep_until: when archive_retention lets it go (0: kept while the
-- archive is); a legal hold keeps it past that.
CREATE TABLE archive_item (
    event_id    TEXT PRIMARY KEY,
    room_p      TEXT NOT NULL,
    sender_p    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    sent_at     BIGINT NOT NULL,
    archived_at BIGINT NOT NULL,
    keep_until  BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    sealed      BYTES NOT NULL
);
CREATE INDEX archive_item_room ON archive_item (room_p, sent_at);
CREATE INDEX archive_item_sender ON archive_item (sender_p, sent_at);
CREATE INDEX archive_item_keep ON archive_item (keep_until);

-- Attachments of archived messages, decrypted and sealed again under the
-- archive key; n is the file's place in its message (0 the file, 1 its
-- thumbnail). Its name, type and hash are in the message's sealed record.
CREATE TABLE archive_file (
    event_id TEXT NOT NULL,
    n        INTEGER NOT NULL,
    key_id   TEXT NOT NULL,
    sealed   BYTES NOT NULL,
    PRIMARY KEY (event_id, n)
);

-- Messages of archived rooms the archive could not read, never silently
-- missing: reason is withheld:<code> (the sender's client refused the
-- archiver the key), no-keys (it never came), gone (redacted or expired
-- before it could be read), or unreadable.
CREATE TABLE archive_missing (
    event_id    TEXT PRIMARY KEY,
    room_p      TEXT NOT NULL,
    sender_p    TEXT NOT NULL,
    sent_at     BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX archive_missing_room ON archive_missing (room_p);

-- Rooms under archive (by pseudonym), and since when their members were told.
CREATE TABLE archive_room (
    room_p    TEXT PRIMARY KEY,
    since     BIGINT NOT NULL
);

-- Encrypted messages of archived rooms waiting for the archiver to decrypt
-- them: the archive's durable queue, written with the dispatcher's progress.
-- Like the inbox, it holds a message's room and sender in the clear, until
-- the message is read (seconds, or KeepWait when its key is late).
-- event is the event as the homeserver pushed it (ciphertext; empty if the
-- inbox did not keep it), so that a message redacted or expired before its
-- key reaches the archiver is still read. A row goes in the transaction that
-- keeps the message or lists it missing; next_at is when it is tried again
-- while its key has not come.
CREATE TABLE archive_pending (
    event_id   TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    sent_at    BIGINT NOT NULL,
    keep_until BIGINT NOT NULL,
    event      BYTES NOT NULL,
    queued_at  BIGINT NOT NULL,
    next_at    BIGINT NOT NULL
);
CREATE INDEX archive_pending_next ON archive_pending (next_at);
