-- Access control: users, robot accounts, namespace roles and visibility, the audit log, and
-- server settings shared by replicas (the token signing key).
CREATE TABLE users (
    name           VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    admin          BIGINT NOT NULL DEFAULT 0,
    disabled       BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
) ENGINE=InnoDB;

-- Robots authenticate as "robot$NAME"; namespaces and actions are comma-separated lists.
CREATE TABLE robots (
    name         VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    namespaces   TEXT NOT NULL,
    actions      TEXT NOT NULL,
    expires_at   BIGINT,
    disabled     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
) ENGINE=InnoDB;

-- Roles of users in namespaces: reader, writer, maintainer, admin.
CREATE TABLE memberships (
    namespace   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    principal   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    role        VARCHAR(16) NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, principal)
) ENGINE=InnoDB;

ALTER TABLE namespaces ADD COLUMN visibility VARCHAR(16) NOT NULL DEFAULT 'private';

CREATE TABLE audit (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    action     VARCHAR(64) NOT NULL,
    target     TEXT NOT NULL,
    namespace  VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin,
    remote     VARCHAR(64),
    outcome    VARCHAR(16) NOT NULL,
    detail     TEXT
) ENGINE=InnoDB;
CREATE INDEX audit_at ON audit (at);

CREATE TABLE settings (
    name   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    value  TEXT NOT NULL
) ENGINE=InnoDB;
