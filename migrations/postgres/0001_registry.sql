-- Registry core schema (PostgreSQL). Mirrors migrations/sqlite/0001_registry.sql.
-- Identifiers use the "C" collation so ORDER BY is byte order, as the spec's listings require.

CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE blobs (
    digest      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    digest      TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

CREATE TABLE manifests (
    digest         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    media_type     TEXT    NOT NULL,
    size           BIGINT  NOT NULL,
    content        BYTEA   NOT NULL,
    artifact_type  TEXT,
    subject        TEXT COLLATE "C",
    annotations    TEXT,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX manifests_subject ON manifests(subject);

CREATE TABLE manifest_refs (
    digest      TEXT COLLATE "C" NOT NULL,
    child       TEXT COLLATE "C" NOT NULL,
    kind        TEXT    NOT NULL,
    PRIMARY KEY (digest, child)
);
CREATE INDEX manifest_refs_child ON manifest_refs(child);

CREATE TABLE repo_manifests (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    digest      TEXT COLLATE "C" NOT NULL REFERENCES manifests(digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

CREATE TABLE tags (
    repo_id     BIGINT  NOT NULL REFERENCES repositories(id),
    name        TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name)
);
CREATE INDEX tags_digest ON tags(repo_id, digest);

CREATE TABLE uploads (
    id          TEXT    NOT NULL PRIMARY KEY,
    repo        TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX uploads_updated ON uploads(updated_at);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT    NOT NULL,
    repository  TEXT    NOT NULL,
    digest      TEXT,
    tag         TEXT,
    media_type  TEXT,
    size        BIGINT,
    created_at  BIGINT  NOT NULL
);
