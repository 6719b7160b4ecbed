-- The verified clinician roster: from the roster file (source file), admin
-- commands (admin) or a FHIR import (fhir). A revoked entry stays, with who
-- revoked it and when, so membership decisions can say so; reasons stay
-- here, never in the audit trail.
CREATE TABLE clinician (
    user_id         TEXT PRIMARY KEY,
    npi             TEXT NOT NULL,
    role            TEXT NOT NULL,
    department      TEXT NOT NULL DEFAULT '',
    licence_expires TEXT NOT NULL DEFAULT '',
    verified_by     TEXT NOT NULL,
    verified_at     BIGINT NOT NULL,
    source          TEXT NOT NULL,
    revoked_at      BIGINT NOT NULL DEFAULT 0,
    revoked_by      TEXT NOT NULL DEFAULT '',
    revoke_reason   TEXT NOT NULL DEFAULT '',
    updated_at      BIGINT NOT NULL
);
