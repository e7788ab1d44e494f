//! The metadata store on SQL databases through sqlx's `Any` driver: SQLite (embedded default),
//! PostgreSQL and MariaDB/MySQL share every statement. Statements are written with `?`
//! placeholders; the few dialect differences (placeholders on PostgreSQL, upserts on MySQL)
//! are handled by [`Dialect`].

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use super::meta::{ManifestRecord, MetadataStore, NewManifest, PutOutcome, Referrer, UploadRecord};
use super::{now_ms, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            other => Err(StoreError::Other(format!("unsupported database URL scheme {other:?}"))),
        }
    }

    /// Rewrite `?` placeholders for PostgreSQL (`$1`, `$2`, ...). Statements contain no `?`
    /// inside literals.
    fn sql<'a>(self, sql: &'a str) -> Cow<'a, str> {
        if self != Dialect::Postgres {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// `INSERT ... ` that silently keeps an existing row with the same key.
    fn insert_ignore(self, rest: &str) -> String {
        match self {
            Dialect::MySql => format!("INSERT IGNORE INTO {rest}"),
            _ => format!("INSERT INTO {rest} ON CONFLICT DO NOTHING"),
        }
    }

    /// `INSERT ... ` that overwrites `cols` of an existing row with the same `key`.
    fn upsert(self, rest: &str, key: &str, cols: &[&str]) -> String {
        match self {
            Dialect::MySql => {
                let set: Vec<String> = cols.iter().map(|c| format!("{c} = VALUES({c})")).collect();
                format!("INSERT INTO {rest} ON DUPLICATE KEY UPDATE {}", set.join(", "))
            }
            _ => {
                let set: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
                format!(
                    "INSERT INTO {rest} ON CONFLICT ({key}) DO UPDATE SET {}",
                    set.join(", ")
                )
            }
        }
    }
}

/// One row of the event outbox.
#[derive(Default, Clone, Copy)]
struct Event<'a> {
    kind: &'a str,
    repo: &'a str,
    digest: Option<&'a str>,
    tag: Option<&'a str>,
    media_type: Option<&'a str>,
    size: Option<u64>,
}

pub struct SqlStore {
    /// Reads; on SQLite a pool of several connections.
    read: AnyPool,
    /// Writes; on SQLite one connection, so writers queue instead of failing with SQLITE_BUSY.
    write: AnyPool,
    dialect: Dialect,
}

