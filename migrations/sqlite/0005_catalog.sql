-- The image catalog: one typed, named, versioned entry per tagged artifact (repository + tag),
-- derived from its manifest, plus what only the catalog knows: status, labels, description,
-- metadata updates, links between entries. Times are ms since the epoch.
CREATE TABLE catalog_entries (
    id            TEXT    NOT NULL PRIMARY KEY,
    namespace     TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    type          TEXT    NOT NULL,
    repository    TEXT    NOT NULL,
    tag           TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    size          BIGINT  NOT NULL,
    os            TEXT,
    architecture  TEXT,
    disk_format   TEXT,
    vendor        TEXT,
    description   TEXT,
    predecessor   TEXT,
    source        TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    labels        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    UNIQUE (repository, tag)
);
CREATE INDEX catalog_entries_name ON catalog_entries(name, version, id);
CREATE INDEX catalog_entries_ns ON catalog_entries(namespace, name, version);
CREATE INDEX catalog_entries_created ON catalog_entries(created_at, id);
CREATE INDEX catalog_entries_size ON catalog_entries(size, id);
-- A type filter with each sort order (type is the commonest filter: ?type=vm-image).
CREATE INDEX catalog_entries_type_name ON catalog_entries(type, name, version, id);
CREATE INDEX catalog_entries_type_created ON catalog_entries(type, created_at, id);
CREATE INDEX catalog_entries_digest ON catalog_entries(digest);

-- Labels again, one row each, for filtering.
CREATE TABLE catalog_labels (
    entry_id  TEXT NOT NULL,
    label     TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (entry_id, label)
);
CREATE INDEX catalog_labels_kv ON catalog_labels(label, value);

-- parent --kind--> child: a VNF package 'contains' a VM image (at path inside the package).
CREATE TABLE catalog_links (
    parent  TEXT NOT NULL,
    child   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    path    TEXT,
    PRIMARY KEY (parent, child, kind)
);
CREATE INDEX catalog_links_child ON catalog_links(child);

-- Resumable VM image uploads: the metadata given when the session started; the bytes are a
-- registry upload session with the same id.
CREATE TABLE image_uploads (
    id          TEXT    NOT NULL PRIMARY KEY,
    repository  TEXT    NOT NULL,
    tag         TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
