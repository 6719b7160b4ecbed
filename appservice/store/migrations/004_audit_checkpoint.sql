-- Signed checkpoints of the audit chain head (see appservice/audit/checkpoint.go).
-- seq/ts/mac are the record vouched for; record_seq is the audit.checkpoint
-- record that carries the same statement in the chain itself.
CREATE TABLE audit_checkpoint (
    seq        BIGINT PRIMARY KEY,
    ts         BIGINT NOT NULL,
    mac        BYTES NOT NULL,
    signature  BYTES NOT NULL,
    key_id     TEXT NOT NULL,
    record_seq BIGINT NOT NULL,
    written_at BIGINT NOT NULL
);
