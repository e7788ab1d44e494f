//! The two storage interfaces the core reaches storage through, and their backends.
//!
//! * [`BlobStore`]: content-addressed bytes (layers, configs, disk images) and in-progress
//!   upload data. Backends: filesystem ([`fs::FsBlobStore`]) and S3 ([`s3::S3BlobStore`]).
//! * [`MetadataStore`]: everything else (repositories, which blobs each may read, manifests,
//!   tags, upload sessions, events). One SQL implementation ([`sql::SqlStore`]) serves SQLite,
//!   PostgreSQL and MariaDB.

pub mod blob;
pub mod catalog;
pub mod fs;
pub mod meta;
pub mod s3;
pub mod sql;

pub use blob::{BlobStore, BlobWriter, ByteRange, ByteStream, ChunkBatch};
pub use catalog::CatalogStore;
pub use meta::MetadataStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("s3: {0}")]
    S3(String),
    #[error("{0}")]
    Other(String),
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
