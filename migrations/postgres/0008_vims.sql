-- (PostgreSQL) Mirrors migrations/sqlite/0008_vims.sql.
-- VIMs (the clouds and registries images are distributed to), what each one holds, and
-- distribution jobs with their targets (src/storage/vims.rs). Times are ms since the epoch.

-- config: the settings that are not secret (JSON); secret: the sealed secrets
-- (core::secrets), never shown; labels: JSON object; health: the last check (JSON).
CREATE TABLE vims (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    config      TEXT    NOT NULL,
    secret      TEXT,
    labels      TEXT    NOT NULL,
    health      TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- One image a VIM holds (Glance image id, or repository:tag on a registry), linked to the
-- catalog entry it is when it matched one. A sync rewrites a VIM's rows and drops the rows it
-- no longer saw (seen_at older than the sync).
CREATE TABLE vim_images (
    vim_id      TEXT    NOT NULL,
    remote_id   TEXT    NOT NULL,
    name        TEXT,
    status      TEXT,
    size        BIGINT,
    digest      TEXT,
    sha512      TEXT,
    entry_id    TEXT,
    meta        TEXT    NOT NULL,
    seen_at     BIGINT  NOT NULL,
    PRIMARY KEY (vim_id, remote_id)
);
CREATE INDEX vim_images_entry ON vim_images(entry_id, vim_id);

-- A distribution job (images to VIMs by one method) and its targets, one per image and VIM.
CREATE TABLE distributions (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_by  TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    options     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX distributions_created ON distributions(created_at);

CREATE TABLE distribution_targets (
    job_id       TEXT    NOT NULL,
    entry_id     TEXT    NOT NULL,
    vim_id       TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    method       TEXT,
    remote_id    TEXT,
    bytes_done   BIGINT  NOT NULL,
    bytes_total  BIGINT  NOT NULL,
    rate         BIGINT  NOT NULL,
    attempts     BIGINT  NOT NULL,
    last_error   TEXT,
    skipped      BIGINT  NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (job_id, entry_id, vim_id)
);
CREATE INDEX distribution_targets_entry ON distribution_targets(entry_id, state);
