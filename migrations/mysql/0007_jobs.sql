-- Durable jobs, cluster-wide leases and event outbox cursors (MariaDB / MySQL, InnoDB).
-- Mirrors migrations/sqlite/0007_jobs.sql. Claims use SELECT ... FOR UPDATE SKIP LOCKED
-- (MariaDB 10.6, MySQL 8.0).
CREATE TABLE jobs (
    id            BIGINT  NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind          VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    unique_key    VARCHAR(255) NULL,
    payload       MEDIUMTEXT NOT NULL,
    state         VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    max_attempts  BIGINT  NOT NULL,
    run_at        BIGINT  NOT NULL,
    lease_owner   VARCHAR(255) NULL,
    lease_until   BIGINT  NULL,
    last_error    TEXT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    UNIQUE KEY jobs_unique_key (unique_key),
    KEY jobs_ready (queue, state, run_at),
    KEY jobs_finished (state, updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE leases (
    name        VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    owner       VARCHAR(255) NOT NULL,
    expires_at  BIGINT  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE outbox_cursors (
    consumer    VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    position    BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
) ENGINE=InnoDB;

-- The catalog indexer kept its position in a setting before.
INSERT INTO outbox_cursors (consumer, position, updated_at)
    SELECT 'catalog-indexer', CAST(value AS SIGNED), 0 FROM settings WHERE name = 'catalog.indexed_event';
DELETE FROM settings WHERE name = 'catalog.indexed_event';
