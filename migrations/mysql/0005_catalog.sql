-- The image catalog (MariaDB / MySQL, InnoDB). Mirrors migrations/sqlite/0005_catalog.sql.
CREATE TABLE catalog_entries (
    id            VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    namespace     VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name          VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version       VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    type          VARCHAR(32)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    repository    VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    tag           VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    digest        VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status        VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    size          BIGINT  NOT NULL,
    os            VARCHAR(255),
    architecture  VARCHAR(255),
    disk_format   VARCHAR(32),
    vendor        VARCHAR(255),
    description   TEXT,
    predecessor   VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin,
    source        VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    details       MEDIUMTEXT NOT NULL,
    labels        MEDIUMTEXT NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    UNIQUE KEY catalog_entries_ref (repository, tag),
    KEY catalog_entries_name (name, version, id),
    KEY catalog_entries_ns (namespace, name, version),
    KEY catalog_entries_created (created_at, id),
    KEY catalog_entries_size (size, id),
    KEY catalog_entries_type_name (type, name, version, id),
    KEY catalog_entries_type_created (type, created_at, id),
    KEY catalog_entries_digest (digest)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE catalog_labels (
    entry_id  VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    label     VARCHAR(128) NOT NULL,
    value     VARCHAR(256) NOT NULL,
    PRIMARY KEY (entry_id, label),
    KEY catalog_labels_kv (label, value)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE catalog_links (
    parent  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    child   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind    VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    path    TEXT,
    PRIMARY KEY (parent, child, kind),
    KEY catalog_links_child (child)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE image_uploads (
    id          VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    repository  VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    tag         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    metadata    MEDIUMTEXT NOT NULL,
    created_at  BIGINT  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
