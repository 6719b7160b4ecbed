-- How far the metadata pruner has walked the inbox (see appservice/prune.go):
-- rows at or below it that it kept (messages a wipe may still redact) are
-- left for good, or for the expiry pass once their message has expired.
CREATE TABLE prune_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO prune_cursor (id, seq) VALUES (1, 0);
