//! The hottest registry reads on SQLite, run in place: a manifest by tag or digest, a blob's
//! size in a repository, a page of tags or repositories, a namespace's quota (every push checks it), an upload session (each chunk of a
//! push reads its session; every commit is visible to the next statement of any connection).
//!
//! sqlx runs every SQLite statement on a thread of its own per connection and hands the rows
//! back through channels: two thread wake-ups per query, which cost more than the query
//! itself (a profile of manifest GETs put 38% of the server's CPU on sqlx's worker threads,
//! most of it waking and parking). These reads instead run on the calling thread, on a small
//! pool of read-only connections to the same database file with their statements prepared
//! once. Each statement reads one consistent WAL snapshot, as sqlx's reads do.
//!
//! A read never waits here: the connections have no busy timeout, and a read that finds the
//! database busy (rare in WAL mode: the log being reset or recovered), or fails in any other
//! way, answers `None`, and the caller runs it through sqlx instead, which waits, retries and
//! reports errors as every other query does.

use std::path::PathBuf;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::metrics::{metrics, OutcomeLabels};

use crate::storage::meta::{ManifestRecord, UploadRecord};

/// Idle connections kept; more may be open for a moment under load.
const POOL: usize = 8;

pub(crate) struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    in_place: Counter,
    handed_on: Counter,
}

/// Whether `path` names a database file (not an in-memory database, which is not shared
/// between connections).
pub(crate) fn is_file(path: &std::path::Path) -> bool {
    let name = path.to_string_lossy();
    !(name.is_empty() || name == ":memory:" || name.starts_with("file::memory:"))
}

/// The outcome of a read in place: `None` when the caller should run it through sqlx.
type Read<T> = Option<T>;

impl SqliteReads {
    /// Reads of the database file `path`; `None` for an in-memory database (not shared between
    /// connections).
    pub fn new(path: PathBuf) -> Option<Self> {
        if !is_file(&path) {
            return None;
        }
        let counter = |outcome| metrics().sqlite_reads.get_or_create(&OutcomeLabels { outcome }).clone();
        Some(SqliteReads {
            path,
            idle: Mutex::new(Vec::new()),
            in_place: counter("in_place"),
            handed_on: counter("sqlx"),
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Run `f` on an idle connection (a new one when none is idle).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Read<T> {
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match taken {
            Some(c) => c,
            None => match self.open() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "no sqlite connection for a read in place");
                    self.handed_on.inc();
                    return None;
                }
            },
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL {
                idle.push(conn);
            }
        }
        match result {
            Ok(v) => {
                self.in_place.inc();
                Some(v)
            }
            Err(e) => {
                tracing::debug!(error = %e, "sqlite read in place failed; reading through sqlx");
                self.handed_on.inc();
                None
            }
        }
    }

    pub fn manifest(&self, sql: &str, repo: &str, key: &str, content: bool) -> Read<Option<ManifestRecord>> {
        self.read(|c| {
            c.prepare_cached(sql)?
                .query_row((repo, key), |row| {
                    Ok(ManifestRecord {
                        digest: row.get(0)?,
                        media_type: row.get(1)?,
                        size: row.get::<_, i64>(2)? as u64,
                        content: if content { row.get(3)? } else { Vec::new() },
                    })
                })
                .optional()
        })
    }

    pub fn repo_blob_size(&self, sql: &str, repo: &str, digest: &str) -> Read<Option<u64>> {
        self.read(|c| {
            c.prepare_cached(sql)?
                .query_row((repo, digest), |row| row.get::<_, i64>(0))
                .optional()
                .map(|s| s.map(|s| s as u64))
        })
    }

    /// A page of names from `sql` (parameters: the key, `last`, the limit; or `last` and the
    /// limit when `key` is `None`).
    pub fn names(&self, sql: &str, key: Option<&str>, last: &str, limit: u32) -> Read<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let limit = i64::from(limit);
            let mut rows = match key {
                Some(k) => stmt.query((k, last, limit))?,
                None => stmt.query((last, limit))?,
            };
            let mut names = Vec::new();
            while let Some(row) = rows.next()? {
                names.push(row.get(0)?);
            }
            Ok(names)
        })
    }

    /// An upload session by id (`sql` selects the columns of [`UploadRecord`] in order).
    pub fn upload(&self, sql: &str, id: &str) -> Read<Option<UploadRecord>> {
        self.read(|c| {
            c.prepare_cached(sql)?
                .query_row([id], |row| {
                    Ok(UploadRecord {
                        id: row.get(0)?,
                        repo: row.get(1)?,
                        size: row.get::<_, i64>(2)? as u64,
                        created_at: row.get(3)?,
                        updated_at: row.get(4)?,
                        writer: row.get(5)?,
                        writer_until: row.get(6)?,
                        hash_state: row.get(7)?,
                        data_id: row.get(8)?,
                    })
                })
                .optional()
        })
    }

    /// The nullable integer `sql` (one parameter) answers, `None` when no row does.
    pub fn nullable_int(&self, sql: &str, key: &str) -> Read<Option<Option<i64>>> {
        self.read(|c| c.prepare_cached(sql)?.query_row([key], |row| row.get(0)).optional())
    }

    /// Whether a row answers `sql` (one parameter).
    pub fn exists(&self, sql: &str, key: &str) -> Read<bool> {
        self.read(|c| c.prepare_cached(sql)?.exists([key]))
    }
}
