-- Control-plane API tokens: who may call the API, with which role. Only the SHA-256 of a
-- token's secret is stored (hex), never the secret. A revoked token keeps its row (and its
-- name) so the record of who held it stays.
CREATE TABLE tokens (
    name       TEXT   NOT NULL PRIMARY KEY,
    role       TEXT   NOT NULL,
    service    TEXT,
    hash       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT   NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT
);
