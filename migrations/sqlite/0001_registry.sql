-- Registry core schema. Times are milliseconds since the Unix epoch (BIGINT) so the same
-- statements run on SQLite, PostgreSQL and MariaDB.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

-- One row per stored blob, however many repositories hold it.
CREATE TABLE blobs (
    digest      TEXT    NOT NULL PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Which repositories may read which blobs.
CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    digest      TEXT    NOT NULL REFERENCES blobs(digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

-- Manifest bytes exactly as pushed, with what the referrers API and GC need from them.
CREATE TABLE manifests (
    digest         TEXT    NOT NULL PRIMARY KEY,
    media_type     TEXT    NOT NULL,
    size           BIGINT  NOT NULL,
    content        BLOB    NOT NULL,
    artifact_type  TEXT,
    subject        TEXT,
    annotations    TEXT,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX manifests_subject ON manifests(subject);

-- What each manifest references: kind is 'blob' (config, layers) or 'manifest' (index children).
CREATE TABLE manifest_refs (
    digest      TEXT    NOT NULL,
    child       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    PRIMARY KEY (digest, child)
);
CREATE INDEX manifest_refs_child ON manifest_refs(child);

CREATE TABLE repo_manifests (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    digest      TEXT    NOT NULL REFERENCES manifests(digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

CREATE TABLE tags (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    name        TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_digest ON tags(repo_id, digest);

-- Upload sessions; their bytes live in the blob store under the same id.
CREATE TABLE uploads (
    id          TEXT    NOT NULL PRIMARY KEY,
    repo        TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX uploads_updated ON uploads(updated_at);

-- Outbox of registry events (push, delete), written in the same transaction as the change.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    repository  TEXT    NOT NULL,
    digest      TEXT,
    tag         TEXT,
    media_type  TEXT,
    size        BIGINT,
    created_at  BIGINT  NOT NULL
);
