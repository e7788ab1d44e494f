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

use super::meta::{AccountStore, GcStore, RegistryStore};
use super::meta::{AuditFilter, AuditRecord, RobotRecord, UserRecord};
use super::meta::{GcBlobLink, GcBlobRow, GcItem, GcManifest, GcOutcome, GcRef, GcRepository, GcSnapshot};
use super::meta::{ManifestRecord, NewManifest, PutOutcome, Referrer, UploadAdvance, UploadRecord};
use super::{now_ms, StoreError};

mod catalog;
mod group_sync;
mod jobs;
mod sqlite_reads;
mod sqlite_writes;
mod vims;

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

    /// The type name a CAST to a 64-bit integer uses.
    fn integer_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
            Dialect::MySql => "SIGNED",
        }
    }

    /// Suffix of a SELECT that locks the rows it reads against concurrent deletes until the
    /// transaction ends (SQLite needs none: it has one writer at a time).
    fn for_share(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR SHARE",
            Dialect::MySql => " LOCK IN SHARE MODE",
        }
    }

    /// Suffix of a SELECT inside a write transaction that locks the rows it reads until the
    /// transaction ends (SQLite's write transaction holds the database already).
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE",
        }
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

/// A nullable long text column. MariaDB reports MEDIUMTEXT to the Any driver as a BLOB, so
/// fall back to bytes.
fn long_text(row: &sqlx::any::AnyRow, idx: usize) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(idx) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row
            .try_get::<Option<Vec<u8>>, _>(idx)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

/// Deadlock or serialization failure: the transaction can simply be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or_default();
            matches!(code, "40001" | "40P01" | "1213" | "1205") || d.message().contains("Deadlock found")
        }
        _ => false,
    }
}

pub struct SqlStore {
    /// Reads; on SQLite a pool of several connections.
    read: AnyPool,
    /// Writes; on SQLite one connection, so writers queue instead of failing with SQLITE_BUSY.
    write: AnyPool,
    dialect: Dialect,
    /// On SQLite, the hottest reads run in place instead ([`sqlite_reads`]).
    in_place: Option<sqlite_reads::SqliteReads>,
    /// On an SQLite database file with `durable`, the group commit that makes writes durable
    /// before they are reported ([`group_sync`]); every write method ends in [`Self::synced`].
    group_sync: Option<group_sync::GroupSync>,
    /// On an SQLite database file, the writes of a push run in place ([`sqlite_writes`]).
    hot: Option<sqlite_writes::SqliteWrites>,
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
        let file = match dialect {
            Dialect::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .ok()
                .map(|o| o.get_filename().to_path_buf())
                .filter(|p| sqlite_reads::is_file(p)),
            _ => None,
        };
        let in_place = file.clone().and_then(sqlite_reads::SqliteReads::new);
        let group_sync = match &file {
            Some(f) if durable => Some(group_sync::GroupSync::for_database(f.clone())?),
            _ => None,
        };
        // With a group commit, a commit only writes the log and the group sync flushes it;
        // without one (an in-memory database) each commit syncs, as asked.
        let full_sync = durable && group_sync.is_none();
        let hot = file.map(|f| sqlite_writes::SqliteWrites::new(f, full_sync));
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
                            let sync = if full_sync {
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
        Ok(Self {
            read,
            write,
            dialect,
            in_place,
            group_sync,
            hot,
        })
    }

