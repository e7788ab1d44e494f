//! A regional relay (`image-manager serve --upstream URL`): a pull-through cache of another
//! Image Manager, so that the VIMs of a region download an image from a server near them and
//! the central uplink carries it once per region.
//!
//! The relay holds no accounts and no keys: the upstream decides every request. For each one
//! the relay asks the upstream first (a `HEAD` of the same path, with the client's
//! `Authorization` forwarded, which also tells the size and digest), and only then serves the
//! bytes from its own blob store. A blob it does not hold yet is fetched from the upstream
//! once, however many clients ask for it at the same moment, verified against its digest as it
//! is written, and committed only when it matches. The cache keeps at most
//! `relay.cache_max_bytes`; the least recently used blobs are evicted first, never one that is
//! being read. A blob larger than the whole cache is passed through without being kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RANGE, WWW_AUTHENTICATE};
use sha2::Digest as _;

use super::uploads::{resolve_range, BlobBody, RangeRequest};
use crate::config::RelayConfig;
use crate::error::Error;
use crate::oci::names::{Algorithm, Digest};
use crate::storage::{BlobStore, ByteStream};

/// Why the relay did not serve a request: the error, and the upstream's challenge when the
/// upstream asked for credentials (so the client learns where to get a token).
#[derive(Debug)]
pub struct Refusal {
    pub error: Error,
    pub challenge: Option<String>,
}

impl<E: Into<Error>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal {
            error: e.into(),
            challenge: None,
        }
    }
}

pub type RelayResult<T> = std::result::Result<T, Refusal>;

/// A cached blob: its size, when it was last used (a logical clock), and how many responses
/// are streaming it now (it is not evicted while any is).
struct Cached {
    size: u64,
    used: u64,
    readers: usize,
}

#[derive(Default)]
struct Cache {
    blobs: HashMap<Digest, Cached>,
    total: u64,
    clock: u64,
}

