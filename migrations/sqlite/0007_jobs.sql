-- Durable jobs, cluster-wide leases and event outbox cursors (src/storage/jobs.rs). Times are
-- ms since the epoch.

-- A job is queued (until run_at, then until a worker claims it), running (leased to
-- lease_owner until lease_until; claimable again once that passed), done or dead (failed for
-- good). attempts counts claims. At most one job holds a unique_key; a done or dead job gives
-- it up (set NULL) when a new job with the same key is enqueued.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    unique_key    TEXT    UNIQUE,
    payload       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    max_attempts  BIGINT  NOT NULL,
    run_at        BIGINT  NOT NULL,
    lease_owner   TEXT,
    lease_until   BIGINT,
    last_error    TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);
CREATE INDEX jobs_ready ON jobs(queue, state, run_at);
CREATE INDEX jobs_finished ON jobs(state, updated_at);

-- Work that runs on one replica at a time (garbage collection, sweeps): held by owner until
-- expires_at, renewed while it runs.
CREATE TABLE leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL
);

-- How far each consumer of the events outbox got: every event up to position was handled.
CREATE TABLE outbox_cursors (
    consumer    TEXT    NOT NULL PRIMARY KEY,
    position    BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- The catalog indexer kept its position in a setting before.
INSERT INTO outbox_cursors (consumer, position, updated_at)
    SELECT 'catalog-indexer', CAST(value AS INTEGER), 0 FROM settings WHERE name = 'catalog.indexed_event';
DELETE FROM settings WHERE name = 'catalog.indexed_event';
