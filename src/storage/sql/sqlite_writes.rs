//! The writes of a push on SQLite, run in place: opening an upload session, taking its lease,
//! advancing it, closing it into a blob link, linking a blob, storing a manifest and its tags.
//!
//! Through sqlx every statement is handed to the connection's worker thread and its result
//! handed back, two thread wake-ups per statement; a small push is about 35 statements. Here
//! a whole transaction runs on the calling thread, on one read-write connection of its own
//! with its statements prepared once, as [`super::sqlite_reads`] does for reads. The SQL is
//! the SQLite dialect of the statements in `sql.rs`, in the same order, so both paths leave
//! the same rows.
//!
//! A write never waits for the database here: the connection has no busy timeout (writes in
//! place queue on a mutex for each other's short transactions only). When the database is busy (the sqlx writer, or another process, is in a
//! transaction) or anything fails, the transaction is rolled back and the caller answers
//! `None`: the write then runs through sqlx, which waits for the lock, retries and reports
//! errors as every other write does. Durability is the caller's: the connection commits with
//! the same `synchronous` setting as the sqlx ones, and the caller waits for the group sync
//! ([`super::group_sync`]) before it reports the write.

use std::path::PathBuf;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::metrics::{metrics, OutcomeLabels};
use crate::storage::meta::{NewManifest, PutOutcome, UploadAdvance};

/// The outcome of a write in place: `None` when the caller should run it through sqlx.
type Write<T> = Option<T>;

pub(crate) struct SqliteWrites {
    path: PathBuf,
    /// `synchronous = FULL` (each commit syncs) rather than NORMAL.
    full_sync: bool,
    /// The connection, opened on first use (`None` until then or after it failed).
    conn: Mutex<Option<Connection>>,
    in_place: Counter,
    handed_on: Counter,
}

const EVENT: &str = "INSERT INTO events (kind, repository, digest, tag, media_type, size, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)";

