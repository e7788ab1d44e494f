//! Blobs and upload sessions: streaming writes that are hashed on the way in, verified against
//! the claimed digest, made durable by the blob store, and only then recorded in metadata.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest as _, Sha256, Sha512};

use super::names::{Digest, RepoName};
use super::Registry;
use crate::error::{Error, Result};
use crate::storage::meta::{UploadAdvance, UploadRecord};
use crate::storage::{ByteRange, ByteStream, ChunkBatch};

/// A request's exclusive hold on an upload session ([`Registry::lease_session`]): the
/// acknowledged size, the running hash of those bytes and the data they are in.
pub(crate) struct SessionLease {
    pub id: String,
    pub token: String,
    pub size: u64,
    pub hash: SessionHash,
    data: String,
}

fn lost_lease() -> Error {
    Error::BlobUploadInvalid(
        "this request lost the upload session to another one (its write lease lapsed or the session was closed)".into(),
    )
}

fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!(
        "a blob may have at most {limit} bytes (registry.max_blob_bytes)"
    ))
}

/// How many bytes a blob being pushed may reach: the configured maximum blob size, or what is
/// left of its namespace's quota when that is less.
pub(crate) struct Cap {
    bytes: u64,
    /// The namespace, its usage and quota, when the quota is what limits.
    quota: Option<(String, u64, u64)>,
}

impl Cap {
    /// Refuse a blob that would reach `total` bytes.
    fn check(&self, total: u64) -> Result<()> {
        if total <= self.bytes {
            return Ok(());
        }
        Err(match &self.quota {
            None => too_large(self.bytes),
            Some((ns, usage, quota)) => Error::Denied(format!(
                "namespace {ns:?} is over its storage quota: {usage} of {quota} bytes used, this blob needs {total} more"
            )),
        })
    }
}

/// The running hashes of an upload session, kept with it after every chunk so that whichever
/// replica serves the next chunk continues where the last one ended, without reading anything
/// back: always the sha256 (the blob's digest), and for a VM image upload also the sha512 and
/// md5 that Glance compares (`os_hash_value`, `checksum`).
#[derive(Clone)]
pub(crate) struct SessionHash {
    sha256: Sha256,
    extra: Option<Box<(Sha512, Md5)>>,
}

impl SessionHash {
    /// Hashes for a new session; `all`: also sha512 and md5.
    pub fn new(all: bool) -> Self {
        SessionHash {
            sha256: Sha256::new(),
            extra: all.then(|| Box::new((Sha512::new(), Md5::new()))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(e) = &mut self.extra {
            e.0.update(bytes);
            e.1.update(bytes);
        }
    }

    /// The digest of the bytes hashed so far.
    pub fn digest(&self) -> Digest {
        Digest::sha256_of_hex(&hex::encode(self.sha256.clone().finalize()))
    }

    /// The sha512 and md5 (hex) of the bytes hashed so far, when the session keeps them.
    pub fn sha512_md5(&self) -> Option<(String, String)> {
        let e = self.extra.as_ref()?;
        Some((hex::encode(e.0.clone().finalize()), hex::encode(e.1.clone().finalize())))
    }

    /// As text, to keep with the session: `sha256:<state>` or
    /// `sha256:<state>,sha512:<state>,md5:<state>` (each state in hex).
    fn save(&self) -> String {
        use sha2::digest::common::hazmat::SerializableState;
        let mut s = format!("sha256:{}", hex::encode(self.sha256.serialize()));
        if let Some(e) = &self.extra {
            s.push_str(&format!(
                ",sha512:{},md5:{}",
                hex::encode(e.0.serialize()),
                hex::encode(e.1.serialize())
            ));
        }
        s
    }

    fn restore(s: &str) -> Option<Self> {
        fn state<H: sha2::digest::common::hazmat::SerializableState>(hex_state: &str) -> Option<H> {
            use sha2::digest::common::hazmat::SerializedState;
            let bytes = hex::decode(hex_state).ok()?;
            H::deserialize(&SerializedState::<H>::try_from(bytes.as_slice()).ok()?).ok()
        }
        let mut parts = s.split(',');
        let sha256 = state::<Sha256>(parts.next()?.strip_prefix("sha256:")?)?;
        let extra = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(a), Some(b), None) => Some(Box::new((
                state::<Sha512>(a.strip_prefix("sha512:")?)?,
                state::<Md5>(b.strip_prefix("md5:")?)?,
            ))),
            _ => return None,
        };
        Some(SessionHash { sha256, extra })
    }
}

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