    /// Apply the migrations of this database's dialect.
    /// A database whose schema is newer than this binary knows is refused, so an old replica
    /// never writes to a schema it does not understand.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
            Dialect::MySql => sqlx::migrate!("migrations/mysql"),
        };
        match migrator.run(&self.write).await {
            Err(sqlx::migrate::MigrateError::VersionMissing(v)) => Err(StoreError::Other(format!(
                "the database schema has migration {v}, which this image-manager does not know: \
                 it is newer than this binary; upgrade image-manager"
            ))),
            other => self.synced(other.map_err(StoreError::from)).await,
        }
    }

    /// Run a write transaction, again when the database reports a deadlock or serialization
    /// failure (concurrent replicas on PostgreSQL or MariaDB), backing off exponentially with
    /// jitter between attempts (5 ms doubling, at most 8 retries); its outcome is reported
    /// once durable ([`Self::synced`]).
    async fn retrying<'s, T, F>(&'s self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> futures::future::BoxFuture<'s, Result<T, StoreError>>,
    {
        use backon::Retryable;
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(500))
            .with_max_times(8)
            .with_jitter();
        let done = attempt
            .retry(policy)
            .when(|e| matches!(e, StoreError::Db(d) if is_retryable(d)))
            .notify(|e, after| tracing::debug!(error = %e, ?after, "retrying transaction"))
            .await;
        self.synced(done).await
    }

    /// Start a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads before it writes waits for other processes'
    /// writers (busy_timeout) instead of failing when it upgrades its lock.
    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.write.begin().await?,
        })
    }

    /// Report `done` once its commit is durable: on SQLite with `storage.fsync`, after the
    /// group sync of the log that covers it ([`group_sync`]); elsewhere at once (the commit
    /// synced itself, or durability was not asked for).
    async fn synced<T>(&self, done: Result<T, StoreError>) -> Result<T, StoreError> {
        let value = done?;
        if let Some(g) = &self.group_sync {
            g.wait().await?;
        }
        Ok(value)
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
        // A re-push refreshes created_at of the blob and of the link, and so locks both rows:
        // garbage collection's grace period counts from the latest push, and a collector
        // deleting either row at the same moment is waited for (core::gc).
        let ins = self.dialect.upsert(
            "blobs (digest, size, created_at) VALUES (?, ?, ?)",
            "digest",
            &["created_at"],
        );
        sqlx::query(&self.q(&ins))
            .bind(digest)
            .bind(size as i64)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let refreshed = sqlx::query(&self.q("UPDATE repo_blobs SET created_at = ? WHERE repo_id = ? AND digest = ?"))
            .bind(now)
            .bind(repo_id)
            .bind(digest)
            .execute(&mut **tx)
            .await?;
        let ins = self
            .dialect
            .insert_ignore("repo_blobs (repo_id, digest, created_at) VALUES (?, ?, ?)");
        let linked = refreshed.rows_affected() == 0
            && sqlx::query(&self.q(&ins))
                .bind(repo_id)
                .bind(digest)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                > 0;
        if linked {
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

    async fn link_blob_once(&self, repo: &str, digest: &str, size: u64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        self.link_blob_tx(&mut tx, repo, digest, size).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unlink_blob_once(&self, repo: &str, digest: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
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

    async fn upload_complete_once(
        &self,
        id: &str,
        token: &str,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query(&self.q("DELETE FROM uploads WHERE id = ? AND writer = ?"))
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() != 1 {
            return Ok(false);
        }
        self.link_blob_tx(&mut tx, repo, digest, size).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn manifest_put_once(&self, repo: &str, m: &NewManifest, tags: &[String]) -> Result<PutOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let repo_id = self.ensure_repo(&mut tx, repo).await?;

        let mut missing = Vec::new();
        for digest in &m.blobs {
            let found = sqlx::query(&self.q(&format!(
                "SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?{}",
                self.dialect.for_share()
            )))
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
            let found = sqlx::query(&self.q(&format!(
                "SELECT 1 FROM repo_manifests WHERE repo_id = ? AND digest = ?{}",
                self.dialect.for_share()
            )))
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
        // Upserts, not insert-ignores, for the manifest and its repo_manifests row: they lock
        // an existing row, so a garbage collector removing it at the same moment is waited for
        // (or waits) instead of deleting what this push is about to tag (core::gc).
        let ins = self.dialect.upsert(
            "manifests (digest, media_type, size, content, artifact_type, subject, annotations, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            "digest",
            &["created_at"],
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
        let ins = self.dialect.upsert(
            "repo_manifests (repo_id, digest, created_at) VALUES (?, ?, ?)",
            "repo_id, digest",
            &["created_at"],
        );
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

    async fn manifest_delete_once(&self, repo: &str, digest: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
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

    async fn tag_delete_once(&self, repo: &str, tag: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
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

    async fn manifest_row(
        &self,
        sql: &str,
        repo: &str,
        key: &str,
        content: bool,
    ) -> Result<Option<ManifestRecord>, StoreError> {
        if let Some(found) = self.in_place.as_ref().and_then(|r| r.manifest(sql, repo, key, content)) {
            return Ok(found);
        }
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
impl RegistryStore for SqlStore {
    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn repo_blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>, StoreError> {
        const SQL: &str = "SELECT b.size FROM repo_blobs rb \
             JOIN repositories r ON r.id = rb.repo_id JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = ? AND rb.digest = ?";
        if let Some(found) = self.in_place.as_ref().and_then(|r| r.repo_blob_size(SQL, repo, digest)) {
            return Ok(found);
        }
        let row = sqlx::query(&self.q(SQL))
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
        if let Some(done) = self
            .hot
            .as_ref()
            .and_then(|w| w.link_blob(repo, digest, size, now_ms()))
        {
            return self.synced(Ok(done)).await;
        }
        self.retrying(|| Box::pin(self.link_blob_once(repo, digest, size)))
            .await
    }

    async fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool, StoreError> {
        self.retrying(|| Box::pin(self.unlink_blob_once(repo, digest))).await
    }

    async fn upload_create(&self, id: &str, repo: &str) -> Result<(), StoreError> {
        let now = now_ms();
        if let Some(done) = self.hot.as_ref().and_then(|w| w.upload_create(id, repo, now)) {
            return self.synced(Ok(done)).await;
        }
        sqlx::query(&self.q("INSERT INTO uploads (id, repo, size, created_at, updated_at) VALUES (?, ?, 0, ?, ?)"))
            .bind(id)
            .bind(repo)
            .bind(now)
            .bind(now)
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn upload_get(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        const SQL: &str = "SELECT id, repo, size, created_at, updated_at, writer, writer_until, hash_state, data_id \
             FROM uploads WHERE id = ?";
        // A lease decision must see the latest row: in place (each statement reads the latest
        // commit), else from the writing pool.
        if let Some(found) = self.in_place.as_ref().and_then(|r| r.upload(SQL, id)) {
            return Ok(found);
        }
        let row = sqlx::query(&self.q(SQL)).bind(id).fetch_optional(&self.write).await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(UploadRecord {
            id: row.try_get(0)?,
            repo: row.try_get(1)?,
            size: row.try_get::<i64, _>(2)? as u64,
            created_at: row.try_get(3)?,
            updated_at: row.try_get(4)?,
            writer: row.try_get(5)?,
            writer_until: row.try_get(6)?,
            hash_state: row.try_get(7)?,
            data_id: row.try_get(8)?,
        }))
    }

    async fn upload_lock(
        &self,
        id: &str,
        size: u64,
        previous: Option<&str>,
        token: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        // A lease is not made durable: a crash ends its holder too, and a lease the database
        // forgot only lets the next writer in sooner.
        if let Some(locked) = self
            .hot
            .as_ref()
            .and_then(|w| w.upload_lock(id, size, previous, token, until, now))
        {
            return Ok(locked);
        }
        let res = match previous {
            None => {
                sqlx::query(
                    &self.q("UPDATE uploads SET writer = ?, writer_until = ?, updated_at = ? \
                     WHERE id = ? AND size = ? AND writer IS NULL"),
                )
                .bind(token)
                .bind(until)
                .bind(now)
                .bind(id)
                .bind(size as i64)
                .execute(&self.write)
                .await?
            }
            Some(prev) => {
                sqlx::query(
                    &self.q("UPDATE uploads SET writer = ?, writer_until = ?, updated_at = ? \
                     WHERE id = ? AND size = ? AND writer = ? AND writer_until < ?"),
                )
                .bind(token)
                .bind(until)
                .bind(now)
                .bind(id)
                .bind(size as i64)
                .bind(prev)
                .bind(now)
                .execute(&self.write)
                .await?
            }
        };
        Ok(res.rows_affected() == 1)
    }

    async fn upload_renew(&self, id: &str, token: &str, until: i64) -> Result<bool, StoreError> {
        let res =
            sqlx::query(&self.q("UPDATE uploads SET writer_until = ?, updated_at = ? WHERE id = ? AND writer = ?"))
                .bind(until)
                .bind(now_ms())
                .bind(id)
                .bind(token)
                .execute(&self.write)
                .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn upload_release(&self, id: &str, token: &str) -> Result<(), StoreError> {
        sqlx::query(&self.q("UPDATE uploads SET writer = NULL, writer_until = 0 WHERE id = ? AND writer = ?"))
            .bind(id)
            .bind(token)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn upload_advance(&self, id: &str, token: &str, adv: &UploadAdvance<'_>) -> Result<bool, StoreError> {
        if let Some(done) = self
            .hot
            .as_ref()
            .and_then(|w| w.upload_advance(id, token, adv, now_ms()))
        {
            return self.synced(Ok(done)).await;
        }
        let data_id = (adv.data_id != id).then_some(adv.data_id);
        let sql = if adv.release {
            "UPDATE uploads SET size = ?, hash_state = ?, data_id = ?, updated_at = ?, writer = NULL, writer_until = 0 \
             WHERE id = ? AND writer = ? AND size = ?"
        } else {
            "UPDATE uploads SET size = ?, hash_state = ?, data_id = ?, updated_at = ? \
             WHERE id = ? AND writer = ? AND size = ?"
        };
        let res = sqlx::query(&self.q(sql))
            .bind(adv.to as i64)
            .bind(adv.hash_state)
            .bind(data_id)
            .bind(now_ms())
            .bind(id)
            .bind(token)
            .bind(adv.from as i64)
            .execute(&self.write)
            .await?;
        self.synced(Ok(res.rows_affected() == 1)).await
    }

    async fn upload_complete(
        &self,
        id: &str,
        token: &str,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        if let Some(done) = self
            .hot
            .as_ref()
            .and_then(|w| w.upload_complete(id, token, repo, digest, size, now_ms()))
        {
            return self.synced(Ok(done)).await;
        }
        self.retrying(|| Box::pin(self.upload_complete_once(id, token, repo, digest, size)))
            .await
    }

    async fn upload_data_in_use(&self, data: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(&self.q("SELECT 1 FROM uploads WHERE id = ? OR data_id = ? LIMIT 1"))
            .bind(data)
            .bind(data)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.is_some())
    }

    async fn upload_delete(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(&self.q("DELETE FROM uploads WHERE id = ?"))
            .bind(id)
            .execute(&self.write)
            .await?;
        self.synced(Ok(res.rows_affected() > 0)).await
    }

    async fn uploads_idle_since(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT id FROM uploads WHERE updated_at < ? ORDER BY updated_at LIMIT 1000"))
            .bind(before_ms)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn manifest_put(&self, repo: &str, m: &NewManifest, tags: &[String]) -> Result<PutOutcome, StoreError> {
        if let Some(done) = self.hot.as_ref().and_then(|w| w.manifest_put(repo, m, tags, now_ms())) {
            return self.synced(Ok(done)).await;
        }
        self.retrying(|| Box::pin(self.manifest_put_once(repo, m, tags))).await
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
        self.retrying(|| Box::pin(self.manifest_delete_once(repo, digest)))
            .await
    }

    async fn tag_delete(&self, repo: &str, tag: &str) -> Result<bool, StoreError> {
        self.retrying(|| Box::pin(self.tag_delete_once(repo, tag))).await
    }

    async fn tags(&self, repo: &str, limit: u32, last: Option<&str>) -> Result<Option<Vec<String>>, StoreError> {
        const SQL: &str = "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id \
             WHERE r.name = ? AND t.name > ? ORDER BY t.name LIMIT ?";
        const KNOWN: &str = "SELECT id FROM repositories WHERE name = ?";
        if let Some(r) = &self.in_place {
            if let Some(tags) = r.names(SQL, Some(repo), last.unwrap_or(""), limit) {
                if !tags.is_empty() {
                    return Ok(Some(tags));
                }
                // No tags (after `last`): tell an empty repository from an unknown one.
                if let Some(known) = r.exists(KNOWN, repo) {
                    return Ok(known.then_some(tags));
                }
            }
        }
        let rows = sqlx::query(&self.q(SQL))
            .bind(repo)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        if rows.is_empty() {
            // No tags (after `last`): tell an empty repository from an unknown one.
            let known = sqlx::query(&self.q(KNOWN))
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
        const SQL: &str = "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?";
        if let Some(names) = self
            .in_place
            .as_ref()
            .and_then(|r| r.names(SQL, None, last.unwrap_or(""), limit))
        {
            return Ok(names);
        }
        let rows = sqlx::query(&self.q(SQL))
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn namespace_usage(&self, ns: &str) -> Result<u64, StoreError> {
        // Repositories of `ns` are `ns` itself and the names in ["ns/", "ns0"): '0' follows '/'
        // in byte order, and every dialect here compares these names bytewise.
        // SUM is a DECIMAL on PostgreSQL and MariaDB, which the Any driver cannot read: cast it.
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(b.size), 0) AS {}) FROM blobs b WHERE b.digest IN (\
               SELECT rb.digest FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
               WHERE r.name = ? OR (r.name >= ? AND r.name < ?))",
            self.dialect.integer_type()
        );
        let row = sqlx::query(&self.q(&sql))
            .bind(ns)
            .bind(format!("{ns}/"))
            .bind(format!("{ns}0"))
            .fetch_one(&self.read)
            .await?;
        let total: i64 = row.try_get(0)?;
        Ok(total.max(0) as u64)
    }

    async fn namespace_has_blob(&self, ns: &str, digest: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            &self.q("SELECT 1 FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
             WHERE rb.digest = ? AND (r.name = ? OR (r.name >= ? AND r.name < ?)) LIMIT 1"),
        )
        .bind(digest)
        .bind(ns)
        .bind(format!("{ns}/"))
        .bind(format!("{ns}0"))
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    async fn namespace_quota(&self, ns: &str) -> Result<Option<u64>, StoreError> {
        const SQL: &str = "SELECT quota_bytes FROM namespaces WHERE name = ?";
        if let Some(found) = self.in_place.as_ref().and_then(|r| r.nullable_int(SQL, ns)) {
            return Ok(found.flatten().map(|b| b.max(0) as u64));
        }
        let row = sqlx::query(&self.q(SQL)).bind(ns).fetch_optional(&self.read).await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>, _>(0)?.map(|b| b.max(0) as u64),
            None => None,
        })
    }

    async fn set_namespace_quota(&self, ns: &str, bytes: Option<u64>) -> Result<(), StoreError> {
        let up = self.dialect.upsert(
            "namespaces (name, quota_bytes, updated_at) VALUES (?, ?, ?)",
            "name",
            &["quota_bytes", "updated_at"],
        );
        sqlx::query(&self.q(&up))
            .bind(ns)
            .bind(bytes.map(|b| b.min(i64::MAX as u64) as i64))
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM repositories UNION SELECT name FROM namespaces")
            .fetch_all(&self.read)
            .await?;
        let mut names: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .map(|n| n.split('/').next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
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
                    annotations: long_text(row, 4)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn user_add(&self, u: &UserRecord) -> Result<bool, StoreError> {
        let ins = self
            .dialect
            .insert_ignore("users (name, password_hash, admin, disabled, created_at) VALUES (?, ?, ?, ?, ?)");
        let done = sqlx::query(&self.q(&ins))
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(i64::from(u.admin))
            .bind(i64::from(u.disabled))
            .bind(u.created_at)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row =
            sqlx::query(&self.q("SELECT name, password_hash, admin, disabled, created_at FROM users WHERE name = ?"))
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, password_hash, admin, disabled, created_at FROM users ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_row).collect()
    }

    async fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q("UPDATE users SET disabled = ? WHERE name = ?"))
            .bind(i64::from(disabled))
            .bind(name)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn user_delete(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(&self.q("DELETE FROM memberships WHERE principal = ?"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(&self.q("DELETE FROM users WHERE name = ?"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn robot_add(&self, r: &RobotRecord) -> Result<bool, StoreError> {
        let ins = self.dialect.insert_ignore(
            "robots (name, secret_hash, namespaces, actions, expires_at, disabled, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        let done = sqlx::query(&self.q(&ins))
            .bind(&r.name)
            .bind(&r.secret_hash)
            .bind(r.namespaces.join(","))
            .bind(r.actions.join(","))
            .bind(r.expires_at)
            .bind(i64::from(r.disabled))
            .bind(r.created_at)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn robot_get(&self, name: &str) -> Result<Option<RobotRecord>, StoreError> {
        let row = sqlx::query(&self.q(
            "SELECT name, secret_hash, namespaces, actions, expires_at, disabled, created_at \
             FROM robots WHERE name = ?",
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(robot_row).transpose()
    }

    async fn robots(&self) -> Result<Vec<RobotRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, secret_hash, namespaces, actions, expires_at, disabled, created_at \
             FROM robots ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(robot_row).collect()
    }

    async fn robot_set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q("UPDATE robots SET disabled = ? WHERE name = ?"))
            .bind(i64::from(disabled))
            .bind(name)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn robot_delete(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q("DELETE FROM robots WHERE name = ?"))
            .bind(name)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn member_role(&self, ns: &str, principal: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(&self.q("SELECT role FROM memberships WHERE namespace = ? AND principal = ?"))
            .bind(ns)
            .bind(principal)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<String, _>(0)?),
            None => None,
        })
    }

    async fn memberships_of(&self, principal: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query(&self.q("SELECT namespace, role FROM memberships WHERE principal = ? ORDER BY namespace"))
                .bind(principal)
                .fetch_all(&self.read)
                .await?;
        pairs(&rows)
    }

    async fn members(&self, ns: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query(&self.q("SELECT principal, role FROM memberships WHERE namespace = ? ORDER BY principal"))
                .bind(ns)
                .fetch_all(&self.read)
                .await?;
        pairs(&rows)
    }

    async fn set_member(&self, ns: &str, principal: &str, role: Option<&str>) -> Result<bool, StoreError> {
        let done = match role {
            Some(role) => {
                let up = self.dialect.upsert(
                    "memberships (namespace, principal, role, created_at) VALUES (?, ?, ?, ?)",
                    "namespace, principal",
                    &["role"],
                );
                sqlx::query(&self.q(&up))
                    .bind(ns)
                    .bind(principal)
                    .bind(role)
                    .bind(now_ms())
                    .execute(&self.write)
                    .await?
            }
            None => {
                sqlx::query(&self.q("DELETE FROM memberships WHERE namespace = ? AND principal = ?"))
                    .bind(ns)
                    .bind(principal)
                    .execute(&self.write)
                    .await?
            }
        };
        self.synced(Ok(done.rows_affected() > 0)).await
    }

    async fn namespace_public(&self, ns: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(&self.q("SELECT visibility FROM namespaces WHERE name = ?"))
            .bind(ns)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<String, _>(0)? == "public",
            None => false,
        })
    }

    async fn set_namespace_public(&self, ns: &str, public: bool) -> Result<(), StoreError> {
        let up = self.dialect.upsert(
            "namespaces (name, visibility, updated_at) VALUES (?, ?, ?)",
            "name",
            &["visibility", "updated_at"],
        );
        sqlx::query(&self.q(&up))
            .bind(ns)
            .bind(if public { "public" } else { "private" })
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn public_namespaces(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM namespaces WHERE visibility = 'public' ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    async fn audit_add(&self, a: &AuditRecord) -> Result<(), StoreError> {
        sqlx::query(&self.q(
            "INSERT INTO audit (at, actor, action, target, namespace, remote, outcome, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(a.at)
        .bind(&a.actor)
        .bind(&a.action)
        .bind(&a.target)
        .bind(a.namespace.as_deref())
        .bind(a.remote.as_deref())
        .bind(&a.outcome)
        .bind(a.detail.as_deref())
        .execute(&self.write)
        .await?;
        self.synced(Ok(())).await
    }

    async fn audit(&self, f: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql =
            String::from("SELECT at, actor, action, target, namespace, remote, outcome, detail FROM audit WHERE 1 = 1");
        if f.namespace.is_some() {
            sql.push_str(" AND namespace = ?");
        }
        if f.actor.is_some() {
            sql.push_str(" AND actor = ?");
        }
        if f.since.is_some() {
            sql.push_str(" AND at >= ?");
        }
        if f.until.is_some() {
            sql.push_str(" AND at <= ?");
        }
        sql.push_str(&format!(" ORDER BY at, id LIMIT {limit}"));
        let sql = self.q(&sql);
        let mut query = sqlx::query(&sql);
        if let Some(ns) = &f.namespace {
            query = query.bind(ns.as_str());
        }
        if let Some(a) = &f.actor {
            query = query.bind(a.as_str());
        }
        if let Some(s) = f.since {
            query = query.bind(s);
        }
        if let Some(u) = f.until {
            query = query.bind(u);
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    at: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: long_text(r, 3)?.unwrap_or_default(),
                    namespace: r.try_get(4)?,
                    remote: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                    detail: long_text(r, 7)?,
                })
            })
            .collect()
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(&self.q("SELECT value FROM settings WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => long_text(&r, 0)?,
            None => None,
        })
    }

    async fn setting_init(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let ins = self.dialect.insert_ignore("settings (name, value) VALUES (?, ?)");
        sqlx::query(&self.q(&ins))
            .bind(name)
            .bind(value)
            .execute(&self.write)
            .await?;
        let row = sqlx::query(&self.q("SELECT value FROM settings WHERE name = ?"))
            .bind(name)
            .fetch_one(&self.write)
            .await?;
        self.synced(Ok(long_text(&row, 0)?.unwrap_or_default())).await
    }
}

#[async_trait]
impl GcStore for SqlStore {
    async fn gc_repositories(&self) -> Result<Vec<GcRepository>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM repositories ORDER BY id")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(GcRepository {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn gc_snapshot(&self, repo_id: i64) -> Result<GcSnapshot, StoreError> {
        let begin = match self.dialect {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Dialect::MySql => "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        };
        let mut tx = self.read.begin_with(begin).await?;
        let rows = sqlx::query(&self.q("SELECT rm.digest, m.size, rm.created_at, m.subject, \
             (SELECT COUNT(*) FROM tags t WHERE t.repo_id = rm.repo_id AND t.digest = rm.digest) \
             FROM repo_manifests rm JOIN manifests m ON m.digest = rm.digest WHERE rm.repo_id = ?"))
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        let manifests = rows
            .iter()
            .map(|r| {
                Ok(GcManifest {
                    digest: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    created_at: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    tagged: r.try_get::<i64, _>(4)? > 0,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows = sqlx::query(&self.q("SELECT mr.digest, mr.child, mr.kind FROM repo_manifests rm \
             JOIN manifest_refs mr ON mr.digest = rm.digest WHERE rm.repo_id = ?"))
        .bind(repo_id)
        .fetch_all(&mut *tx)
        .await?;
        let refs = rows
            .iter()
            .map(|r| {
                Ok(GcRef {
                    parent: r.try_get(0)?,
                    child: r.try_get(1)?,
                    manifest: r.try_get::<String, _>(2)? == "manifest",
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows = sqlx::query(&self.q("SELECT digest, created_at FROM repo_blobs WHERE repo_id = ?"))
            .bind(repo_id)
            .fetch_all(&mut *tx)
            .await?;
        let blobs = rows
            .iter()
            .map(|r| {
                Ok(GcBlobLink {
                    digest: r.try_get(0)?,
                    created_at: r.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.rollback().await?;
        Ok(GcSnapshot { manifests, refs, blobs })
    }

    async fn gc_remove_manifest(
        &self,
        repo: &GcRepository,
        digest: &str,
        young_since: i64,
    ) -> Result<GcOutcome, StoreError> {
        self.gc_guarded(|| Box::pin(self.gc_remove_manifest_once(repo, digest, young_since)))
            .await
    }

    async fn gc_unlink_blob(
        &self,
        repo: &GcRepository,
        digest: &str,
        linked_before: i64,
    ) -> Result<GcOutcome, StoreError> {
        self.gc_guarded(|| Box::pin(self.gc_unlink_blob_once(repo, digest, linked_before)))
            .await
    }

    async fn gc_orphan_manifests(&self, after: &str, limit: u32) -> Result<Vec<GcItem>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT m.digest, m.size FROM manifests m WHERE m.digest > ? \
             AND NOT EXISTS (SELECT 1 FROM repo_manifests rm WHERE rm.digest = m.digest) \
             ORDER BY m.digest LIMIT ?"))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        gc_items(&rows)
    }

    async fn gc_delete_manifest(&self, digest: &str) -> Result<GcOutcome, StoreError> {
        self.gc_guarded(|| Box::pin(self.gc_delete_manifest_once(digest))).await
    }

    async fn gc_orphan_blobs(&self, before: i64, after: &str, limit: u32) -> Result<Vec<GcItem>, StoreError> {
        let rows = sqlx::query(&self.q(
            "SELECT b.digest, b.size FROM blobs b WHERE b.digest > ? AND b.created_at < ? \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest) \
             ORDER BY b.digest LIMIT ?",
        ))
        .bind(after)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        gc_items(&rows)
    }

    async fn gc_delete_blob(&self, digest: &str, before: i64) -> Result<GcOutcome, StoreError> {
        self.gc_guarded(|| {
            Box::pin(async move {
                // One statement: a link committed before it is seen (or, racing it, trips
                // the foreign key), so a blob a push just linked is never deleted.
                let res = sqlx::query(&self.q("DELETE FROM blobs WHERE digest = ? AND created_at < ? \
                     AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo_blobs.digest = blobs.digest)"))
                .bind(digest)
                .bind(before)
                .execute(&self.write)
                .await?;
                Ok(if res.rows_affected() > 0 {
                    GcOutcome::Removed
                } else {
                    GcOutcome::Kept
                })
            })
        })
        .await
    }

    async fn gc_blob(&self, digest: &str) -> Result<Option<GcBlobRow>, StoreError> {
        let row = sqlx::query(&self.q("SELECT size, created_at FROM blobs WHERE digest = ?"))
            .bind(digest)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(GcBlobRow {
            size: row.try_get::<i64, _>(0)? as u64,
            created_at: row.try_get(1)?,
        }))
    }

    async fn gc_manifest_holders(&self, digest: &str) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT repo_id FROM repo_manifests WHERE digest = ?"))
            .bind(digest)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn gc_blob_holders(&self, digest: &str) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(&self.q("SELECT repo_id FROM repo_blobs WHERE digest = ?"))
            .bind(digest)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    async fn gc_record_run(&self, freed_bytes: u64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        self.event(
            &mut tx,
            Event {
                kind: "gc.run",
                size: Some(freed_bytes),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        self.synced(Ok(())).await
    }
}

/// How many manifests the re-check of one removal walks up through (subjects, index parents)
/// before it gives up and keeps the manifest.
const GC_WALK_LIMIT: usize = 10_000;

fn user_row(r: &sqlx::any::AnyRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: r.try_get(0)?,
        password_hash: long_text(r, 1)?.unwrap_or_default(),
        admin: r.try_get::<i64, _>(2)? != 0,
        disabled: r.try_get::<i64, _>(3)? != 0,
        created_at: r.try_get(4)?,
    })
}

fn list(s: Option<String>) -> Vec<String> {
    s.unwrap_or_default()
        .split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn robot_row(r: &sqlx::any::AnyRow) -> Result<RobotRecord, StoreError> {
    Ok(RobotRecord {
        name: r.try_get(0)?,
        secret_hash: long_text(r, 1)?.unwrap_or_default(),
        namespaces: list(long_text(r, 2)?),
        actions: list(long_text(r, 3)?),
        expires_at: r.try_get(4)?,
        disabled: r.try_get::<i64, _>(5)? != 0,
        created_at: r.try_get(6)?,
    })
}

fn pairs(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(String, String)>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect()
}

fn gc_items(rows: &[sqlx::any::AnyRow]) -> Result<Vec<GcItem>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(GcItem {
                digest: r.try_get(0)?,
                size: r.try_get::<i64, _>(1)? as u64,
            })
        })
        .collect()
}

/// A manifest as a removal re-check reads it, under its row lock.
struct GcNode {
    created_at: i64,
    tags: i64,
    subject: Option<String>,
}

/// Garbage collection's guarded removals: each runs in one transaction that locks the row it
/// removes before it reads anything, so it reads every push that committed before the lock
/// and any push that needs the row waits for it (pushes lock what they rely on: see the
/// `GcStore` trait).
impl SqlStore {
    /// Run a removal; a deadlock or serialization failure runs it again (a few times), and a
    /// foreign key violation (a push re-created a reference at the same moment) or a conflict
    /// that persists leaves the row for the next collection.
    async fn gc_guarded<'s, F>(&'s self, mut attempt: F) -> Result<GcOutcome, StoreError>
    where
        F: FnMut() -> futures::future::BoxFuture<'s, Result<GcOutcome, StoreError>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(StoreError::Db(e)) if is_retryable(&e) && tries < 3 => tries += 1,
                Err(StoreError::Db(e))
                    if is_retryable(&e)
                        || matches!(&e, sqlx::Error::Database(d)
                            if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation) =>
                {
                    tracing::debug!(error = %e, "garbage collection: concurrent change, row left for next run");
                    return Ok(GcOutcome::Conflict);
                }
                other => return self.synced(other).await,
            }
        }
    }

    /// Begin a removal's transaction on `conn`. SQLite: BEGIN IMMEDIATE takes the write lock
    /// first, so no other writer (another process included) commits in between. MariaDB:
    /// READ COMMITTED, so each read sees what committed before it (at the default REPEATABLE
    /// READ, reads would keep the snapshot of the first one even after a later lock wait).
    /// PostgreSQL's default READ COMMITTED already does.
    async fn gc_begin<'c>(
        &self,
        conn: &'c mut sqlx::pool::PoolConnection<Any>,
    ) -> Result<Transaction<'c, Any>, StoreError> {
        let conn: &'c mut sqlx::AnyConnection = conn;
        Ok(match self.dialect {
            Dialect::Sqlite => sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?,
            Dialect::MySql => {
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                sqlx::Connection::begin(conn).await?
            }
            Dialect::Postgres => sqlx::Connection::begin(conn).await?,
        })
    }

    /// Lock the repo_manifests row (repo, digest); false when there is none.
    async fn gc_lock_manifest(
        &self,
        tx: &mut Transaction<'_, Any>,
        repo_id: i64,
        digest: &str,
    ) -> Result<bool, StoreError> {
        let res =
            sqlx::query(&self.q("UPDATE repo_manifests SET created_at = created_at WHERE repo_id = ? AND digest = ?"))
                .bind(repo_id)
                .bind(digest)
                .execute(&mut **tx)
                .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn gc_node(
        &self,
        tx: &mut Transaction<'_, Any>,
        repo_id: i64,
        digest: &str,
    ) -> Result<Option<GcNode>, StoreError> {
        let row = sqlx::query(&self.q("SELECT rm.created_at, \
             (SELECT COUNT(*) FROM tags t WHERE t.repo_id = rm.repo_id AND t.digest = rm.digest), m.subject \
             FROM repo_manifests rm JOIN manifests m ON m.digest = rm.digest \
             WHERE rm.repo_id = ? AND rm.digest = ?"))
        .bind(repo_id)
        .bind(digest)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(GcNode {
            created_at: row.try_get(0)?,
            tags: row.try_get(1)?,
            subject: row.try_get(2)?,
        }))
    }

    /// Indexes held by the repository that list `digest` as a child.
    async fn gc_parents(
        &self,
        tx: &mut Transaction<'_, Any>,
        repo_id: i64,
        digest: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&self.q(
            "SELECT mr.digest FROM manifest_refs mr JOIN repo_manifests rm ON rm.digest = mr.digest \
             WHERE rm.repo_id = ? AND mr.child = ? AND mr.kind = 'manifest'",
        ))
        .bind(repo_id)
        .bind(digest)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(|r| r.try_get(0).map_err(StoreError::from)).collect()
    }

    /// Whether locked manifest `digest` is garbage in the repository: untagged, older than
    /// `young_since`, no index of the repository lists it, and no chain of subjects and index
    /// parents leads up to a tagged or young manifest. Each manifest on the way is locked
    /// before it is read, so none of them can be tagged by a push in flight unnoticed.
    async fn gc_is_garbage(
        &self,
        tx: &mut Transaction<'_, Any>,
        repo_id: i64,
        digest: &str,
        young_since: i64,
    ) -> Result<bool, StoreError> {
        let Some(node) = self.gc_node(tx, repo_id, digest).await? else {
            return Ok(false);
        };
        if node.tags > 0 || node.created_at >= young_since {
            return Ok(false);
        }
        if !self.gc_parents(tx, repo_id, digest).await?.is_empty() {
            return Ok(false);
        }
        let mut seen = std::collections::HashSet::from([digest.to_string()]);
        let mut todo: Vec<String> = node.subject.into_iter().collect();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            if seen.len() > GC_WALK_LIMIT {
                return Ok(false);
            }
            if !self.gc_lock_manifest(tx, repo_id, &d).await? {
                continue; // not held here: no path through it
            }
            let Some(up) = self.gc_node(tx, repo_id, &d).await? else {
                continue;
            };
            if up.tags > 0 || up.created_at >= young_since {
                return Ok(false);
            }
            todo.extend(self.gc_parents(tx, repo_id, &d).await?);
            todo.extend(up.subject);
        }
        Ok(true)
    }

    async fn gc_remove_manifest_once(
        &self,
        repo: &GcRepository,
        digest: &str,
        young_since: i64,
    ) -> Result<GcOutcome, StoreError> {
        let mut conn = self.write.acquire().await?;
        let mut tx = self.gc_begin(&mut conn).await?;
        if !self.gc_lock_manifest(&mut tx, repo.id, digest).await? {
            tx.rollback().await?;
            return Ok(GcOutcome::Gone);
        }
        if !self.gc_is_garbage(&mut tx, repo.id, digest, young_since).await? {
            tx.rollback().await?;
            return Ok(GcOutcome::Kept);
        }
        sqlx::query(&self.q("DELETE FROM repo_manifests WHERE repo_id = ? AND digest = ?"))
            .bind(repo.id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        self.event(
            &mut tx,
            Event {
                kind: "manifest.delete",
                repo: &repo.name,
                digest: Some(digest),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(GcOutcome::Removed)
    }

    async fn gc_unlink_blob_once(
        &self,
        repo: &GcRepository,
        digest: &str,
        linked_before: i64,
    ) -> Result<GcOutcome, StoreError> {
        let mut conn = self.write.acquire().await?;
        let mut tx = self.gc_begin(&mut conn).await?;
        let locked =
            sqlx::query(&self.q("UPDATE repo_blobs SET created_at = created_at WHERE repo_id = ? AND digest = ?"))
                .bind(repo.id)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        if locked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(GcOutcome::Gone);
        }
        let row = sqlx::query(&self.q("SELECT rb.created_at, (SELECT COUNT(*) FROM manifest_refs mr \
             JOIN repo_manifests rm ON rm.digest = mr.digest \
             WHERE rm.repo_id = rb.repo_id AND mr.child = rb.digest) \
             FROM repo_blobs rb WHERE rb.repo_id = ? AND rb.digest = ?"))
        .bind(repo.id)
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        let keep = match &row {
            None => Some(GcOutcome::Gone),
            Some(row) => {
                let linked_at: i64 = row.try_get(0)?;
                let referenced: i64 = row.try_get(1)?;
                (linked_at >= linked_before || referenced > 0).then_some(GcOutcome::Kept)
            }
        };
        if let Some(outcome) = keep {
            tx.rollback().await?;
            return Ok(outcome);
        }
        sqlx::query(&self.q("DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?"))
            .bind(repo.id)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        self.event(
            &mut tx,
            Event {
                kind: "blob.delete",
                repo: &repo.name,
                digest: Some(digest),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(GcOutcome::Removed)
    }

    async fn gc_delete_manifest_once(&self, digest: &str) -> Result<GcOutcome, StoreError> {
        let mut conn = self.write.acquire().await?;
        let mut tx = self.gc_begin(&mut conn).await?;
        // A push that holds the manifest again either committed (seen here) or is in flight:
        // then its repo_manifests row trips the foreign key, on its side or on ours.
        let res = sqlx::query(&self.q("DELETE FROM manifests WHERE digest = ? \
             AND NOT EXISTS (SELECT 1 FROM repo_manifests rm WHERE rm.digest = manifests.digest)"))
        .bind(digest)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(GcOutcome::Kept);
        }
        sqlx::query(&self.q("DELETE FROM manifest_refs WHERE digest = ?"))
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(GcOutcome::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_store(dir: &std::path::Path, durable: bool) -> SqlStore {
        let url = format!("sqlite://{}", dir.join("meta.db").display());
        let store = SqlStore::connect(&url, durable).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    fn tickets(s: &SqlStore) -> u64 {
        s.group_sync.as_ref().map_or(0, |g| g.tickets())
    }

    /// With fsync on, every write of a push is reported only after a group sync (a ticket is
    /// taken for it); a lease is not synced.
    #[tokio::test]
    async fn durable_sqlite_writes_wait_for_the_group_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = sqlite_store(dir.path(), true).await;
        let before = tickets(&s);
        s.upload_create("u1", "r").await.unwrap();
        assert_eq!(tickets(&s), before + 1);
        let now = now_ms();
        assert!(s.upload_lock("u1", 0, None, "tok", now + 60_000, now).await.unwrap());
        assert_eq!(tickets(&s), before + 1, "a lease needs no sync");
        assert!(s.upload_complete("u1", "tok", "r", "sha256:aa", 3).await.unwrap());
        assert_eq!(tickets(&s), before + 2);
        let m = NewManifest {
            digest: "sha256:bb".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: b"{}".to_vec(),
            artifact_type: None,
            subject: None,
            annotations: None,
            blobs: vec!["sha256:aa".into()],
            manifests: vec![],
        };
        assert_eq!(
            s.manifest_put("r", &m, &["t".into()]).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(tickets(&s), before + 3);
        s.set_namespace_quota("r", Some(10)).await.unwrap();
        assert_eq!(tickets(&s), before + 4);
        let syncs = s.group_sync.as_ref().map_or(0, |g| g.syncs());
        assert!((1..=tickets(&s)).contains(&syncs));
        assert_eq!(
            s.manifest_by_tag("r", "t", false).await.unwrap().map(|m| m.digest),
            Some(m.digest)
        );
    }

    /// Without fsync there is no group sync; the in-place writes still land.
    #[tokio::test]
    async fn sqlite_without_fsync_has_no_group_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = sqlite_store(dir.path(), false).await;
        assert!(s.group_sync.is_none());
        s.link_blob("r", "sha256:aa", 3).await.unwrap();
        assert_eq!(s.repo_blob_size("r", "sha256:aa").await.unwrap(), Some(3));
    }

    /// A write in place that finds the database busy (the sqlx writer is in a transaction)
    /// runs through sqlx instead, which waits for the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_write_in_place_falls_back_to_sqlx() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(sqlite_store(dir.path(), true).await);
        let handed_on = || s.hot.as_ref().map_or(0, |w| w.handed_on_count());
        let before = handed_on();
        let tx = s.begin().await.unwrap();
        let linking = tokio::spawn({
            let s = s.clone();
            async move { s.link_blob("r", "sha256:aa", 3).await }
        });
        while handed_on() == before {
            tokio::task::yield_now().await;
        }
        assert!(!linking.is_finished());
        tx.commit().await.unwrap();
        linking.await.unwrap().unwrap();
        assert_eq!(s.repo_blob_size("r", "sha256:aa").await.unwrap(), Some(3));
    }
}