/// The relay service.
pub struct Relay {
    upstream: String,
    http: reqwest::Client,
    blobs: Arc<dyn BlobStore>,
    config: RelayConfig,
    cache: Arc<Mutex<Cache>>,
    /// One lock per blob being fetched or evicted: concurrent misses of one blob fetch it once.
    fills: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Releases a cached blob's reader count when the response streaming it ends.
struct ReadGuard {
    cache: Arc<Mutex<Cache>>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.cache.lock() {
            if let Some(b) = c.blobs.get_mut(&self.digest) {
                b.readers = b.readers.saturating_sub(1);
            }
        }
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algo: Algorithm) -> Self {
        match algo {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The blob a download link names, as the link claims it (the upstream checks the claim).
fn link_digest(token: &str) -> Result<Digest, Error> {
    let denied = || Error::Denied("download link invalid or expired".into());
    let grant = crate::core::distribution::DownloadSigner::peek(token).ok_or_else(denied)?;
    Digest::parse(&grant.digest).map_err(|_| denied())
}

/// What the upstream said a request may read.
struct Granted {
    size: u64,
}

impl Relay {
    /// A relay of `config.upstream` storing into `blobs`; the cache index is rebuilt from what
    /// the store holds.
    pub async fn open(config: RelayConfig, blobs: Arc<dyn BlobStore>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let upstream = config
            .upstream
            .clone()
            .context("relay.upstream (--upstream) is not set")?
            .trim_end_matches('/')
            .to_string();
        let url = reqwest::Url::parse(&upstream).with_context(|| format!("relay.upstream {upstream:?}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "relay.upstream {upstream:?} is not an http(s) URL"
        );
        let ca = match &config.upstream_ca_file {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let http = crate::adapters::http_client(
            "relay upstream",
            Duration::from_secs(config.connect_timeout_secs.max(1)),
            ca.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cache = Cache::default();
        match blobs.committed().await {
            Ok(found) => {
                for (digest, size) in found {
                    cache.total += size;
                    cache.blobs.insert(
                        digest,
                        Cached {
                            size,
                            used: 0,
                            readers: 0,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot list the blobs already stored; starting with an empty index")
            }
        }
        crate::metrics::metrics().relay_cache_bytes.set(cache.total as i64);
        tracing::info!(%upstream, blobs = cache.blobs.len(), bytes = cache.total, "relay cache opened");
        let relay = Self {
            upstream,
            http,
            blobs,
            config,
            cache: Arc::new(Mutex::new(cache)),
            fills: Mutex::new(HashMap::new()),
        };
        relay.evict().await;
        Ok(relay)
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A download link (`/dl/<token>`): the upstream checks the token; the bytes come from here.
    pub async fn download(&self, token: &str, range: Option<RangeRequest>) -> RelayResult<(Digest, BlobBody)> {
        let digest = link_digest(token)?;
        let body = self
            .serve(&format!("/dl/{token}"), &digest, &HeaderMap::new(), range)
            .await?;
        Ok((digest, body))
    }

    /// A blob pull (`/v2/<name>/blobs/<digest>`), authorized by the upstream with the
    /// client's own credentials.
    pub async fn blob(
        &self,
        name: &str,
        digest: &Digest,
        authorization: Option<&HeaderValue>,
        range: Option<RangeRequest>,
    ) -> RelayResult<BlobBody> {
        let mut fwd = HeaderMap::new();
        if let Some(a) = authorization {
            fwd.insert(AUTHORIZATION, a.clone());
        }
        self.serve(&format!("/v2/{name}/blobs/{digest}"), digest, &fwd, range)
            .await
    }

    /// The size of a download link's blob, as the upstream grants it (a `HEAD`: nothing fetched).
    pub async fn stat_download(&self, token: &str) -> RelayResult<(Digest, u64)> {
        let digest = link_digest(token)?;
        let g = self
            .authorize(&format!("/dl/{token}"), &digest, &HeaderMap::new())
            .await?;
        Ok((digest, g.size))
    }

    /// The size of a blob, as the upstream grants it to the client (a `HEAD`).
    pub async fn stat_blob(
        &self,
        name: &str,
        digest: &Digest,
        authorization: Option<&HeaderValue>,
    ) -> RelayResult<u64> {
        let mut fwd = HeaderMap::new();
        if let Some(a) = authorization {
            fwd.insert(AUTHORIZATION, a.clone());
        }
        let g = self
            .authorize(&format!("/v2/{name}/blobs/{digest}"), digest, &fwd)
            .await?;
        Ok(g.size)
    }

    /// A small upstream answer passed on as it is (the /v2 ping, a manifest): status, the
    /// headers a registry client reads, and a body of at most `cap` bytes.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &HeaderMap,
        cap: usize,
    ) -> RelayResult<(u16, HeaderMap, Bytes)> {
        let resp = self
            .http
            .request(method, format!("{}{path_and_query}", self.upstream))
            .headers(headers.clone())
            .timeout(Duration::from_secs(self.config.call_timeout_secs.max(1)))
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("relay upstream: {e}")))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = crate::adapters::read_capped(resp, cap, "relay upstream")
            .await
            .map_err(|e| Error::Upstream(e.to_string()))?;
        Ok((status, headers, body))
    }

    async fn serve(
        &self,
        path: &str,
        digest: &Digest,
        fwd: &HeaderMap,
        range: Option<RangeRequest>,
    ) -> RelayResult<BlobBody> {
        let m = crate::metrics::metrics();
        let granted = self.authorize(path, digest, fwd).await.inspect_err(|_| {
            m.relay_requests
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "refused" })
                .inc();
        })?;
        let size = granted.size;
        let range = resolve_range(size, range)?;
        if size > self.config.cache_max_bytes {
            m.relay_requests
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "passthrough" })
                .inc();
            tracing::warn!(%digest, size, cap = self.config.cache_max_bytes, "relay: blob larger than the cache, passed through");
            let stream = self.fetch_stream(path, fwd, range).await?;
            return Ok(BlobBody { size, range, stream });
        }
        let guard = self.ensure(path, digest, size, fwd).await?;
        let stream = match self.blobs.get(digest, range).await {
            Ok(s) => s,
            Err(e) => return Err(Error::from(e).into()),
        };
        // The guard lives as long as the response's stream.
        let stream: ByteStream = Box::pin(stream.map(move |chunk| {
            let _held = &guard;
            chunk
        }));
        self.evict().await;
        Ok(BlobBody { size, range, stream })
    }

    /// Ask the upstream whether the request may read `path`, and how large it is.
    async fn authorize(&self, path: &str, digest: &Digest, fwd: &HeaderMap) -> RelayResult<Granted> {
        let resp = self
            .http
            .head(format!("{}{path}", self.upstream))
            .headers(fwd.clone())
            .timeout(Duration::from_secs(self.config.call_timeout_secs.max(1)))
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("relay upstream unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        match status {
            200 => {}
            401 => {
                return Err(Refusal {
                    error: Error::Unauthorized("the upstream asks for credentials".into()),
                    challenge: header(WWW_AUTHENTICATE.as_str()).map(str::to_owned),
                })
            }
            403 => return Err(Error::Denied("refused by the upstream".into()).into()),
            404 if path.starts_with("/dl/") => {
                return Err(Error::NotFoundWhat("the blob of this download link".into()).into())
            }
            404 => return Err(Error::BlobUnknown.into()),
            s => return Err(Error::Upstream(format!("relay upstream answered HTTP {s}")).into()),
        }
        if let Some(d) = header("docker-content-digest") {
            if d != digest.as_str() {
                return Err(Error::Upstream(format!("relay upstream serves {d} where {digest} was asked for")).into());
            }
        }
        let size = header(CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::Upstream("relay upstream did not tell the blob's size".into()))?;
        Ok(Granted { size })
    }

    /// The upstream's bytes of `path` (one range of them), streamed with the stall timeout.
    async fn fetch_stream(
        &self,
        path: &str,
        fwd: &HeaderMap,
        range: Option<crate::storage::ByteRange>,
    ) -> RelayResult<ByteStream> {
        let mut req = self.http.get(format!("{}{path}", self.upstream)).headers(fwd.clone());
        if let Some(r) = range {
            req = req.header(RANGE, format!("bytes={}-{}", r.start, r.end));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("relay upstream: {e}")))?;
        let want = if range.is_some() { 206 } else { 200 };
        if resp.status().as_u16() != want {
            return Err(Error::Upstream(format!(
                "relay upstream answered HTTP {} to GET {path}",
                resp.status().as_u16()
            ))
            .into());
        }
        let stall = Duration::from_secs(self.config.stall_timeout_secs.max(1));
        let body = resp.bytes_stream();
        let stream = futures::stream::unfold(Box::pin(body), move |mut body| async move {
            match tokio::time::timeout(stall, body.next()).await {
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "relay upstream stalled",
                    )),
                    body,
                )),
                Ok(None) => None,
                Ok(Some(Ok(b))) => {
                    crate::metrics::metrics().relay_fetched_bytes.inc_by(b.len() as u64);
                    Some((Ok(b), body))
                }
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), body)),
            }
        });
        Ok(Box::pin(stream))
    }

    fn fill_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        fills.entry(digest.clone()).or_default().clone()
    }

    fn drop_fill_lock(&self, digest: &Digest, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours: nobody else waits on it.
        if Arc::strong_count(&lock) <= 2 {
            fills.remove(digest);
        }
    }

    /// Pin `digest` for a reader if it is cached.
    fn pin(&self, digest: &Digest) -> Option<ReadGuard> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.clock += 1;
        let now = c.clock;
        let b = c.blobs.get_mut(digest)?;
        b.used = now;
        b.readers += 1;
        Some(ReadGuard {
            cache: self.cache.clone(),
            digest: digest.clone(),
        })
    }

    /// Make sure `digest` is cached (fetching it once if not) and pin it for one reader.
    async fn ensure(&self, path: &str, digest: &Digest, size: u64, fwd: &HeaderMap) -> RelayResult<ReadGuard> {
        let m = crate::metrics::metrics();
        if let Some(g) = self.pin(digest) {
            m.relay_requests
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "hit" })
                .inc();
            return Ok(g);
        }
        let lock = self.fill_lock(digest);
        let result = async {
            let _filling = lock.lock().await;
            // Another request may have fetched it while this one waited.
            if let Some(g) = self.pin(digest) {
                m.relay_requests
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "hit" })
                    .inc();
                return Ok(g);
            }
            m.relay_requests
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "miss" })
                .inc();
            self.fetch_into_store(path, digest, size, fwd).await?;
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if c.blobs
                .insert(
                    digest.clone(),
                    Cached {
                        size,
                        used: 0,
                        readers: 0,
                    },
                )
                .is_none()
            {
                c.total += size;
            }
            m.relay_cache_bytes.set(c.total as i64);
            drop(c);
            self.pin(digest)
                .ok_or_else(|| Refusal::from(Error::Internal("relay: a fetched blob left the cache".into())))
        }
        .await;
        self.drop_fill_lock(digest, lock);
        result
    }

    /// Fetch `path` from the upstream into the blob store as `digest`, checking size and
    /// digest before committing.
    async fn fetch_into_store(&self, path: &str, digest: &Digest, size: u64, fwd: &HeaderMap) -> RelayResult<()> {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.upload_create(&id).await?;
        let written = async {
            let mut stream = self.fetch_stream(path, fwd, None).await?;
            let mut writer = self.blobs.upload_writer(&id, 0).await?;
            let mut hasher = Hasher::new(digest.algorithm());
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Upstream(format!("relay upstream: {e}")))?;
                n += chunk.len() as u64;
                if n > size {
                    return Err(
                        Error::Upstream(format!("relay upstream sent more than the {size} bytes of {digest}")).into(),
                    );
                }
                hasher.update(&chunk);
                writer.write(chunk).await?;
            }
            writer.finish().await?;
            if n != size {
                return Err(Error::Upstream(format!("relay upstream sent {n} of the {size} bytes of {digest}")).into());
            }
            if hasher.hex() != digest.hex() {
                return Err(Error::Upstream(format!("relay upstream sent bytes that do not hash to {digest}")).into());
            }
            self.blobs.upload_commit(&id, digest).await?;
            Ok::<(), Refusal>(())
        }
        .await;
        if let Err(e) = self.blobs.upload_abort(&id).await {
            tracing::warn!(upload = %id, error = %e, "relay: removing fetched upload data failed");
        }
        if let Err(e) = &written {
            tracing::warn!(%digest, error = %e.error, "relay: fetch from the upstream failed");
        }
        written
    }

    /// Evict the least recently used blobs nobody is reading until the cache fits its cap.
    async fn evict(&self) {
        let victims: Vec<Digest> = {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if c.total <= self.config.cache_max_bytes {
                return;
            }
            let mut idle: Vec<(u64, Digest, u64)> = c
                .blobs
                .iter()
                .filter(|(_, b)| b.readers == 0)
                .map(|(d, b)| (b.used, d.clone(), b.size))
                .collect();
            idle.sort_by_key(|(used, _, _)| *used);
            let mut over = c.total - self.config.cache_max_bytes;
            let mut out = Vec::new();
            for (_, d, size) in idle {
                if over == 0 {
                    break;
                }
                over = over.saturating_sub(size);
                c.total -= size;
                c.blobs.remove(&d);
                out.push(d);
            }
            crate::metrics::metrics().relay_cache_bytes.set(c.total as i64);
            out
        };
        for digest in victims {
            let lock = self.fill_lock(&digest);
            {
                let _held = lock.lock().await;
                // A request may have fetched it again meanwhile: then it stays.
                let back = {
                    let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    c.blobs.contains_key(&digest)
                };
                if !back {
                    match self.blobs.delete(&digest).await {
                        Ok(()) => {
                            crate::metrics::metrics().relay_evictions.inc();
                            tracing::debug!(%digest, "relay: evicted");
                        }
                        Err(e) => tracing::warn!(%digest, error = %e, "relay: evicting a blob failed"),
                    }
                }
            }
            self.drop_fill_lock(&digest, lock);
        }
    }

    /// Readiness: the blob store answers and the upstream is reachable.
    pub async fn readiness(&self) -> (Result<(), String>, Result<(), String>) {
        let blobs = self.blobs.check().await.map_err(|e| e.to_string());
        let upstream = match self
            .http
            .get(format!("{}/healthz", self.upstream))
            .timeout(Duration::from_secs(self.config.call_timeout_secs.max(1)))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("upstream /healthz answered HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("upstream unreachable: {e}")),
        };
        (blobs, upstream)
    }

    /// Bytes and blobs the cache holds now.
    pub fn usage(&self) -> (u64, usize) {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.blobs.len())
    }
}