/// The bytes `range` asks for of a blob of `size` bytes (`None`: all of it), or 416.
pub fn resolve_range(size: u64, range: Option<RangeRequest>) -> Result<Option<ByteRange>> {
    Ok(match range {
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
    })
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
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .repo_blob_size(repo.as_str(), digest.as_str())
            .await?
            .ok_or(Error::BlobUnknown)
    }

    /// Where a client may fetch blob `digest` of `repo` from the store itself (a presigned URL,
    /// with `storage.redirect` on a store that offers them), once it is known to be readable
    /// in `repo`; `None`: the bytes are served by us.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let Some(url) = self.blobs.redirect_url(digest).await? else {
            return Ok(None);
        };
        self.stat_blob(repo, digest).await?;
        Ok(Some(url))
    }

    /// Open a blob readable in `repo`, whole or one range of it (checked here against its size).
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest, range: Option<RangeRequest>) -> Result<BlobBody> {
        let size = self.stat_blob(repo, digest).await?;
        let range = resolve_range(size, range)?;
        let stream = self.blobs.get(digest, range).await.map_err(|e| {
            tracing::error!(%digest, error = %e, "blob recorded in metadata but not readable");
            Error::from(e)
        })?;
        Ok(BlobBody { size, range, stream })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.ensure_deletes()?;
        if self.meta.unlink_blob(repo.as_str(), digest.as_str()).await? {
            Ok(())
        } else {
            Err(Error::BlobUnknown)
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadState> {
        self.ensure_room().await?;
        self.check_quota(repo, &Digest::sha256(b""), 0).await?;
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        self.meta.upload_create(&id, repo.as_str()).await?;
        Ok(UploadState { id, offset: 0 })
    }

    /// Open an upload session that also keeps the sha512 and md5 of its bytes (a VM image's
    /// resumable upload), so that its end reads nothing back for them.
    pub(crate) async fn start_upload_all_hashes(&self, repo: &RepoName) -> Result<UploadState> {
        let session = self.start_upload(repo).await?;
        let lease = self.lease_session(repo, &session.id).await?;
        let state = SessionHash::new(true).save();
        let advance = UploadAdvance {
            from: 0,
            to: 0,
            hash_state: &state,
            data_id: &lease.data,
            release: true,
        };
        let saved = self.meta.upload_advance(&session.id, &lease.token, &advance).await;
        if !matches!(saved, Ok(true)) {
            self.release_lease(&session.id, &lease.token).await;
            self.cancel_upload(repo, &session.id).await?;
            saved?;
            return Err(lost_lease());
        }
        Ok(session)
    }

    /// Mount `digest` from repository `from` into `repo`, or open an upload when that is not possible.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
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

    async fn session_record(&self, repo: &RepoName, id: &str) -> Result<UploadRecord> {
        let rec = self.meta.upload_get(id).await?.ok_or(Error::BlobUploadUnknown)?;
        if rec.repo != repo.as_str() {
            return Err(Error::BlobUploadUnknown);
        }
        Ok(rec)
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        let rec = self.session_record(repo, id).await?;
        Ok(UploadState {
            id: id.to_string(),
            offset: rec.size,
        })
    }

    fn lease_ms(&self) -> i64 {
        (self.config.upload_lease_secs.max(1) as i64).saturating_mul(1000)
    }

    /// Largest number of bytes one blob may have.
    fn blob_limit(&self) -> u64 {
        match self.config.max_blob_bytes {
            0 => u64::MAX,
            n => n,
        }
    }

    /// The cap on a blob pushed to `repo` (`digest`, when known: a blob the namespace holds
    /// already costs no quota).
    pub(crate) async fn push_cap(&self, repo: &RepoName, digest: Option<&Digest>) -> Result<Cap> {
        self.ensure_room().await?;
        let limit = self.blob_limit();
        let ns = repo.namespace();
        if let Some(quota) = self.quota_of(ns).await? {
            let held = match digest {
                Some(d) => self.meta.namespace_has_blob(ns, d.as_str()).await?,
                None => false,
            };
            if !held {
                let usage = self.meta.namespace_usage(ns).await?;
                let left = quota.saturating_sub(usage);
                if left < limit {
                    return Ok(Cap {
                        bytes: left,
                        quota: Some((ns.to_string(), usage, quota)),
                    });
                }
            }
        }
        Ok(Cap {
            bytes: limit,
            quota: None,
        })
    }

    /// Refuse to start writing when the blob store is below its free-space floor (a full disk
    /// answers 507 here, not half-way through a push).
    pub(crate) async fn ensure_room(&self) -> Result<()> {
        if let Some(free) = self.blobs.free_space().await? {
            if free < self.config.min_free_bytes {
                return Err(Error::Storage(crate::storage::StoreError::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("{free} bytes free, below registry.min_free_bytes"),
                ))));
            }
        }
        Ok(())
    }

    /// Take the exclusive write lease of session `id`: nobody else writes its data until it is
    /// released, and a request that finds a live lease gets [`Error::UploadBusy`]. A lease that
    /// expired (its writer stalled or died) is taken over, and the acknowledged bytes are first
    /// copied to fresh data so that the old writer, should it wake up, cannot touch them.
    pub(crate) async fn lease_session(&self, repo: &RepoName, id: &str) -> Result<SessionLease> {
        let rec = self.session_record(repo, id).await?;
        let now = crate::storage::now_ms();
        if rec.writer.is_some() && rec.writer_until >= now {
            return Err(Error::UploadBusy { offset: rec.size });
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked = self
            .meta
            .upload_lock(id, rec.size, rec.writer.as_deref(), &token, now + self.lease_ms(), now)
            .await?;
        if !locked {
            let offset = self.meta.upload_get(id).await?.map_or(rec.size, |r| r.size);
            return Err(Error::UploadBusy { offset });
        }
        let taken_over = rec.writer.is_some();
        let prepared = self
            .leased(id, &token, self.prepare_lease(&rec, &token, taken_over))
            .await;
        match prepared {
            Ok((data, hash)) => Ok(SessionLease {
                id: id.to_string(),
                token,
                size: rec.size,
                hash,
                data,
            }),
            Err(e) => {
                self.release_lease(id, &token).await;
                Err(e)
            }
        }
    }

    /// The data and running hash a new lease holder continues from.
    async fn prepare_lease(&self, rec: &UploadRecord, token: &str, taken_over: bool) -> Result<(String, SessionHash)> {
        let restored = match &rec.hash_state {
            Some(state) => Some(SessionHash::restore(state).ok_or_else(|| {
                Error::BlobUploadInvalid("the session's saved hash state is unreadable; start the upload again".into())
            })?),
            None if rec.size == 0 => Some(SessionHash::new(false)),
            None => None,
        };
        if !taken_over {
            let hash = match restored {
                Some(h) => h,
                None => self.rebuild_hash(rec.data(), rec.size).await?,
            };
            return Ok((rec.data().to_string(), hash));
        }
        let (fresh, rebuilt) = self.copy_upload_data(rec.data(), rec.size).await?;
        let hash = restored.unwrap_or(rebuilt);
        let state = hash.save();
        let moved = self
            .meta
            .upload_advance(
                &rec.id,
                token,
                &UploadAdvance {
                    from: rec.size,
                    to: rec.size,
                    hash_state: &state,
                    data_id: &fresh,
                    release: false,
                },
            )
            .await;
        if !matches!(moved, Ok(true)) {
            self.drop_upload_data(&fresh).await;
            moved?;
            return Err(lost_lease());
        }
        tracing::info!(upload = %rec.id, from = rec.data(), to = %fresh, "took over an upload session whose writer's lease expired");
        self.drop_upload_data(rec.data()).await;
        Ok((fresh, hash))
    }

    /// Copy the first `len` bytes of upload data `from` to new data; returns its id and their
    /// sha256.
    async fn copy_upload_data(&self, from: &str, len: u64) -> Result<(String, SessionHash)> {
        let to = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&to).await?;
        let copied = async {
            let mut hash = SessionHash::new(false);
            let mut writer = self.blobs.upload_writer(&to, 0).await?;
            let mut data = self.blobs.upload_read(from, len).await?;
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(crate::storage::StoreError::from)?;
                hash.update(&chunk);
                writer.write(chunk).await?;
            }
            writer.finish().await?;
            Ok::<_, Error>(hash)
        }
        .await;
        match copied {
            Ok(hash) => Ok((to, hash)),
            Err(e) => {
                self.drop_upload_data(&to).await;
                Err(e)
            }
        }
    }

    async fn drop_upload_data(&self, data: &str) {
        if let Err(e) = self.blobs.upload_abort(data).await {
            tracing::warn!(data, error = %e, "could not remove upload data");
        }
    }

    /// Give a lease up (best effort: an unreleased lease lapses by itself).
    pub(crate) async fn release_lease(&self, id: &str, token: &str) {
        if let Err(e) = self.meta.upload_release(id, token).await {
            tracing::warn!(upload = id, error = %e, "could not release an upload session's lease");
        }
    }

    /// Run `work` while holding the lease `token` on session `id`, renewing it every third of
    /// its duration; `work` is dropped (and the lease reported lost) when a renewal fails.
    pub(crate) async fn leased<T>(
        &self,
        id: &str,
        token: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let every = std::time::Duration::from_millis((self.lease_ms() / 3).max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {
                    let until = crate::storage::now_ms() + self.lease_ms();
                    if !self.meta.upload_renew(id, token, until).await? {
                        return Err(lost_lease());
                    }
                }
            }
        }
    }

    /// The sha256 of the first `len` bytes of upload data (sessions from before hash states
    /// were saved).
    async fn rebuild_hash(&self, data: &str, len: u64) -> Result<SessionHash> {
        let mut h = SessionHash::new(false);
        if len > 0 {
            let mut bytes = self.blobs.upload_read(data, len).await?;
            while let Some(chunk) = bytes.next().await {
                h.update(&chunk.map_err(crate::storage::StoreError::from)?);
            }
        }
        Ok(h)
    }

    /// Append `body` to upload `id`. `start` is where the client says the chunk begins
    /// (Content-Range), `len` how long it says it is.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, upload = id))]
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
        if start.is_some() {
            // Refuse a chunk at the wrong offset without taking the lease.
            let offset = self.session_record(repo, id).await?.size;
            if start != Some(offset) {
                return Err(Error::UploadOutOfOrder { offset });
            }
        }
        let cap = self.push_cap(repo, None).await?;
        let mut lease = self.lease_session(repo, id).await?;
        let token = lease.token.clone();
        let appended = self
            .leased(id, &token, async {
                let offset = lease.size;
                if start.is_some_and(|s| s != offset) {
                    return Err(Error::UploadOutOfOrder { offset });
                }
                if let Some(l) = len {
                    cap.check(offset.saturating_add(l))?;
                }
                let written = self
                    .write_body(&lease.data, offset, &mut lease.hash, &cap, body)
                    .await?;
                if len.is_some_and(|l| l != written) {
                    return Err(Error::SizeInvalid(format!(
                        "chunk was {written} bytes, not the {} announced",
                        len.unwrap_or(0)
                    )));
                }
                let new = offset + written;
                let state = lease.hash.save();
                let advance = UploadAdvance {
                    from: offset,
                    to: new,
                    hash_state: &state,
                    data_id: &lease.data,
                    release: true,
                };
                if !self.meta.upload_advance(id, &token, &advance).await? {
                    return Err(lost_lease());
                }
                Ok(new)
            })
            .await;
        match appended {
            Ok(offset) => Ok(UploadState {
                id: id.to_string(),
                offset,
            }),
            Err(e) => {
                self.release_lease(id, &token).await;
                Err(e)
            }
        }
    }

    /// Stream `body` into upload data `data` at `offset`, hashing it; returns the bytes
    /// written. Whatever happens, no write to the data is still in flight when this returns
    /// (the next lease holder may truncate and rewrite it).
    async fn write_body<S, E>(
        &self,
        data: &str,
        offset: u64,
        hasher: &mut SessionHash,
        cap: &Cap,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let _busy = crate::metrics::InFlight::new(&crate::metrics::metrics().upload_writes_in_flight);
        let mut writer = self.blobs.upload_writer(data, offset).await?;
        let mut written = 0u64;
        let streamed: Result<()> = loop {
            let Some(chunk) = body.next().await else { break Ok(()) };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => break Err(Error::Body(format!("reading request body: {e}"))),
            };
            if chunk.is_empty() {
                continue;
            }
            written += chunk.len() as u64;
            if let Err(e) = cap.check(offset.saturating_add(written)) {
                break Err(e);
            }
            hasher.update(&chunk);
            if let Err(e) = writer.write(chunk).await {
                break Err(e.into());
            }
        };
        let finished = writer.finish().await;
        streamed?;
        finished?;
        Ok(written)
    }

    /// Close upload `id` with its last chunk (possibly empty; `len` bytes when announced) and
    /// check it against `digest`.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, upload = id, digest = %digest))]
    pub async fn finish_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        len: Option<u64>,
        body: Option<S>,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let cap = self.push_cap(repo, Some(digest)).await?;
        let mut lease = self.lease_session(repo, id).await?;
        let token = lease.token.clone();
        let finished = self
            .leased(id, &token, async {
                let mut size = lease.size;
                cap.check(size.saturating_add(len.unwrap_or(0)))?;
                if let Some(body) = body {
                    size += self.write_body(&lease.data, size, &mut lease.hash, &cap, body).await?;
                }
                let actual = lease.hash.digest();
                if &actual != digest {
                    self.meta.upload_delete(id).await?;
                    self.drop_upload_data(&lease.data).await;
                    return Err(Error::DigestInvalid(format!(
                        "content has digest {actual}, not {digest}"
                    )));
                }
                self.commit_blob(repo, &lease.data, digest, size, Some((id, &token)))
                    .await
            })
            .await;
        if finished.is_err() {
            self.release_lease(id, &token).await;
        }
        finished
    }

    /// Make verified upload data `data` the blob `digest`, readable in `repo`; `session`
    /// names the upload session (and the lease held on it) to close in the same step.
    ///
    /// The order makes a concurrent garbage collection harmless: place the bytes (the store
    /// keeps the upload data when the blob is already there), record the metadata, then check
    /// the bytes are still in place (a collector may have just removed an unreferenced copy)
    /// and place them again if not; only then drop the upload data.
    async fn commit_blob(
        &self,
        repo: &RepoName,
        data: &str,
        digest: &Digest,
        size: u64,
        session: Option<(&str, &str)>,
    ) -> Result<()> {
        self.check_quota(repo, digest, size).await?;
        self.blobs.upload_commit(data, digest).await?;
        match session {
            Some((id, token)) => {
                if !self
                    .meta
                    .upload_complete(id, token, repo.as_str(), digest.as_str(), size)
                    .await?
                {
                    return Err(lost_lease());
                }
            }
            None => self.meta.link_blob(repo.as_str(), digest.as_str(), size).await?,
        }
        if self.blobs.stat(digest).await?.is_none() {
            // A collection removed an unreferenced copy meanwhile. When this upload's own data
            // was the copy placed, nothing is left to place again: the client pushes anew.
            if self.blobs.upload_size(data).await?.is_none() {
                return Err(Error::BlobUploadInvalid(format!(
                    "{digest} was garbage-collected while it was being committed; push it again"
                )));
            }
            self.blobs.upload_commit(data, digest).await?;
        }
        self.blobs.upload_abort(data).await?;
        Ok(())
    }

    /// Push a whole blob in one request (`POST ?digest=`).
    pub async fn put_blob<S, E>(&self, repo: &RepoName, digest: &Digest, body: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        self.put_blob_sized(repo, digest, None, body).await
    }

    /// Push a whole blob whose length the client announced (`Content-Length`): one over the
    /// cap is refused before a byte is stored.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, digest = %digest))]
    pub async fn put_blob_sized<S, E>(&self, repo: &RepoName, digest: &Digest, len: Option<u64>, body: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let cap = self.push_cap(repo, Some(digest)).await?;
        cap.check(len.unwrap_or(0))?;
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        let mut hasher = SessionHash::new(false);
        let result: Result<()> = async {
            let size = self.write_body(&id, 0, &mut hasher, &cap, body).await?;
            let actual = hasher.digest();
            if &actual != digest {
                return Err(Error::DigestInvalid(format!(
                    "content has digest {actual}, not {digest}"
                )));
            }
            self.commit_blob(repo, &id, digest, size, None).await
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
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn stage_blob<S, E>(&self, mut body: S, mut taps: Option<&mut Taps>) -> Result<StagedBlob>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        self.ensure_room().await?;
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
                size += chunk.len() as u64;
                if size > self.blob_limit() {
                    return Err(too_large(self.blob_limit()));
                }
                hasher.update(&chunk);
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
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn commit_staged(&self, repo: &RepoName, staged: &StagedBlob) -> Result<()> {
        let done = self
            .commit_blob(repo, &staged.id, &staged.digest, staged.size, None)
            .await;
        if done.is_err() {
            self.discard_staged(staged).await;
        }
        done
    }

    /// Make the session `lease` holds (already verified to hash to `digest`) the blob
    /// `digest` and close the session.
    pub(crate) async fn commit_leased(&self, repo: &RepoName, lease: &SessionLease, digest: &Digest) -> Result<()> {
        self.commit_blob(repo, &lease.data, digest, lease.size, Some((&lease.id, &lease.token)))
            .await
    }

    /// The acknowledged bytes of the session `lease` holds.
    pub(crate) async fn leased_bytes(&self, lease: &SessionLease) -> Result<crate::storage::ByteStream> {
        Ok(self.blobs.upload_read(&lease.data, lease.size).await?)
    }

    /// `len` bytes of a leased session's data from `offset` on.
    pub(crate) async fn leased_range(
        &self,
        lease: &SessionLease,
        offset: u64,
        len: u64,
    ) -> Result<crate::storage::ByteStream> {
        Ok(self.blobs.upload_read_range(&lease.data, offset, len).await?)
    }

    pub async fn discard_staged(&self, staged: &StagedBlob) {
        if let Err(e) = self.blobs.upload_abort(&staged.id).await {
            tracing::warn!(error = %e, "could not remove staged upload data");
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, upload = id))]
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let rec = self.session_record(repo, id).await?;
        self.cancel_upload_data(&rec).await
    }

    /// Forget session `rec` and remove its data. A writer still streaming into it loses its
    /// lease with the row and fails.
    async fn cancel_upload_data(&self, rec: &UploadRecord) -> Result<()> {
        self.meta.upload_delete(&rec.id).await?;
        self.blobs.upload_abort(rec.data()).await?;
        Ok(())
    }

    /// Remove upload sessions idle for longer than the configured expiry; returns how many.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn expire_uploads(&self) -> Result<usize> {
        let cutoff = crate::storage::now_ms() - (self.config.upload_expiry_secs as i64).saturating_mul(1000);
        let ids = self.meta.uploads_idle_since(cutoff).await?;
        for id in &ids {
            if let Some(rec) = self.meta.upload_get(id).await? {
                self.cancel_upload_data(&rec).await?;
            }
        }
        Ok(ids.len())
    }

    /// Remove upload data that no session owns and that nobody wrote to for longer than the
    /// configured expiry (a process died during a monolithic or staged upload, or a lease
    /// takeover left the stalled writer's copy); returns how many.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn sweep_orphaned_uploads(&self) -> Result<usize> {
        let cutoff = crate::storage::now_ms() - (self.config.upload_expiry_secs as i64).saturating_mul(1000);
        let mut removed = 0;
        for data in self.blobs.upload_list_stale(cutoff, 1000).await? {
            if !self.meta.upload_data_in_use(&data).await? {
                self.blobs.upload_abort(&data).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
