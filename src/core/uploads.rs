//! Blobs and upload sessions: streaming writes that are hashed on the way in, verified against
//! the claimed digest, made durable by the blob store, and only then recorded in metadata.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use super::names::{Digest, RepoName};
use super::Registry;
use crate::error::{Error, Result};
use crate::storage::{ByteRange, ByteStream, ChunkBatch};

/// A blob as served: its size and the bytes (all of them or the requested range).
pub struct BlobBody {
    pub size: u64,
    pub range: Option<ByteRange>,
    pub stream: ByteStream,
}

/// A client's byte range: `From(start, end)` (`bytes=start-end`, end optional) or
/// `Suffix(n)` (`bytes=-n`, the last n bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// Where an upload session stands.
pub struct UploadState {
    pub id: String,
    pub offset: u64,
}

/// Other consumers of a body's bytes (hash threads, inspection): chunks are gathered into
/// batches of at least `batch` bytes before they are handed over, so a thread wakes once per
/// batch rather than once per network read. A batch shares the chunks (no copy).
pub struct Taps {
    senders: Vec<tokio::sync::mpsc::Sender<Batch>>,
    pending: ChunkBatch,
    batch: usize,
}

/// Consecutive chunks of a body, shared by every tap.
pub type Batch = std::sync::Arc<Vec<Bytes>>;

impl Taps {
    pub fn new(senders: Vec<tokio::sync::mpsc::Sender<Batch>>, batch: usize) -> Self {
        Taps {
            senders,
            pending: ChunkBatch::default(),
            batch,
        }
    }

    pub async fn feed(&mut self, chunk: &Bytes) -> std::result::Result<(), ()> {
        self.pending.push(chunk.clone());
        if self.pending.reached(self.batch, usize::MAX) {
            return self.flush().await;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> std::result::Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let b: Batch = std::sync::Arc::new(self.pending.take());
        for s in &self.senders {
            s.send(b.clone()).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Close the channels: the consumers see the end of the bytes.
    pub fn close(self) {}
}

/// Upload data of a known digest and size, not yet a blob.
pub struct StagedBlob {
    id: String,
    pub digest: Digest,
    pub size: u64,
}

/// Outcome of a mount request.
pub enum Mount {
    Mounted,
    Upload(UploadState),
}

impl Registry {
    /// Size of a blob readable in `repo`.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .repo_blob_size(repo.as_str(), digest.as_str())
            .await?
            .ok_or(Error::BlobUnknown)
    }

    /// Open a blob readable in `repo`, whole or one range of it (checked here against its size).
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest, range: Option<RangeRequest>) -> Result<BlobBody> {
        let size = self.stat_blob(repo, digest).await?;
        let range = match range {
            None => None,
            Some(RangeRequest::From(start, _)) if start >= size => return Err(Error::RangeNotSatisfiable { size }),
            Some(RangeRequest::From(start, end)) => Some(ByteRange {
                start,
                end: end.unwrap_or(u64::MAX).min(size - 1),
            }),
            Some(RangeRequest::Suffix(n)) if n == 0 || size == 0 => return Err(Error::RangeNotSatisfiable { size }),
            Some(RangeRequest::Suffix(n)) => Some(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }),
        };
        let stream = self.blobs.get(digest, range).await.map_err(|e| {
            tracing::error!(%digest, error = %e, "blob recorded in metadata but not readable");
            Error::from(e)
        })?;
        Ok(BlobBody { size, range, stream })
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.ensure_deletes()?;
        if self.meta.unlink_blob(repo.as_str(), digest.as_str()).await? {
            Ok(())
        } else {
            Err(Error::BlobUnknown)
        }
    }

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadState> {
        self.check_quota(repo, &Digest::sha256(b""), 0).await?;
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        self.meta.upload_create(&id, repo.as_str()).await?;
        Ok(UploadState { id, offset: 0 })
    }