impl SqliteWrites {
    pub fn new(path: PathBuf, full_sync: bool) -> Self {
        let counter = |outcome| {
            metrics()
                .sqlite_writes
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        };
        SqliteWrites {
            path,
            full_sync,
            conn: Mutex::new(None),
            in_place: counter("in_place"),
            handed_on: counter("sqlx"),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.busy_timeout(std::time::Duration::ZERO)?;
        // The database is in WAL mode already (the sqlx pools set it up before this opens).
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", if self.full_sync { "FULL" } else { "NORMAL" })?;
        Ok(conn)
    }

    /// Run `f` on the connection: in a write transaction (`BEGIN IMMEDIATE`) when `tx`, else
    /// as it is (one statement commits by itself).
    /// Each write logs one debug event (as sqlx logs its statements), in the caller's span.
    fn write<T>(&self, op: &'static str, tx: bool, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Write<T> {
        // Held for one short transaction that never waits for the database.
        let Ok(mut slot) = self.conn.lock() else {
            self.handed_on.inc();
            return None;
        };
        if slot.is_none() {
            match self.open() {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "no sqlite connection for a write in place");
                    self.handed_on.inc();
                    return None;
                }
            }
        }
        let conn = slot.as_mut()?;
        let result = if tx {
            conn.transaction_with_behavior(TransactionBehavior::Immediate)
                .and_then(|t| {
                    let v = f(&t)?;
                    t.commit()?;
                    Ok(v)
                })
        } else {
            f(conn)
        };
        match result {
            Ok(v) => {
                tracing::debug!(op, "sqlite write in place");
                self.in_place.inc();
                Some(v)
            }
            Err(e) => {
                if !is_busy(&e) {
                    tracing::debug!(error = %e, "sqlite write in place failed; writing through sqlx");
                }
                // A transaction still open (its rollback failed) must not be reused.
                if !conn.is_autocommit() {
                    *slot = None;
                }
                self.handed_on.inc();
                None
            }
        }
    }

    /// How many writes were handed to sqlx.
    #[cfg(test)]
    pub fn handed_on_count(&self) -> u64 {
        self.handed_on.get()
    }

    pub fn upload_create(&self, id: &str, repo: &str, now: i64) -> Write<()> {
        self.write("upload_create", false, |c| {
            c.prepare_cached("INSERT INTO uploads (id, repo, size, created_at, updated_at) VALUES (?, ?, 0, ?, ?)")?
                .execute((id, repo, now, now))?;
            Ok(())
        })
    }

    /// Take the lease of session `id` (see `upload_lock` in `sql.rs`).
    pub fn upload_lock(
        &self,
        id: &str,
        size: u64,
        previous: Option<&str>,
        token: &str,
        until: i64,
        now: i64,
    ) -> Write<bool> {
        self.write("upload_lock", false, |c| {
            let n = match previous {
                None => c
                    .prepare_cached(
                        "UPDATE uploads SET writer = ?, writer_until = ?, updated_at = ? \
                         WHERE id = ? AND size = ? AND writer IS NULL",
                    )?
                    .execute((token, until, now, id, size as i64))?,
                Some(prev) => c
                    .prepare_cached(
                        "UPDATE uploads SET writer = ?, writer_until = ?, updated_at = ? \
                         WHERE id = ? AND size = ? AND writer = ? AND writer_until < ?",
                    )?
                    .execute((token, until, now, id, size as i64, prev, now))?,
            };
            Ok(n == 1)
        })
    }

    pub fn upload_advance(&self, id: &str, token: &str, adv: &UploadAdvance<'_>, now: i64) -> Write<bool> {
        let data_id = (adv.data_id != id).then_some(adv.data_id);
        let sql = if adv.release {
            "UPDATE uploads SET size = ?, hash_state = ?, data_id = ?, updated_at = ?, writer = NULL, writer_until = 0 \
             WHERE id = ? AND writer = ? AND size = ?"
        } else {
            "UPDATE uploads SET size = ?, hash_state = ?, data_id = ?, updated_at = ? \
             WHERE id = ? AND writer = ? AND size = ?"
        };
        self.write("upload_advance", false, |c| {
            let n = c.prepare_cached(sql)?.execute((
                adv.to as i64,
                adv.hash_state,
                data_id,
                now,
                id,
                token,
                adv.from as i64,
            ))?;
            Ok(n == 1)
        })
    }

    /// Close session `id` held by `token` and link its blob (see `upload_complete_once`).
    pub fn upload_complete(&self, id: &str, token: &str, repo: &str, digest: &str, size: u64, now: i64) -> Write<bool> {
        self.write("upload_complete", true, |c| {
            let gone = c
                .prepare_cached("DELETE FROM uploads WHERE id = ? AND writer = ?")?
                .execute((id, token))?;
            if gone != 1 {
                return Ok(false);
            }
            link_blob(c, repo, digest, size, now)?;
            Ok(true)
        })
    }

    pub fn link_blob(&self, repo: &str, digest: &str, size: u64, now: i64) -> Write<()> {
        self.write("link_blob", true, |c| link_blob(c, repo, digest, size, now))
    }

    /// Store manifest `m` in `repo` under `tags` (see `manifest_put_once`).
    pub fn manifest_put(&self, repo: &str, m: &NewManifest, tags: &[String], now: i64) -> Write<PutOutcome> {
        self.write("manifest_put", true, |c| {
            let repo_id = ensure_repo(c, repo, now)?;
            let missing = absent(c, "SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?", repo_id, &m.blobs)?;
            if !missing.is_empty() {
                return Ok(PutOutcome::MissingBlobs(missing));
            }
            let missing = absent(
                c,
                "SELECT 1 FROM repo_manifests WHERE repo_id = ? AND digest = ?",
                repo_id,
                &m.manifests,
            )?;
            if !missing.is_empty() {
                return Ok(PutOutcome::MissingManifests(missing));
            }
            c.prepare_cached(
                "INSERT INTO manifests (digest, media_type, size, content, artifact_type, subject, annotations, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET created_at = excluded.created_at",
            )?
            .execute((
                &m.digest,
                &m.media_type,
                m.content.len() as i64,
                &m.content,
                m.artifact_type.as_deref(),
                m.subject.as_deref(),
                m.annotations.as_deref(),
                now,
            ))?;
            {
                let mut refs =
                    c.prepare_cached("INSERT INTO manifest_refs (digest, child, kind) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")?;
                for child in &m.blobs {
                    refs.execute((&m.digest, child, "blob"))?;
                }
                for child in &m.manifests {
                    refs.execute((&m.digest, child, "manifest"))?;
                }
            }
            c.prepare_cached(
                "INSERT INTO repo_manifests (repo_id, digest, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (repo_id, digest) DO UPDATE SET created_at = excluded.created_at",
            )?
            .execute((repo_id, &m.digest, now))?;
            let size = m.content.len() as i64;
            let mut event = c.prepare_cached(EVENT)?;
            if tags.is_empty() {
                event.execute((
                    "manifest.push",
                    repo,
                    &m.digest,
                    None::<&str>,
                    &m.media_type,
                    size,
                    now,
                ))?;
            }
            let mut tag_up = c.prepare_cached(
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )?;
            for tag in tags {
                tag_up.execute((repo_id, tag, &m.digest, now))?;
                event.execute(("manifest.push", repo, &m.digest, tag, &m.media_type, size, now))?;
            }
            Ok(PutOutcome::Stored)
        })
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Id of repository `name`, created if missing.
fn ensure_repo(c: &Connection, name: &str, now: i64) -> rusqlite::Result<i64> {
    c.prepare_cached("INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING")?
        .execute((name, now))?;
    c.prepare_cached("SELECT id FROM repositories WHERE name = ?")?
        .query_row([name], |r| r.get(0))
}

/// Those of `digests` for which `sql` (repo id, digest) finds no row.
fn absent(c: &Connection, sql: &str, repo_id: i64, digests: &[String]) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut missing = Vec::new();
    for d in digests {
        if stmt.query_row((repo_id, d), |_| Ok(())).optional()?.is_none() {
            missing.push(d.clone());
        }
    }
    Ok(missing)
}

/// Link blob `digest` into `repo` (see `link_blob_tx`): a re-push refreshes both rows'
/// `created_at`; a new link records a `blob.push` event.
fn link_blob(c: &Connection, repo: &str, digest: &str, size: u64, now: i64) -> rusqlite::Result<()> {
    let repo_id = ensure_repo(c, repo, now)?;
    c.prepare_cached(
        "INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) \
         ON CONFLICT (digest) DO UPDATE SET created_at = excluded.created_at",
    )?
    .execute((digest, size as i64, now))?;
    let refreshed = c
        .prepare_cached("UPDATE repo_blobs SET created_at = ? WHERE repo_id = ? AND digest = ?")?
        .execute((now, repo_id, digest))?;
    let linked = refreshed == 0
        && c.prepare_cached(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )?
        .execute((repo_id, digest, now))?
            > 0;
    if linked {
        c.prepare_cached(EVENT)?
            .execute(("blob.push", repo, digest, None::<&str>, None::<&str>, size as i64, now))?;
    }
    Ok(())
}
