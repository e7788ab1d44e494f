//! The blob store interface: one narrow trait, one implementation per backend.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use super::StoreError;
use crate::core::names::Digest;

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An inclusive byte range `start..=end` that the caller has already checked against the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn byte_count(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// Content-addressed blob storage plus the scratch space of upload sessions.
///
/// Committed blobs are immutable and named by digest; whether a repository may read one is
/// metadata, not the store's business. Upload ids are UUIDs minted by the core.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a committed blob, or `None` when it is not stored.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;
    /// Stream a committed blob, or one range of it.
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, StoreError>;
    /// Remove a committed blob (garbage collection only); absent blobs are not an error.
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Create empty upload data.
    async fn upload_create(&self, id: &str) -> Result<(), StoreError>;
    /// Bytes of upload data present (may exceed the acknowledged offset after a crash).
    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StoreError>;
    /// Start writing at `offset`; anything stored beyond it is discarded first.
    async fn upload_writer(&self, id: &str, offset: u64) -> Result<Box<dyn BlobWriter>, StoreError>;
    /// Read the first `len` bytes of upload data back (to rebuild a hash after a restart).
    async fn upload_read(&self, id: &str, len: u64) -> Result<ByteStream, StoreError>;
    /// Make the upload data durable and visible as the committed blob `digest`. When that blob
    /// is already stored, leave both as they are: the caller removes the upload data with
    /// [`BlobStore::upload_abort`] once metadata is committed.
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<(), StoreError>;
    /// Drop upload data; absent data is not an error.
    async fn upload_abort(&self, id: &str) -> Result<(), StoreError>;

    /// Readiness: the backend answers.
    async fn check(&self) -> Result<(), StoreError>;
}

/// Sequential writer of one upload's bytes.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError>;
    /// Flush everything written; returns the upload's total size.
    async fn finish(self: Box<Self>) -> Result<u64, StoreError>;
}
