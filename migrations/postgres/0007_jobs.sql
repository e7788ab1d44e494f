-- (PostgreSQL) Mirrors migrations/sqlite/0007_jobs.sql: durable jobs, cluster-wide leases and
-- event outbox cursors (src/storage/jobs.rs). Times are ms since the epoch.

CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    queue         TEXT COLLATE "C" NOT NULL,
    kind          TEXT COLLATE "C" NOT NULL,
    unique_key    TEXT COLLATE "C" UNIQUE,
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

CREATE TABLE leases (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE TABLE outbox_cursors (
    consumer    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    position    BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- The catalog indexer kept its position in a setting before.
INSERT INTO outbox_cursors (consumer, position, updated_at)
    SELECT 'catalog-indexer', CAST(value AS BIGINT), 0 FROM settings WHERE name = 'catalog.indexed_event';
DELETE FROM settings WHERE name = 'catalog.indexed_event';
