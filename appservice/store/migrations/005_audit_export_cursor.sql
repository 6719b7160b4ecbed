-- Each audit exporter's position in the chain: the last seq it delivered.
CREATE TABLE audit_export_cursor (
    name       TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
