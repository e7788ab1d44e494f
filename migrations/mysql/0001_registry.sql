-- Registry core schema (MariaDB / MySQL, InnoDB). Mirrors migrations/sqlite/0001_registry.sql.
-- Names, tags and digests are ASCII by the spec's grammar: ascii_bin keeps keys small and
-- ORDER BY in byte order, as the spec's listings require.

CREATE TABLE repositories (
    id          BIGINT  NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
) ENGINE=InnoDB;

CREATE TABLE blobs (
    digest      VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
) ENGINE=InnoDB;

CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL,
    digest      VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest),
    KEY repo_blobs_digest (digest),
    FOREIGN KEY (repo_id) REFERENCES repositories(id),
    FOREIGN KEY (digest) REFERENCES blobs(digest)
) ENGINE=InnoDB;

CREATE TABLE manifests (
    digest         VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    media_type     VARCHAR(255) NOT NULL,
    size           BIGINT  NOT NULL,
    content        LONGBLOB NOT NULL,
    artifact_type  VARCHAR(255),
    subject        VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin,
    annotations    MEDIUMTEXT,
    created_at     BIGINT  NOT NULL,
    KEY manifests_subject (subject)
) ENGINE=InnoDB;

CREATE TABLE manifest_refs (
    digest      VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    child       VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind        VARCHAR(16) NOT NULL,
    PRIMARY KEY (digest, child),
    KEY manifest_refs_child (child)
) ENGINE=InnoDB;

CREATE TABLE repo_manifests (
    repo_id     BIGINT  NOT NULL,
    digest      VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest),
    FOREIGN KEY (repo_id) REFERENCES repositories(id),
    FOREIGN KEY (digest) REFERENCES manifests(digest)
) ENGINE=InnoDB;

CREATE TABLE tags (
    repo_id     BIGINT  NOT NULL,
    name        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    digest      VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name),
    KEY tags_digest (repo_id, digest),
    FOREIGN KEY (repo_id) REFERENCES repositories(id)
) ENGINE=InnoDB;

CREATE TABLE uploads (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    repo        VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    KEY uploads_updated (updated_at)
) ENGINE=InnoDB;

CREATE TABLE events (
    id          BIGINT  NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind        VARCHAR(64) NOT NULL,
    repository  VARCHAR(255) NOT NULL,
    digest      VARCHAR(200),
    tag         VARCHAR(128),
    media_type  VARCHAR(255),
    size        BIGINT,
    created_at  BIGINT  NOT NULL
) ENGINE=InnoDB;