    /// Mount `digest` from repository `from` into `repo`, or open an upload when that is not possible.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<Mount> {
        if let Some(from) = from {
            if let Some(size) = self.meta.repo_blob_size(from.as_str(), digest.as_str()).await? {
                if self.blobs.stat(digest).await?.is_some() {
                    self.check_quota(repo, digest, size).await?;
                    self.meta.link_blob(repo.as_str(), digest.as_str(), size).await?;
                    return Ok(Mount::Mounted);
                }
            }
        }
        Ok(Mount::Upload(self.start_upload(repo).await?))
    }

    async fn session(&self, repo: &RepoName, id: &str) -> Result<u64> {
        let rec = self.meta.upload_get(id).await?.ok_or(Error::BlobUploadUnknown)?;
        if rec.repo != repo.as_str() {
            return Err(Error::BlobUploadUnknown);
        }
        Ok(rec.size)
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        let offset = self.session(repo, id).await?;
        Ok(UploadState {
            id: id.to_string(),
            offset,
        })
    }

    /// Hash state of upload `id` covering its first `offset` bytes.
    async fn hasher_at(&self, id: &str, offset: u64) -> Result<Sha256> {
        let cached = self.hashers.lock().ok().and_then(|mut m| m.remove(id));
        if let Some((at, h)) = cached {
            if at == offset {
                return Ok(h);
            }
        }
        let mut h = Sha256::new();
        if offset > 0 {
            let mut data = self.blobs.upload_read(id, offset).await?;
            while let Some(chunk) = data.next().await {
                h.update(chunk.map_err(crate::storage::StoreError::from)?);
            }
        }
        Ok(h)
    }

    fn keep_hasher(&self, id: &str, offset: u64, h: Sha256) {
        if let Ok(mut m) = self.hashers.lock() {
            m.insert(id.to_string(), (offset, h));
        }
    }

    /// Append `body` to upload `id`. `start` is where the client says the chunk begins
    /// (Content-Range), `len` how long it says it is.
    pub async fn append_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<UploadState>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let offset = self.session(repo, id).await?;
        if start.is_some_and(|s| s != offset) {
            return Err(Error::UploadOutOfOrder { offset });
        }
        let mut hasher = self.hasher_at(id, offset).await?;
        let written = self.write_body(id, offset, &mut hasher, body).await?;
        if len.is_some_and(|l| l != written) {
            return Err(Error::SizeInvalid(format!(
                "chunk was {written} bytes, not the {} announced",
                len.unwrap_or(0)
            )));
        }
        let new = offset + written;
        if !self.meta.upload_advance(id, offset, new).await? {
            // A concurrent request on the same session moved it: this chunk does not count.
            let offset = self.session(repo, id).await?;
            return Err(Error::UploadOutOfOrder { offset });
        }
        self.keep_hasher(id, new, hasher);
        Ok(UploadState {
            id: id.to_string(),
            offset: new,
        })
    }

    /// Stream `body` into upload data at `offset`, hashing it; returns the bytes written.
    async fn write_body<S, E>(&self, id: &str, offset: u64, hasher: &mut Sha256, mut body: S) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut writer = self.blobs.upload_writer(id, offset).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Body(format!("reading request body: {e}")))?;
            if chunk.is_empty() {
                continue;
            }
            hasher.update(&chunk);
            written += chunk.len() as u64;
            writer.write(chunk).await?;
        }
        writer.finish().await?;
        Ok(written)
    }

    /// Close upload `id` with its last chunk (possibly empty) and check it against `digest`.
    pub async fn finish_upload<S, E>(&self, repo: &RepoName, id: &str, digest: &Digest, body: Option<S>) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut offset = self.session(repo, id).await?;
        let mut hasher = self.hasher_at(id, offset).await?;
        if let Some(body) = body {
            offset += self.write_body(id, offset, &mut hasher, body).await?;
        }
        let actual = Digest::sha256_of_hex(&hex::encode(hasher.finalize()));
        if &actual != digest {
            self.cancel_upload_data(id).await?;
            return Err(Error::DigestInvalid(format!(
                "content has digest {actual}, not {digest}"
            )));
        }
        self.commit_blob(repo, id, digest, offset, true).await
    }

    /// Make verified upload data the blob `digest`, readable in `repo`; `session` says whether
    /// an upload session record is to be closed too.
    ///
    /// The order makes a concurrent garbage collection harmless: place the bytes (the store
    /// keeps the upload data when the blob is already there), record the metadata, then check
    /// the bytes are still in place (a collector may have just removed an unreferenced copy)
    /// and place them again if not; only then drop the upload data.
    async fn commit_blob(&self, repo: &RepoName, id: &str, digest: &Digest, size: u64, session: bool) -> Result<()> {
        self.check_quota(repo, digest, size).await?;
        self.blobs.upload_commit(id, digest).await?;
        if session {
            self.meta
                .upload_complete(id, repo.as_str(), digest.as_str(), size)
                .await?;
        } else {
            self.meta.link_blob(repo.as_str(), digest.as_str(), size).await?;
        }
        if self.blobs.stat(digest).await?.is_none() {
            // A collection removed an unreferenced copy meanwhile. When this upload's own data
            // was the copy placed, nothing is left to place again: the client pushes anew.
            if self.blobs.upload_size(id).await?.is_none() {
                return Err(Error::BlobUploadInvalid(format!(
                    "{digest} was garbage-collected while it was being committed; push it again"
                )));
            }
            self.blobs.upload_commit(id, digest).await?;
        }
        self.blobs.upload_abort(id).await?;
        Ok(())
    }

    /// Push a whole blob in one request (`POST ?digest=`).
    pub async fn put_blob<S, E>(&self, repo: &RepoName, digest: &Digest, body: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        let mut hasher = Sha256::new();
        let result: Result<()> = async {
            let size = self.write_body(&id, 0, &mut hasher, body).await?;
            let actual = Digest::sha256_of_hex(&hex::encode(hasher.finalize()));
            if &actual != digest {
                return Err(Error::DigestInvalid(format!(
                    "content has digest {actual}, not {digest}"
                )));
            }
            self.commit_blob(repo, &id, digest, size, false).await
        }
        .await;
        if result.is_err() {
            if let Err(abort) = self.blobs.upload_abort(&id).await {
                tracing::warn!(error = %abort, "could not remove failed upload data");
            }
        }
        result
    }

    /// Stream a body of unknown digest into new upload data, hashing it with sha256 and
    /// handing every chunk to `taps` too (other hashes, inspection), each of which may be
    /// slower than the disk: a full tap holds the body back. Nothing is readable until
    /// [`Self::commit_staged`]; [`Self::discard_staged`] removes the data.
    pub async fn stage_blob<S, E>(&self, mut body: S, mut taps: Option<&mut Taps>) -> Result<StagedBlob>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        let staged = async {
            let mut hasher = Sha256::new();
            let mut writer = self.blobs.upload_writer(&id, 0).await?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Body(format!("reading request body: {e}")))?;
                if chunk.is_empty() {
                    continue;
                }
                if let Some(t) = taps.as_deref_mut() {
                    t.feed(&chunk)
                        .await
                        .map_err(|_| Error::Body("content inspection stopped early".into()))?;
                }
                hasher.update(&chunk);
                size += chunk.len() as u64;
                writer.write(chunk).await?;
            }
            writer.finish().await?;
            if let Some(t) = taps.as_deref_mut() {
                t.flush()
                    .await
                    .map_err(|_| Error::Body("content inspection stopped early".into()))?;
            }
            Ok(StagedBlob {
                id: id.clone(),
                digest: Digest::sha256_of_hex(&hex::encode(hasher.finalize())),
                size,
            })
        }
        .await;
        if staged.is_err() {
            if let Err(e) = self.blobs.upload_abort(&id).await {
                tracing::warn!(error = %e, "could not remove failed upload data");
            }
        }
        staged
    }

    /// Make staged data the blob it hashed to, readable in `repo` (quota checked).
    pub async fn commit_staged(&self, repo: &RepoName, staged: &StagedBlob) -> Result<()> {
        let done = self
            .commit_blob(repo, &staged.id, &staged.digest, staged.size, false)
            .await;
        if done.is_err() {
            self.discard_staged(staged).await;
        }
        done
    }

    /// Make upload session `id` (already verified to hash to `digest`) the blob `digest` and
    /// close the session.
    pub(crate) async fn commit_session(&self, repo: &RepoName, id: &str, digest: &Digest, size: u64) -> Result<()> {
        if let Ok(mut m) = self.hashers.lock() {
            m.remove(id);
        }
        self.commit_blob(repo, id, digest, size, true).await
    }

    /// The bytes of upload session `id` so far.
    pub(crate) async fn session_bytes(&self, repo: &RepoName, id: &str) -> Result<(u64, crate::storage::ByteStream)> {
        let size = self.session(repo, id).await?;
        Ok((size, self.blobs.upload_read(id, size).await?))
    }

    pub async fn discard_staged(&self, staged: &StagedBlob) {
        if let Err(e) = self.blobs.upload_abort(&staged.id).await {
            tracing::warn!(error = %e, "could not remove staged upload data");
        }
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.session(repo, id).await?;
        self.cancel_upload_data(id).await
    }

    async fn cancel_upload_data(&self, id: &str) -> Result<()> {
        if let Ok(mut m) = self.hashers.lock() {
            m.remove(id);
        }
        self.meta.upload_delete(id).await?;
        self.blobs.upload_abort(id).await?;
        Ok(())
    }

    /// Remove upload sessions idle for longer than the configured expiry; returns how many.
    pub async fn expire_uploads(&self) -> Result<usize> {
        let cutoff = crate::storage::now_ms() - (self.config.upload_expiry_secs as i64).saturating_mul(1000);
        let ids = self.meta.uploads_idle_since(cutoff).await?;
        for id in &ids {
            self.cancel_upload_data(id).await?;
        }
        Ok(ids.len())
    }
}