impl SqlStore {
    /// Connect to `url` (`sqlite://PATH`, `postgres://...`, `mysql://...`).
    /// `durable` asks SQLite to sync its log on every commit.
    pub async fn connect(url: &str, durable: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        let url = if dialect == Dialect::Sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_string()
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let pool = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(if dialect == Dialect::Sqlite { 1 } else { 0 })
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if dialect == Dialect::Sqlite {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 30000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            let sync = if durable {
                                "PRAGMA synchronous = FULL"
                            } else {
                                "PRAGMA synchronous = NORMAL"
                            };
                            conn.execute(sync).await?;
                        }
                        Ok(())
                    })
                })
        };
        let (read, write) = match dialect {
            Dialect::Sqlite => {
                let write = pool(1).connect_with(opts.clone()).await?;
                (pool(4).connect_with(opts).await?, write)
            }
            _ => {
                let p = pool(16).connect_with(opts).await?;
                (p.clone(), p)
            }
        };
        Ok(Self { read, write, dialect })
    }

    /// Apply the migrations of this database's dialect.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.write).await?,
            other => return Err(StoreError::Other(format!("no migrations for {other:?} yet"))),
        }
        Ok(())
    }

    fn q<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        self.dialect.sql(sql)
    }

    /// Id of repository `name`, created if missing.
    async fn ensure_repo(&self, tx: &mut Transaction<'_, Any>, name: &str) -> Result<i64, StoreError> {
        let ins = self
            .dialect
            .insert_ignore("repositories (name, created_at) VALUES (?, ?)");
        sqlx::query(&self.q(&ins))
            .bind(name)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query(&self.q("SELECT id FROM repositories WHERE name = ?"))
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn event(&self, tx: &mut Transaction<'_, Any>, e: Event<'_>) -> Result<(), StoreError> {
        sqlx::query(&self.q(
            "INSERT INTO events (kind, repository, digest, tag, media_type, size, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(e.kind)
        .bind(e.repo)
        .bind(e.digest)
        .bind(e.tag)
        .bind(e.media_type)
        .bind(e.size.map(|s| s as i64))
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn link_blob_tx(
        &self,
        tx: &mut Transaction<'_, Any>,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let repo_id = self.ensure_repo(tx, repo).await?;
        let now = now_ms();
        let ins = self
            .dialect
            .insert_ignore("blobs (digest, size, created_at) VALUES (?, ?, ?)");
        sqlx::query(&self.q(&ins))
            .bind(digest)
            .bind(size as i64)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let ins = self
            .dialect
            .insert_ignore("repo_blobs (repo_id, digest, created_at) VALUES (?, ?, ?)");
        let linked = sqlx::query(&self.q(&ins))
            .bind(repo_id)
            .bind(digest)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        if linked.rows_affected() > 0 {
            self.event(
                tx,
                Event {
                    kind: "blob.push",
                    repo,
                    digest: Some(digest),
                    size: Some(size),
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn manifest_row(
        &self,
        sql: &str,
        repo: &str,
        key: &str,
        content: bool,
    ) -> Result<Option<ManifestRecord>, StoreError> {
        let row = sqlx::query(&self.q(sql))
            .bind(repo)
            .bind(key)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ManifestRecord {
            digest: row.try_get(0)?,
            media_type: row.try_get(1)?,
            size: row.try_get::<i64, _>(2)? as u64,
            content: if content { row.try_get(3)? } else { Vec::new() },
        }))
    }
}

#[async_trait]
impl MetadataStore for SqlStore {
    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn repo_blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(&self.q("SELECT b.size FROM repo_blobs rb \
             JOIN repositories r ON r.id = rb.repo_id JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = ? AND rb.digest = ?"))
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<i64, _>(0)? as u64),
            None => None,
        })
    }

    async fn link_blob(&self, repo: &str, digest: &str, size: u64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        self.link_blob_tx(&mut tx, repo, digest, size).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let res =
            sqlx::query(&self.q(
                "DELETE FROM repo_blobs WHERE digest = ? AND repo_id = (SELECT id FROM repositories WHERE name = ?)",
            ))
            .bind(digest)
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        let gone = res.rows_affected() > 0;
        if gone {
            self.event(
                &mut tx,
                Event {
                    kind: "blob.delete",
                    repo,
                    digest: Some(digest),
                    ..Default::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn upload_create(&self, id: &str, repo: &str) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(&self.q("INSERT INTO uploads (id, repo, size, created_at, updated_at) VALUES (?, ?, 0, ?, ?)"))
            .bind(id)
            .bind(repo)
            .bind(now)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn upload_get(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let row = sqlx::query(&self.q("SELECT id, repo, size, created_at, updated_at FROM uploads WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(UploadRecord {
            id: row.try_get(0)?,
            repo: row.try_get(1)?,
            size: row.try_get::<i64, _>(2)? as u64,
            created_at: row.try_get(3)?,
            updated_at: row.try_get(4)?,
        }))
    }

    async fn upload_advance(&self, id: &str, from: u64, to: u64) -> Result<bool, StoreError> {
        let res = sqlx::query(&self.q("UPDATE uploads SET size = ?, updated_at = ? WHERE id = ? AND size = ?"))
            .bind(to as i64)
            .bind(now_ms())
            .bind(id)
            .bind(from as i64)
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn upload_complete(&self, id: &str, repo: &str, digest: &str, size: u64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(&self.q("DELETE FROM uploads WHERE id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.link_blob_tx(&mut tx, repo, digest, size).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upload_delete(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(&self.q("DELETE FROM uploads WHERE id = ?"))
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn uploads_idle_since(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT id FROM uploads WHERE updated_at < ? ORDER BY updated_at LIMIT 1000"))
            .bind(before_ms)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn manifest_put(&self, repo: &str, m: &NewManifest, tags: &[String]) -> Result<PutOutcome, StoreError> {
        let mut tx = self.write.begin().await?;
        let repo_id = self.ensure_repo(&mut tx, repo).await?;

        let mut missing = Vec::new();
        for digest in &m.blobs {
            let found = sqlx::query(&self.q("SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?"))
                .bind(repo_id)
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                missing.push(digest.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(PutOutcome::MissingBlobs(missing));
        }
        for digest in &m.manifests {
            let found = sqlx::query(&self.q("SELECT 1 FROM repo_manifests WHERE repo_id = ? AND digest = ?"))
                .bind(repo_id)
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                missing.push(digest.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(PutOutcome::MissingManifests(missing));
        }

        let now = now_ms();
        let ins = self.dialect.insert_ignore(
            "manifests (digest, media_type, size, content, artifact_type, subject, annotations, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&self.q(&ins))
            .bind(&m.digest)
            .bind(&m.media_type)
            .bind(m.content.len() as i64)
            .bind(m.content.clone())
            .bind(m.artifact_type.as_deref())
            .bind(m.subject.as_deref())
            .bind(m.annotations.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let ins = self
            .dialect
            .insert_ignore("manifest_refs (digest, child, kind) VALUES (?, ?, ?)");
        let refs = m
            .blobs
            .iter()
            .map(|d| (d, "blob"))
            .chain(m.manifests.iter().map(|d| (d, "manifest")));
        for (child, kind) in refs {
            sqlx::query(&self.q(&ins))
                .bind(&m.digest)
                .bind(child)
                .bind(kind)
                .execute(&mut *tx)
                .await?;
        }
        let ins = self
            .dialect
            .insert_ignore("repo_manifests (repo_id, digest, created_at) VALUES (?, ?, ?)");
        sqlx::query(&self.q(&ins))
            .bind(repo_id)
            .bind(&m.digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let pushed = Event {
            kind: "manifest.push",
            repo,
            digest: Some(&m.digest),
            media_type: Some(&m.media_type),
            size: Some(m.content.len() as u64),
            ..Default::default()
        };
        if tags.is_empty() {
            self.event(&mut tx, pushed).await?;
        }
        let up = self.dialect.upsert(
            "tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?)",
            "repo_id, name",
            &["digest", "updated_at"],
        );
        for tag in tags {
            sqlx::query(&self.q(&up))
                .bind(repo_id)
                .bind(tag)
                .bind(&m.digest)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            self.event(
                &mut tx,
                Event {
                    tag: Some(tag),
                    ..pushed
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(PutOutcome::Stored)
    }

    async fn manifest_by_tag(
        &self,
        repo: &str,
        tag: &str,
        content: bool,
    ) -> Result<Option<ManifestRecord>, StoreError> {
        let sql = if content {
            "SELECT m.digest, m.media_type, m.size, m.content FROM tags t \
             JOIN repositories r ON r.id = t.repo_id JOIN manifests m ON m.digest = t.digest \
             WHERE r.name = ? AND t.name = ?"
        } else {
            "SELECT m.digest, m.media_type, m.size FROM tags t \
             JOIN repositories r ON r.id = t.repo_id JOIN manifests m ON m.digest = t.digest \
             WHERE r.name = ? AND t.name = ?"
        };
        self.manifest_row(sql, repo, tag, content).await
    }

    async fn manifest_by_digest(
        &self,
        repo: &str,
        digest: &str,
        content: bool,
    ) -> Result<Option<ManifestRecord>, StoreError> {
        let sql = if content {
            "SELECT m.digest, m.media_type, m.size, m.content FROM repo_manifests rm \
             JOIN repositories r ON r.id = rm.repo_id JOIN manifests m ON m.digest = rm.digest \
             WHERE r.name = ? AND rm.digest = ?"
        } else {
            "SELECT m.digest, m.media_type, m.size FROM repo_manifests rm \
             JOIN repositories r ON r.id = rm.repo_id JOIN manifests m ON m.digest = rm.digest \
             WHERE r.name = ? AND rm.digest = ?"
        };
        self.manifest_row(sql, repo, digest, content).await
    }

    async fn manifest_delete(&self, repo: &str, digest: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let Some(row) = sqlx::query(&self.q("SELECT id FROM repositories WHERE name = ?"))
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let repo_id: i64 = row.try_get(0)?;
        sqlx::query(&self.q("DELETE FROM tags WHERE repo_id = ? AND digest = ?"))
            .bind(repo_id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query(&self.q("DELETE FROM repo_manifests WHERE repo_id = ? AND digest = ?"))
            .bind(repo_id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        let gone = res.rows_affected() > 0;
        if gone {
            self.event(
                &mut tx,
                Event {
                    kind: "manifest.delete",
                    repo,
                    digest: Some(digest),
                    ..Default::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn tag_delete(&self, repo: &str, tag: &str) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let res = sqlx::query(
            &self.q("DELETE FROM tags WHERE name = ? AND repo_id = (SELECT id FROM repositories WHERE name = ?)"),
        )
        .bind(tag)
        .bind(repo)
        .execute(&mut *tx)
        .await?;
        let gone = res.rows_affected() > 0;
        if gone {
            self.event(
                &mut tx,
                Event {
                    kind: "tag.delete",
                    repo,
                    tag: Some(tag),
                    ..Default::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn tags(&self, repo: &str, limit: u32, last: Option<&str>) -> Result<Option<Vec<String>>, StoreError> {
        let rows = sqlx::query(
            &self.q("SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id \
             WHERE r.name = ? AND t.name > ? ORDER BY t.name LIMIT ?"),
        )
        .bind(repo)
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            // No tags (after `last`): tell an empty repository from an unknown one.
            let known = sqlx::query(&self.q("SELECT id FROM repositories WHERE name = ?"))
                .bind(repo)
                .fetch_optional(&self.read)
                .await?;
            if known.is_none() {
                return Ok(None);
            }
        }
        let tags: Result<Vec<String>, _> = rows.iter().map(|r| r.try_get(0)).collect();
        Ok(Some(tags?))
    }

    async fn repositories(&self, limit: u32, last: Option<&str>) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?"))
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StoreError> {
        let base = "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM repo_manifests rm \
                    JOIN repositories r ON r.id = rm.repo_id JOIN manifests m ON m.digest = rm.digest \
                    WHERE r.name = ? AND m.subject = ?";
        let sql = match artifact_type {
            Some(_) => format!("{base} AND m.artifact_type = ? ORDER BY m.digest"),
            None => format!("{base} ORDER BY m.digest"),
        };
        let sql = self.q(&sql);
        let mut query = sqlx::query(&sql).bind(repo).bind(subject);
        if let Some(at) = artifact_type {
            query = query.bind(at);
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(Referrer {
                    digest: row.try_get(0)?,
                    media_type: row.try_get(1)?,
                    size: row.try_get::<i64, _>(2)? as u64,
                    artifact_type: row.try_get(3)?,
                    annotations: row.try_get(4)?,
                })
            })
            .collect()
    }
}
