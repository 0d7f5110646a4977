-- Saga executions: one row per execution, its state as of the last log record, and the
-- lease of the coordinator that runs it (one at a time, across server replicas).
CREATE TABLE saga_executions (
    id              TEXT   NOT NULL PRIMARY KEY,
    saga            TEXT   NOT NULL,
    revision        BIGINT NOT NULL,
    idempotency_key TEXT,
    state           TEXT   NOT NULL,
    input           TEXT   NOT NULL,
    spec            TEXT   NOT NULL,
    trace_id        TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    author          TEXT   NOT NULL,
    owner           TEXT,
    lease_until     BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX saga_executions_by_key ON saga_executions (saga, idempotency_key);
CREATE INDEX saga_executions_by_state ON saga_executions (state, saga);
CREATE INDEX saga_executions_by_saga ON saga_executions (saga, created_at);

-- The saga log: every transition of every execution, appended before it is acted on.
CREATE TABLE saga_log (
    id        BIGSERIAL PRIMARY KEY,
    execution TEXT   NOT NULL,
    at        BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    step      BIGINT,
    data      TEXT   NOT NULL
);
CREATE INDEX saga_log_by_execution ON saga_log (execution, id);
