//! The blob store interface: one narrow trait, one implementation per backend.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use super::StoreError;
use crate::oci::names::Digest;

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
    async fn upload_read(&self, id: &str, len: u64) -> Result<ByteStream, StoreError> {
        self.upload_read_range(id, 0, len).await
    }
    /// Read `len` bytes of upload data from `offset` on (the inspection of a finished upload
    /// reads only the parts it keeps); the stream fails when the data is shorter.
    async fn upload_read_range(&self, id: &str, offset: u64, len: u64) -> Result<ByteStream, StoreError>;
    /// Make the upload data durable and visible as the committed blob `digest`. When that blob
    /// is already stored, leave both as they are: the caller removes the upload data with
    /// [`BlobStore::upload_abort`] once metadata is committed.
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<(), StoreError>;
    /// Drop upload data; absent data is not an error.
    async fn upload_abort(&self, id: &str) -> Result<(), StoreError>;
    /// Ids of upload data last written before `before_ms` (ms since the epoch), at most
    /// `limit` of them: the expiry sweep removes those no session owns (left by a process that
    /// died during a monolithic or staged upload, which have no session row).
    async fn upload_list_stale(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Every committed blob with its size (a relay rebuilds its cache index from it at start).
    async fn committed(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        Err(StoreError::Other("this blob store cannot list its blobs".into()))
    }

    /// Readiness: the backend answers.
    async fn check(&self) -> Result<(), StoreError>;

    /// Bytes free for new blobs, where the backend can tell (a filesystem); `None` otherwise.
    async fn free_space(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// A URL where clients may fetch blob `digest` themselves (a presigned URL), when the
    /// backend and its configuration offer one; `None` means the bytes are served by us.
    async fn redirect_url(&self, _digest: &Digest) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    // Garbage collection removes bytes in two steps, so that an upload of the same digest
    // running at the same time can never lose them (the argument is in `core::gc`):
    // `trash` moves them out of the way, the collector re-checks the metadata, then either
    // `restore`s or `purge`s them. The contract every backend must keep:
    //
    // * after `trash` returns, `stat` reports the blob absent and `upload_commit` places new
    //   bytes at its final location as for a blob never stored;
    // * the trashed copy stays readable until `restore` or `purge` of its token, and is
    //   listed by `trashed` (a collector that stopped half-way is finished by the next one);
    // * none of the three ever touches bytes placed at the final location after the trash,
    //   except `restore`, which may replace them with the identical trashed content.
    //
    // The defaults refuse, and the collector then keeps every blob's bytes and metadata.

    /// Move committed blob `digest` out of its final location; returns the token naming the
    /// trashed copy, or `None` when the blob was not stored.
    async fn trash(&self, _digest: &Digest) -> Result<Option<String>, StoreError> {
        Err(StoreError::Other("this blob store cannot trash blobs".into()))
    }
    /// Put the trashed copy `token` back as blob `digest`, unless the blob is stored again
    /// already (then the trashed copy is dropped). An unknown token is not an error.
    async fn restore(&self, _digest: &Digest, _token: &str) -> Result<(), StoreError> {
        Err(StoreError::Other("this blob store cannot trash blobs".into()))
    }
    /// Delete the trashed copy `token` for good; an unknown token is not an error.
    async fn purge(&self, _token: &str) -> Result<(), StoreError> {
        Err(StoreError::Other("this blob store cannot trash blobs".into()))
    }
    /// Trashed copies still waiting for `restore` or `purge`, with their digests.
    async fn trashed(&self) -> Result<Vec<(Digest, String)>, StoreError> {
        Err(StoreError::Other("this blob store cannot trash blobs".into()))
    }
}

/// Sequential writer of one upload's bytes.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError>;
    /// Flush everything written; returns the upload's total size.
    async fn finish(self: Box<Self>) -> Result<u64, StoreError>;
}

/// Consecutive chunks of a body gathered until they are worth handing to another thread at
/// once; the chunks are shared, never copied.
#[derive(Default)]
pub struct ChunkBatch {
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl ChunkBatch {
    pub fn push(&mut self, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push(chunk);
    }

    /// Whether the batch holds at least `bytes` bytes or `chunks` chunks.
    pub fn reached(&self, bytes: usize, chunks: usize) -> bool {
        self.bytes >= bytes || self.chunks.len() >= chunks
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The chunks gathered so far, leaving the batch empty.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}
