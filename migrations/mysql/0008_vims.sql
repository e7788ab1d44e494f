-- (MariaDB / MySQL, InnoDB) Mirrors migrations/sqlite/0008_vims.sql: VIMs, their inventories,
-- distribution jobs and targets. Keys are ASCII (ids are UUIDs; remote ids and names are
-- bounded by the service).
CREATE TABLE vims (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    name        VARCHAR(255) NOT NULL,
    kind        VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    config      MEDIUMTEXT NOT NULL,
    secret      MEDIUMTEXT NULL,
    labels      MEDIUMTEXT NOT NULL,
    health      MEDIUMTEXT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    UNIQUE KEY vims_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE vim_images (
    vim_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    remote_id   VARCHAR(512) NOT NULL,
    name        TEXT NULL,
    status      VARCHAR(64) NULL,
    size        BIGINT NULL,
    digest      VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NULL,
    sha512      VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NULL,
    entry_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    meta        MEDIUMTEXT NOT NULL,
    seen_at     BIGINT  NOT NULL,
    PRIMARY KEY (vim_id, remote_id),
    KEY vim_images_entry (entry_id, vim_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE distributions (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    created_by  VARCHAR(255) NOT NULL,
    method      VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    options     MEDIUMTEXT NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    KEY distributions_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE distribution_targets (
    job_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    entry_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    vim_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    method       VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL,
    remote_id    VARCHAR(512) NULL,
    bytes_done   BIGINT  NOT NULL,
    bytes_total  BIGINT  NOT NULL,
    rate         BIGINT  NOT NULL,
    attempts     BIGINT  NOT NULL,
    last_error   TEXT NULL,
    skipped      BIGINT  NOT NULL,
    started_at   BIGINT NULL,
    finished_at  BIGINT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (job_id, entry_id, vim_id),
    KEY distribution_targets_entry (entry_id, state)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
