-- Namespaces (first path segment of repository names) with an optional storage quota in bytes.
CREATE TABLE namespaces (
    name         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    quota_bytes  BIGINT,
    updated_at   BIGINT  NOT NULL
);
