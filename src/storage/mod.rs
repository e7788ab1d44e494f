//! The two storage interfaces the core reaches storage through, and their backends.
//!
//! * [`BlobStore`]: content-addressed bytes (layers, configs, disk images) and in-progress
//!   upload data. Backends: filesystem ([`fs::FsBlobStore`]) and S3 ([`s3::S3BlobStore`]).
//! * [`MetadataStore`]: everything else (repositories, which blobs each may read, manifests,
//!   tags, upload sessions, events). One SQL implementation ([`sql::SqlStore`]) serves SQLite,
//!   PostgreSQL and MariaDB.

pub mod blob;
pub mod fs;
pub mod meta;
pub mod s3;
pub mod sql;

pub use blob::{BlobStore, BlobWriter, ByteRange, ByteStream};
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
