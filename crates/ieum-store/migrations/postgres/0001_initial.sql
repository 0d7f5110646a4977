-- Resources (Service, and later Route, policies, …): the current version of each.
CREATE TABLE resources (
    kind       TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    revision   BIGINT NOT NULL,
    labels     TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    author     TEXT   NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Every version of every resource; spec is NULL for a deletion.
CREATE TABLE revisions (
    kind     TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    revision BIGINT NOT NULL,
    labels   TEXT   NOT NULL,
    spec     TEXT,
    author   TEXT   NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (kind, name, revision)
);

-- Registered instances as of their last change of state (heartbeats are not stored).
CREATE TABLE instances (
    service    TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (service, id)
);

-- The event log: one row per change of state, in order.
CREATE TABLE events (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    kind     TEXT   NOT NULL,
    service  TEXT,
    instance TEXT,
    message  TEXT   NOT NULL,
    author   TEXT   NOT NULL,
    data     TEXT
);
CREATE INDEX events_by_service ON events (service, id);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_time ON events (at);
