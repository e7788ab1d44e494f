//! The two storage interfaces the core reaches storage through, and their backends.
//!
//! * [`BlobStore`]: content-addressed bytes (layers, configs, disk images) and in-progress
//!   upload data. Backends: filesystem ([`fs::FsBlobStore`]) and S3 ([`s3::S3BlobStore`]).
//! * Metadata, one trait per role ([`meta`]): [`RegistryStore`] (repositories, which blobs
//!   each may read, manifests, tags, upload sessions), [`AccountStore`] (users, robots,
//!   members, audit), [`GcStore`] (garbage collection), [`CatalogStore`] (the catalog) and
//!   [`JobStore`] (durable jobs, cluster-wide leases and event outbox cursors, [`jobs`]),
//!   [`VimStore`] (registered VIMs and what each holds) and [`DistributionStore`]
//!   (distribution jobs and their targets, [`vims`]). [`MetadataStore`] is the first four at
//!   once, for wiring. One SQL implementation
//!   ([`sql::SqlStore`]) serves SQLite, PostgreSQL and MariaDB.

pub mod blob;
pub mod catalog;
pub mod fs;
pub mod instrumented;
pub mod jobs;
pub mod meta;
pub mod s3;
pub mod sql;
pub mod vims;

pub use blob::{BlobStore, BlobWriter, ByteRange, ByteStream, ChunkBatch};
pub use catalog::CatalogStore;
pub use jobs::JobStore;
pub use meta::{AccountStore, GcStore, MetadataStore, RegistryStore};
pub use vims::{DistributionStore, VimStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("s3: {message}")]
    S3 { kind: StoreErrorKind, message: String },
    #[error("{0}")]
    Other(String),
}

/// What a storage failure means for the caller: retries, statuses and messages are decided
/// by kind, never by matching message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object or row is not there.
    NotFound,
    /// A concurrent change won (a conditional write's precondition failed).
    Conflict,
    /// Worth retrying: a timeout, a dropped connection, a deadlock, a throttled request.
    Transient,
    /// The disk, bucket or database has no room left.
    Full,
    Other,
}

impl StoreError {
    /// An S3 failure of a known kind.
    pub fn s3(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError::S3 {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Io(e) => io_kind(e),
            StoreError::Db(e) => db_kind(e),
            StoreError::Migrate(_) | StoreError::Other(_) => StoreErrorKind::Other,
            StoreError::S3 { kind, .. } => *kind,
        }
    }

    /// Whether it was the blob store (files, S3) rather than the database that failed.
    pub fn is_blob_store(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::S3 { .. })
    }
}

fn io_kind(e: &std::io::Error) -> StoreErrorKind {
    use std::io::ErrorKind as K;
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return StoreErrorKind::Full;
    }
    match e.kind() {
        K::NotFound => StoreErrorKind::NotFound,
        K::StorageFull | K::QuotaExceeded => StoreErrorKind::Full,
        K::TimedOut | K::Interrupted | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::WouldBlock => {
            StoreErrorKind::Transient
        }
        _ => match e.get_ref().and_then(|inner| inner.downcast_ref::<std::io::Error>()) {
            Some(inner) => io_kind(inner),
            None => StoreErrorKind::Other,
        },
    }
}

fn db_kind(e: &sqlx::Error) -> StoreErrorKind {
    match e {
        sqlx::Error::RowNotFound => StoreErrorKind::NotFound,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => StoreErrorKind::Transient,
        sqlx::Error::Io(io) => match io_kind(io) {
            StoreErrorKind::Full => StoreErrorKind::Full,
            _ => StoreErrorKind::Transient,
        },
        // The driver knows its own unique-key codes (MariaDB reports SQLSTATE 23000 for
        // several constraints, so the code alone does not tell).
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreErrorKind::Conflict,
        sqlx::Error::Database(d) => {
            let code = d.code();
            match code.as_deref().unwrap_or_default() {
                // Serialization failure, deadlock (PostgreSQL; MariaDB 1213, lock wait 1205),
                // SQLite busy/locked.
                "40001" | "40P01" | "1213" | "1205" | "5" | "6" | "517" => StoreErrorKind::Transient,
                // The server went away or is full of connections: PostgreSQL class 08, admin or
                // crash shutdown 57P01-57P03, too many connections 53300; MariaDB 1040.
                c if c.starts_with("08") => StoreErrorKind::Transient,
                "57P01" | "57P02" | "57P03" | "53300" | "1040" => StoreErrorKind::Transient,
                // Disk full: PostgreSQL 53100, MariaDB 1021 / 1114, SQLite SQLITE_FULL.
                "53100" | "1021" | "1114" | "13" => StoreErrorKind::Full,
                "23505" | "1062" | "2067" | "1555" => StoreErrorKind::Conflict,
                _ => StoreErrorKind::Other,
            }
        }
        _ => StoreErrorKind::Other,
    }
}

/// Milliseconds since the Unix epoch: the one time representation stored in metadata.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time stored as ms since the epoch, as RFC 3339 UTC (how the APIs show times).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
