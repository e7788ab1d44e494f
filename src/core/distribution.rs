//! The distribution engine: "these images, on these VIMs", as durable jobs.
//!
//! A distribution job ([`Distribution::create`]) names catalog entries and VIMs (a list, or
//! a label selector) and a method. It is stored with one target per image and VIM, and each
//! target becomes a job on the durable queue (`core::jobs`, queue [`QUEUE`]), so that it
//! survives restarts, replicas share the work, and no target runs twice at once (the queue's
//! lease). A target moves pending → transferring → verifying → active, or to failed or
//! cancelled; `attempts`, `bytes_done`, `rate` and `last_error` say how it goes.
//!
//! One attempt on an OpenStack VIM ([`Distribution::to_glance`]):
//! 1. ask Glance whether it already holds the bytes (an active image with our
//!    `os_hash_value` under sha512, or carrying our digest) under the catalog name: then
//!    nothing is sent;
//! 2. create the image under a temporary name (so the real name never matches a half image),
//!    with formats, min_disk (GiB) and min_ram (MiB) converted from the catalog's bytes,
//!    os and architecture properties, and our entry id and digest as properties;
//! 3. send the bytes: `push` streams `PUT /file` from the blob store, capped by the global
//!    and per-VIM bandwidth limits; `web-download` has Glance import a short-lived signed URL
//!    of ours ([`DownloadSigner`]);
//! 4. verify: status active, size, `os_hash_algo` sha512 with our `os_hash_value`, and md5
//!    `checksum`; a bad copy is deleted and the attempt fails;
//! 5. swap names: the new image takes the catalog name, and the images of earlier versions
//!    under that name are renamed and kept, hidden or deleted as the job says.
//!
//! An attempt that fails transiently is retried with exponential backoff and jitter until the
//! target is out of attempts; a half-made image from an attempt that died (a killed server)
//! is deleted by the next attempt, which starts over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::admin::Actor;
use super::jobs::{Backoff, Enqueuer, JobContext, JobError, JobHandler};
use super::vims::{parse_selector, selector_matches, OpenVim, VimClient, Vims};
use crate::adapters::glance::{GlanceClient, GlanceImage, NewGlanceImage, PatchOp};
use crate::adapters::multicloud::{MultiCloudClient, MultiCloudImage, NewMultiCloudImage, Property};
use crate::adapters::oci::containerdisk::{push_container_disk, DiskImage};
use crate::adapters::oci::{copy_image, verify_image, ImageSource, RegistryClient};
use crate::adapters::{AdapterError, AdapterErrorKind};
use crate::auth::{Action, Auth, Principal, Resource};
use crate::config::DistributionConfig;
use crate::error::{Error, Result};
use crate::oci::names::Digest;
use crate::storage::catalog::EntryRecord;
use crate::storage::jobs::NewJob;
use crate::storage::vims::{DistributionRecord, TargetRecord, VimImageRecord, VimRecord, FINAL_STATES};
use crate::storage::{now_ms, AccountStore, BlobStore, CatalogStore, DistributionStore, JobStore, RegistryStore};

/// The job queue distribution targets run on, and the kind of their jobs.
pub const QUEUE: &str = "distribution";
pub const KIND: &str = "distribute-target";

pub const METHODS: [&str; 3] = ["push", "web-download", "auto"];
/// What becomes of the image a new version replaces under the same name.
pub const ON_REPLACE: [&str; 3] = ["keep", "hide", "delete"];

/// Most images and VIMs in one job (a thousand clouds, a few images).
const MAX_TARGETS: usize = 100_000;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// What a caller asks for.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributionRequest {
    /// Catalog entry ids, or manifest digests (every entry of that digest).
    pub images: Vec<String>,
    /// VIM ids or names.
    #[serde(default)]
    pub vims: Vec<String>,
    /// VIMs whose labels hold every pair.
    #[serde(default)]
    pub vim_selector: Option<BTreeMap<String, String>>,
    /// push, web-download or auto (default); ignored by un-distributions.
    #[serde(default)]
    pub method: Option<String>,
    /// The image an earlier version left under the same name: keep, hide (default) or delete.
    #[serde(default)]
    pub on_replace: Option<String>,
    /// Glance visibility of the new images (default the VIM's `image_visibility`, else private).
    #[serde(default)]
    pub visibility: Option<String>,
    /// Extra Glance tags: at most 32, each 1 to 255 bytes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// To OCI registries, VM images as KubeVirt containerDisks (a container image whose layer
    /// holds `/disk/<name>.<format>`), not as the VM image artifact.
    #[serde(default)]
    pub container_disk: bool,
}

/// Options stored with a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct JobOptions {
    /// keep, hide or delete.
    on_replace: String,
    visibility: Option<String>,
    tags: Vec<String>,
    /// Readable by the namespaces of its images (rights to read the job).
    namespaces: Vec<String>,
    #[serde(default)]
    container_disk: bool,
}

/// A job as callers see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DistributionView {
    pub id: String,
    pub created_by: String,
    /// push, web-download, auto, or remove (an un-distribution).
    pub method: String,
    /// pending (no target started), running, active (every target active), failed (some
    /// failed, none running), cancelled, or removed (an un-distribution done).
    pub state: String,
    /// Targets by state.
    pub counts: BTreeMap<String, usize>,
    /// What was asked besides images, VIMs and method.
    #[schema(value_type = JobOptions)]
    pub options: Value,
    /// One per image and VIM.
    pub targets: Vec<TargetView>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// One image on one VIM within a job.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TargetView {
    pub entry_id: String,
    pub vim_id: String,
    /// pending, transferring, verifying, active, failed, cancelled (and removed for an
    /// un-distribution).
    pub state: String,
    /// The method this target uses (auto resolved), once it started.
    pub method: Option<String>,
    /// The VIM's id of the image.
    pub remote_id: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second.
    pub rate: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The VIM already held it: nothing was sent.
    pub skipped: bool,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&TargetRecord> for TargetView {
    fn from(t: &TargetRecord) -> Self {
        TargetView {
            entry_id: t.entry_id.clone(),
            vim_id: t.vim_id.clone(),
            state: t.state.clone(),
            method: t.method.clone(),
            remote_id: t.remote_id.clone(),
            bytes_done: t.bytes_done,
            bytes_total: t.bytes_total,
            rate: t.rate,
            attempts: t.attempts,
            last_error: t.last_error.clone(),
            skipped: t.skipped,
            started_at: t.started_at.map(crate::storage::rfc3339),
            finished_at: t.finished_at.map(crate::storage::rfc3339),
            updated_at: crate::storage::rfc3339(t.updated_at),
        }
    }
}

/// A token bucket of bytes per second; callers that overdraw it wait off their debt, so the
/// rate holds however many transfers share it.
pub struct Bucket {
    rate: AtomicU64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `rate` bytes per second; 0: unlimited.
    pub fn new(rate: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            state: Mutex::new((rate as f64 / 4.0, Instant::now())),
        }
    }

    /// A new rate (bytes per second) for what is sent from now on; 0 is taken as 1, since a
    /// bucket made limited stays limited.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate.max(1), Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// How long to wait before sending `n` bytes (and account them).
    fn reserve(&self, n: u64) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        let Ok(mut s) = self.state.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let (tokens, last) = &mut *s;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        *tokens -= n as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Signs and checks the short-lived URLs VIMs download blobs from (Glance's web-download,
/// MultiCloud's imagePath): `/dl/<payload>.<HMAC-SHA256>`, the payload naming repository,
/// digest and expiry. The key is shared by every replica through the metadata store.
pub struct DownloadSigner {
    key: ring::hmac::Key,
}

/// What a download token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadGrant {
    #[serde(rename = "r")]
    pub repository: String,
    #[serde(rename = "d")]
    pub digest: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub expires: i64,
}

impl DownloadSigner {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    /// The signer whose key is the setting `distribution.download_key` (created once).
    pub async fn shared(accounts: &dyn AccountStore) -> Result<Self> {
        let fresh = {
            use ring::rand::SecureRandom;
            let mut b = [0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| Error::Internal("no random numbers".into()))?;
            URL_SAFE_NO_PAD.encode(b)
        };
        let key = accounts.setting_init("distribution.download_key", &fresh).await?;
        let bytes = URL_SAFE_NO_PAD
            .decode(key.trim())
            .map_err(|_| Error::Internal("distribution.download_key setting unreadable".into()))?;
        Ok(Self::new(&bytes))
    }

    pub fn token(&self, grant: &DownloadGrant) -> Result<String> {
        let payload = serde_json::to_vec(grant).map_err(|e| Error::Internal(e.to_string()))?;
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let sig = ring::hmac::sign(&self.key, payload.as_bytes());
        Ok(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// What `token` claims to grant, unchecked: a relay, which does not hold the key, learns
    /// which blob a link names from it, then has the upstream check the link itself.
    pub fn peek(token: &str) -> Option<DownloadGrant> {
        let (payload, _) = token.split_once('.')?;
        let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// The grant of a valid, unexpired token.
    pub fn check(&self, token: &str, now_secs: i64) -> Result<DownloadGrant> {
        let denied = || Error::Denied("download link invalid or expired".into());
        let (payload, sig) = token.split_once('.').ok_or_else(denied)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| denied())?;
        ring::hmac::verify(&self.key, payload.as_bytes(), &sig).map_err(|_| denied())?;
        let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| denied())?;
        let grant: DownloadGrant = serde_json::from_slice(&raw).map_err(|_| denied())?;
        if grant.expires < now_secs {
            return Err(denied());
        }
        Ok(grant)
    }
}

/// A replica's part of the global cap `cap`: in proportion to the transfers it runs (`local`)
/// among all the cluster runs (`cluster`); the whole cap when it runs them all (or none).
fn bandwidth_share(cap: u64, local: u64, cluster: u64) -> u64 {
    if local == 0 || cluster <= local {
        return cap;
    }
    ((cap as u128 * local as u128) / cluster as u128).max(1) as u64
}

/// The URL of the first relay in `relays` whose selector `labels` match.
fn relay_for(relays: &[crate::config::RelayRoute], labels: &BTreeMap<String, String>) -> Option<String> {
    relays.iter().find_map(|r| {
        let selector = parse_selector(&r.selector).ok()?;
        selector_matches(&selector, labels).then(|| r.url.clone())
    })
}

/// The VM image facts a distribution needs, from a catalog entry.
#[derive(Debug, Clone)]
struct VmFacts {
    digest: Digest,
    size: u64,
    sha512: String,
    md5: String,
    disk_format: String,
    container_format: String,
    min_disk_gib: u64,
    min_ram_mib: u64,
    properties: BTreeMap<String, String>,
}

impl VmFacts {
    fn of(e: &EntryRecord) -> Result<Self> {
        let vm = e
            .details
            .get("vm")
            .ok_or_else(|| Error::BadRequest(format!("entry {} ({}) is not a VM image", e.id, e.kind)))?;
        let text = |p: &str| vm.pointer(p).and_then(Value::as_str).map(str::to_string);
        let num = |p: &str| vm.pointer(p).and_then(Value::as_u64);
        let missing = |what: &str| Error::Internal(format!("entry {} has no {what}", e.id));
        let sha256 = text("/checksums/sha256").ok_or_else(|| missing("sha256"))?;
        let digest = Digest::parse(&format!("sha256:{sha256}")).map_err(|_| missing("valid sha256"))?;
        let mut properties = BTreeMap::new();
        properties.insert("im_entry_id".into(), e.id.clone());
        properties.insert("im_digest".into(), digest.to_string());
        properties.insert("im_manifest_digest".into(), e.digest.clone());
        properties.insert("im_namespace".into(), e.namespace.clone());
        properties.insert("im_name".into(), e.name.clone());
        properties.insert("im_version".into(), e.version.clone());
        for (k, p) in [
            ("architecture", "/architecture"),
            ("os_type", "/os_type"),
            ("os_distro", "/os_distro"),
            ("os_version", "/os_version"),
        ] {
            if let Some(v) = text(p).filter(|v| !v.is_empty()) {
                properties.insert(k.into(), v);
            }
        }
        Ok(VmFacts {
            digest,
            size: num("/file_size").unwrap_or(e.size),
            sha512: text("/checksums/sha512").ok_or_else(|| missing("sha512"))?,
            md5: text("/checksums/md5").ok_or_else(|| missing("md5"))?,
            disk_format: text("/disk_format").ok_or_else(|| missing("disk format"))?,
            container_format: text("/container_format").unwrap_or_else(|| "bare".into()),
            min_disk_gib: num("/min_disk").map(|b| b.div_ceil(GIB)).unwrap_or(0),
            min_ram_mib: num("/min_ram").map(|b| b.div_ceil(MIB)).unwrap_or(0),
            properties,
        })
    }

    /// Whether Glance's image holds exactly these bytes (verified by Glance's own hashes).
    fn verified_by(&self, img: &GlanceImage) -> std::result::Result<(), String> {
        if img.status != "active" {
            return Err(format!("status is {:?}, not active", img.status));
        }
        if img.size != Some(self.size) {
            return Err(format!("size is {:?}, ours {}", img.size, self.size));
        }
        if img.os_hash_algo.as_deref() != Some("sha512") {
            return Err(format!("os_hash_algo is {:?}, not sha512", img.os_hash_algo));
        }
        if img.os_hash_value.as_deref() != Some(self.sha512.as_str()) {
            return Err("os_hash_value differs from our sha512".into());
        }
        if img.checksum.as_deref() != Some(self.md5.as_str()) {
            return Err("checksum differs from our md5".into());
        }
        Ok(())
    }
}

/// Why an attempt ended without success.
enum Stop {
    /// Try again later (counts an attempt).
    Retry(String),
    /// Will not work: the target fails now.
    Fail(String),
    /// The target was cancelled (or taken over) meanwhile.
    Cancelled,
}

impl From<AdapterError> for Stop {
    fn from(e: AdapterError) -> Self {
        match e.kind {
            AdapterErrorKind::Transient | AdapterErrorKind::Conflict | AdapterErrorKind::NotFound => {
                Stop::Retry(e.message)
            }
            AdapterErrorKind::Auth | AdapterErrorKind::Refused | AdapterErrorKind::Other => Stop::Fail(e.message),
        }
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        match &e {
            Error::Storage(s) if s.kind() == crate::storage::StoreErrorKind::Transient => Stop::Retry(e.to_string()),
            Error::Storage(_) | Error::Upstream(_) => Stop::Retry(e.to_string()),
            _ => Stop::Fail(e.to_string()),
        }
    }
}

impl From<crate::storage::StoreError> for Stop {
    fn from(e: crate::storage::StoreError) -> Self {
        Stop::from(Error::from(e))
    }
}

type Attempt<T> = std::result::Result<T, Stop>;

/// Lifetime of a cluster-wide VIM slot lease; it is renewed every third of it while held, so
/// a replica that dies frees its slots this long after.
const SLOT_TTL: Duration = Duration::from_secs(30);
/// Name prefix of the cluster-wide VIM slot leases: `vim-slot/<vim id>/<k>`.
const SLOT_PREFIX: &str = "vim-slot/";

/// One of a VIM's cluster-wide concurrency slots: a lease in the job store, so that
/// `per_vim_concurrency` holds over every replica. Renewed while held; given up on drop.
struct SlotLease {
    _held: tokio::sync::oneshot::Sender<()>,
    _counted: InFlight,
}

/// Counts a target of this replica as holding a slot while it lives.
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(n: &Arc<AtomicU64>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SlotLease {
    /// Take the first free one of `n` slots of `vim`, or `None` when all are held.
    async fn take(
        jobs: &Arc<dyn JobStore>,
        vim: &str,
        n: usize,
        owner: String,
        in_flight: &Arc<AtomicU64>,
    ) -> std::result::Result<Option<Self>, crate::storage::StoreError> {
        let ttl = SLOT_TTL.as_millis() as u64;
        for k in 0..n {
            let name = format!("{SLOT_PREFIX}{vim}/{k}");
            if !jobs.lease_acquire(&name, &owner, ttl).await? {
                continue;
            }
            let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(SLOT_TTL / 3) => {
                            if let Err(e) = jobs.lease_acquire(&name, &owner, ttl).await {
                                tracing::warn!(lease = %name, error = %e, "renewing a VIM slot failed");
                            }
                        }
                        _ = &mut rx => break,
                    }
                }
                if let Err(e) = jobs.lease_release(&name, &owner).await {
                    tracing::warn!(lease = %name, error = %e, "giving a VIM slot up failed; it expires");
                }
            });
            return Ok(Some(Self {
                _held: tx,
                _counted: InFlight::new(in_flight),
            }));
        }
        Ok(None)
    }
}

/// One VIM's limits as of its `updated_at`: concurrency slots and a bandwidth bucket.
type VimLimits = (i64, Arc<Semaphore>, Arc<Bucket>);

/// The distribution service and engine.
pub struct Distribution {
    store: Arc<dyn DistributionStore>,
    vims: Arc<Vims>,
    entries: Arc<dyn CatalogStore>,
    registry: Arc<dyn RegistryStore>,
    blobs: Arc<dyn BlobStore>,
    accounts: Arc<dyn AccountStore>,
    auth: Arc<Auth>,
    enqueuer: Enqueuer,
    signer: DownloadSigner,
    config: DistributionConfig,
    global: Arc<Bucket>,
    /// Per VIM (by id, as of its `updated_at`): its concurrency slots and bandwidth bucket.
    per_vim: Mutex<HashMap<String, VimLimits>>,
    /// Targets of this replica holding a cluster-wide VIM slot now.
    in_flight: Arc<AtomicU64>,
}

#[allow(clippy::too_many_arguments)]
impl Distribution {
    pub fn new(
        store: Arc<dyn DistributionStore>,
        vims: Arc<Vims>,
        entries: Arc<dyn CatalogStore>,
        registry: Arc<dyn RegistryStore>,
        blobs: Arc<dyn BlobStore>,
        accounts: Arc<dyn AccountStore>,
        auth: Arc<Auth>,
        enqueuer: Enqueuer,
        signer: DownloadSigner,
        config: DistributionConfig,
    ) -> Self {
        Self {
            global: Arc::new(Bucket::new(config.max_bytes_per_sec)),
            store,
            vims,
            entries,
            registry,
            blobs,
            accounts,
            auth,
            enqueuer,
            signer,
            config,
            per_vim: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Keep this replica's share of `distribution.max_bytes_per_sec` (the global cap)
    /// proportional to its share of the transfers running over all replicas (held VIM slots),
    /// so the cap holds however many replicas send; recomputed every 2 s until `stop`.
    pub async fn share_bandwidth(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let cap = self.config.max_bytes_per_sec;
        if cap == 0 {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let local = self.in_flight.load(Ordering::Relaxed);
            let cluster = match self.enqueuer.store().leases_held(SLOT_PREFIX).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "counting the cluster's transfers failed");
                    continue;
                }
            };
            self.global.set_rate(bandwidth_share(cap, local, cluster));
        }
    }

    pub fn signer(&self) -> &DownloadSigner {
        &self.signer
    }

    pub fn vims(&self) -> &Arc<Vims> {
        &self.vims
    }

    async fn may(&self, who: &Actor, action: Action, ns: &str) -> Result<()> {
        match who {
            Actor::Principal { principal, .. } => {
                self.auth
                    .authorize(&*self.accounts, principal, action, Resource::Namespace(ns))
                    .await
            }
            Actor::Operator(_) => Ok(()),
        }
    }

    /// The entries `images` names (ids, or manifest digests).
    async fn resolve_images(&self, images: &[String]) -> Result<Vec<EntryRecord>> {
        let mut out: Vec<EntryRecord> = Vec::new();
        for i in images {
            // Only well-formed ids and digests reach the database (its key columns may refuse
            // other text, e.g. MariaDB's ascii ones, PostgreSQL on NUL).
            let found = if i.starts_with("sha256:") || i.starts_with("sha512:") {
                if Digest::parse(i).is_err() {
                    return Err(Error::EntryUnknown(i.chars().take(200).collect()));
                }
                let q = crate::storage::catalog::EntryQuery {
                    digest: Some(i.clone()),
                    limit: 1000,
                    ..Default::default()
                };
                self.entries.catalog_query(&q).await?
            } else if crate::core::catalog::is_entry_id(i) {
                self.entries.catalog_get(i).await?.into_iter().collect()
            } else {
                Vec::new()
            };
            if found.is_empty() {
                return Err(Error::EntryUnknown(i.chars().take(200).collect()));
            }
            for e in found {
                if !out.iter().any(|o| o.id == e.id) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    async fn resolve_vims(&self, req: &DistributionRequest) -> Result<Vec<VimRecord>> {
        let mut out: Vec<VimRecord> = Vec::new();
        for v in &req.vims {
            let rec = self.vims.find(v).await?;
            if !out.iter().any(|o| o.id == rec.id) {
                out.push(rec);
            }
        }
        if let Some(sel) = &req.vim_selector {
            for rec in self.vims.all().await? {
                if selector_matches(sel, &rec.labels) && !out.iter().any(|o| o.id == rec.id) {
                    out.push(rec);
                }
            }
        }
        if out.is_empty() {
            return Err(Error::BadRequest(
                "no VIM: name some in `vims`, or give a `vim_selector` that matches some".into(),
            ));
        }
        Ok(out)
    }

    /// Start a distribution (or with `remove`, an un-distribution) job.
    pub async fn create(&self, who: &Actor, req: DistributionRequest, remove: bool) -> Result<DistributionView> {
        if req.images.is_empty() {
            return Err(Error::BadRequest(
                "images: at least one catalog entry id or digest".into(),
            ));
        }
        let method = match (&req.method, remove) {
            (_, true) => "remove".to_string(),
            (None, false) => "auto".to_string(),
            (Some(m), false) if METHODS.contains(&m.as_str()) => m.clone(),
            (Some(m), false) => {
                return Err(Error::BadRequest(format!(
                    "method {m:?}: one of {}",
                    METHODS.join(", ")
                )))
            }
        };
        let on_replace = req.on_replace.clone().unwrap_or_else(|| "hide".into());
        if !ON_REPLACE.contains(&on_replace.as_str()) {
            return Err(Error::BadRequest(format!(
                "on_replace: one of {}",
                ON_REPLACE.join(", ")
            )));
        }
        if let Some(v) = &req.visibility {
            if !matches!(v.as_str(), "private" | "shared" | "community" | "public") {
                return Err(Error::BadRequest(
                    "visibility: private, shared, community or public".into(),
                ));
            }
        }
        if req.tags.len() > 32 || req.tags.iter().any(|t| t.is_empty() || t.len() > 255) {
            return Err(Error::BadRequest("tags: at most 32, each 1 to 255 bytes".into()));
        }
        let entries = self.resolve_images(&req.images).await?;
        let mut namespaces: Vec<String> = entries.iter().map(|e| e.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in &namespaces {
            self.may(who, Action::Push, ns).await?;
        }
        let vims = self.resolve_vims(&req).await?;
        if entries.len().saturating_mul(vims.len()) > MAX_TARGETS {
            return Err(Error::BadRequest(format!("at most {MAX_TARGETS} targets in one job")));
        }
        for e in &entries {
            for v in &vims {
                let vm_only = matches!(v.kind.as_str(), "openstack" | "onap-multicloud");
                if vm_only && e.kind != "vm-image" {
                    return Err(Error::BadRequest(format!(
                        "entry {} is a {}: {} VIM {:?} takes VM images only",
                        e.id, e.kind, v.kind, v.name
                    )));
                }
            }
        }
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let options = JobOptions {
            on_replace,
            visibility: req.visibility.clone(),
            tags: req.tags.clone(),
            namespaces,
            container_disk: req.container_disk,
        };
        let job = DistributionRecord {
            id: id.clone(),
            created_by: who.name(),
            method: method.clone(),
            options: serde_json::to_value(&options).map_err(|e| Error::Internal(e.to_string()))?,
            created_at: now,
            updated_at: now,
        };
        let mut targets = Vec::new();
        for e in &entries {
            for v in &vims {
                targets.push(TargetRecord {
                    job_id: id.clone(),
                    entry_id: e.id.clone(),
                    vim_id: v.id.clone(),
                    state: "pending".into(),
                    method: None,
                    remote_id: None,
                    bytes_done: 0,
                    bytes_total: VmFacts::of(e).map(|f| f.size).unwrap_or(e.size),
                    rate: 0,
                    attempts: 0,
                    last_error: None,
                    skipped: false,
                    started_at: None,
                    finished_at: None,
                    updated_at: now,
                });
            }
        }
        self.store.distribution_add(&job, &targets).await?;
        for t in &targets {
            self.enqueue(t).await?;
        }
        self.vims
            .audit(
                who,
                if remove {
                    "distribution.remove"
                } else {
                    "distribution.create"
                },
                &id,
                "ok",
                Some(format!("{} images to {} VIMs by {method}", entries.len(), vims.len())),
            )
            .await;
        self.view_of(job, targets)
    }

    /// Queue a run of target `t`. Its unique key names the target and the version of the row
    /// that asks (`updated_at`): a retry made while the cancelled run is still winding down
    /// (deleting its half image) queues a run of its own instead of being folded into the
    /// ending one; the old run writes nothing more (the row left the states it writes from).
    async fn enqueue(&self, t: &TargetRecord) -> Result<()> {
        let payload = json!({"job": t.job_id, "entry": t.entry_id, "vim": t.vim_id});
        // The queue's own attempt count only bounds waiting for a busy VIM; the target's
        // attempts (distribution.max_attempts) bound the failures.
        let job = NewJob::new(QUEUE, KIND, payload, 100_000).unique(&format!(
            "dist/{}/{}/{}/{}",
            t.job_id, t.entry_id, t.vim_id, t.updated_at
        ));
        self.enqueuer.enqueue(&job).await?;
        Ok(())
    }

    fn view_of(&self, job: DistributionRecord, targets: Vec<TargetRecord>) -> Result<DistributionView> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &targets {
            *counts.entry(t.state.clone()).or_default() += 1;
        }
        let n = targets.len();
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        let state = if count("pending") == n {
            "pending"
        } else if count("active") == n {
            "active"
        } else if count("removed") == n {
            "removed"
        } else if count("cancelled") == n {
            "cancelled"
        } else if targets.iter().all(|t| FINAL_STATES.contains(&t.state.as_str())) {
            "failed"
        } else {
            "running"
        };
        Ok(DistributionView {
            id: job.id,
            created_by: job.created_by,
            method: job.method,
            state: state.into(),
            counts,
            options: job.options,
            targets: targets.iter().map(TargetView::from).collect(),
            created_at: crate::storage::rfc3339(job.created_at),
            updated_at: crate::storage::rfc3339(job.updated_at),
        })
    }

    async fn readable(&self, who: &Actor, job: &DistributionRecord) -> Result<()> {
        if let Actor::Principal {
            principal: Principal::User { admin: true, .. },
            ..
        } = who
        {
            return Ok(());
        }
        let opts: JobOptions = serde_json::from_value(job.options.clone()).unwrap_or_default();
        for ns in &opts.namespaces {
            self.may(who, Action::Pull, ns).await?;
        }
        if opts.namespaces.is_empty() {
            self.vims.may_change(who).await?;
        }
        Ok(())
    }

    pub async fn get(&self, who: &Actor, id: &str) -> Result<DistributionView> {
        let unknown = || Error::NotFoundWhat(format!("distribution {:?}", id.chars().take(200).collect::<String>()));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(unknown()); // ids are UUIDs we mint
        }
        let job = self.store.distribution_get(id).await?.ok_or_else(unknown)?;
        self.readable(who, &job).await?;
        let targets = self.store.targets_of(id).await?;
        self.view_of(job, targets)
    }

    /// Jobs, newest first (those the caller may read).
    pub async fn list(&self, who: &Actor, limit: u32) -> Result<Vec<DistributionView>> {
        self.vims.may_read(who).await?;
        let mut out = Vec::new();
        for job in self.store.distributions(limit.clamp(1, 1000), None).await? {
            if self.readable(who, &job).await.is_err() {
                continue;
            }
            let targets = self.store.targets_of(&job.id).await?;
            out.push(self.view_of(job, targets)?);
        }
        Ok(out)
    }

    /// The targets of job `id` that `who` acts on (all, or those of one VIM / entry), refused
    /// unless `who` may push to every namespace of the job's images; and the VIM's id.
    async fn targets_to_act_on(
        &self,
        who: &Actor,
        id: &str,
        vim: Option<&str>,
        entry: Option<&str>,
    ) -> Result<(Option<String>, Vec<TargetRecord>)> {
        let view = self.get(who, id).await?;
        let opts: JobOptions = serde_json::from_value(view.options).unwrap_or_default();
        for ns in &opts.namespaces {
            self.may(who, Action::Push, ns).await?;
        }
        let vim = match vim {
            Some(v) => Some(self.vims.find(v).await?.id),
            None => None,
        };
        let targets = self
            .store
            .targets_of(id)
            .await?
            .into_iter()
            .filter(|t| vim.as_ref().is_none_or(|v| *v == t.vim_id) && entry.is_none_or(|e| e == t.entry_id))
            .collect();
        Ok((vim, targets))
    }

    /// Cancel a job's targets that have not finished (all, or those of one VIM / entry).
    pub async fn cancel(
        &self,
        who: &Actor,
        id: &str,
        vim: Option<&str>,
        entry: Option<&str>,
    ) -> Result<DistributionView> {
        let (vim, targets) = self.targets_to_act_on(who, id, vim, entry).await?;
        for t in targets {
            if FINAL_STATES.contains(&t.state.as_str()) {
                continue;
            }
            let from = [t.state.as_str()];
            let now = now_ms().max(t.updated_at + 1);
            let done = TargetRecord {
                state: "cancelled".into(),
                finished_at: Some(now),
                updated_at: now,
                ..t.clone()
            };
            self.store.target_update(&done, &from).await?;
        }
        self.vims.audit(who, "distribution.cancel", id, "ok", vim).await;
        self.get(who, id).await
    }

    /// Run again the targets that failed or were cancelled (all, or those of one VIM / entry).
    pub async fn retry(
        &self,
        who: &Actor,
        id: &str,
        vim: Option<&str>,
        entry: Option<&str>,
    ) -> Result<DistributionView> {
        let (vim, targets) = self.targets_to_act_on(who, id, vim, entry).await?;
        for t in targets {
            if !matches!(t.state.as_str(), "failed" | "cancelled") {
                continue;
            }
            let now = now_ms().max(t.updated_at + 1);
            let again = TargetRecord {
                state: "pending".into(),
                attempts: 0,
                bytes_done: 0,
                rate: 0,
                finished_at: None,
                updated_at: now,
                ..t.clone()
            };
            if self.store.target_update(&again, &["failed", "cancelled"]).await? {
                self.enqueue(&again).await?;
            }
        }
        self.vims.audit(who, "distribution.retry", id, "ok", vim).await;
        self.get(who, id).await
    }

    /// How many targets may transfer to `vim` at once, over all replicas.
    fn vim_concurrency(&self, vim: &OpenVim) -> usize {
        vim.settings
            .concurrency
            .unwrap_or(self.config.per_vim_concurrency)
            .clamp(1, crate::core::vims::MAX_CONCURRENCY)
    }

    /// The concurrency slot and bandwidth bucket of one VIM.
    fn vim_limits(&self, vim: &OpenVim) -> (Arc<Semaphore>, Arc<Bucket>) {
        let Ok(mut map) = self.per_vim.lock() else {
            return (Arc::new(Semaphore::new(1)), Arc::new(Bucket::new(0)));
        };
        let fresh = || {
            let n = self.vim_concurrency(vim);
            let rate = vim
                .settings
                .max_bytes_per_sec
                .unwrap_or(self.config.per_vim_bytes_per_sec);
            (
                vim.record.updated_at,
                Arc::new(Semaphore::new(n)),
                Arc::new(Bucket::new(rate)),
            )
        };
        let slot = map.entry(vim.record.id.clone()).or_insert_with(fresh);
        // A VIM updated since: its new limits apply to the transfers that start from now on.
        if slot.0 != vim.record.updated_at {
            *slot = fresh();
        }
        (slot.1.clone(), slot.2.clone())
    }

    /// Write `t`'s new state (`change` applied to it now), provided it is still in one of
    /// `from`; `Stop::Cancelled` otherwise. The change is applied before the future is made, so
    /// the future holds no closure (and is `Send` for any lifetime).
    fn advance<'a>(
        &'a self,
        t: &'a mut TargetRecord,
        from: &'a [&'a str],
        change: impl FnOnce(&mut TargetRecord),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Attempt<()>> + Send + 'a>> {
        let mut next = t.clone();
        change(&mut next);
        next.updated_at = now_ms().max(t.updated_at + 1);
        Box::pin(async move {
            if self.store.target_update(&next, from).await? {
                *t = next;
                Ok(())
            } else {
                Err(Stop::Cancelled)
            }
        })
    }

    /// One claim of a target's job.
    async fn run_target(&self, ctx: &JobContext) -> std::result::Result<(), JobError> {
        let p = &ctx.job.payload;
        let field = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(job_id), Some(entry_id), Some(vim_id)) = (field("job"), field("entry"), field("vim")) else {
            return Err(JobError::Fatal("distribution job without job, entry and vim".into()));
        };
        let store_err = |e: crate::storage::StoreError| JobError::Retry(e.to_string());
        let Some(mut t) = self
            .store
            .target_get(&job_id, &entry_id, &vim_id)
            .await
            .map_err(store_err)?
        else {
            return Ok(()); // the job was removed
        };
        if FINAL_STATES.contains(&t.state.as_str()) {
            return Ok(());
        }
        let Some(job) = self.store.distribution_get(&job_id).await.map_err(store_err)? else {
            return Ok(());
        };
        // The VIM or the entry may be gone since the job was made.
        let vim = match self.vims.store().vim_get(&vim_id).await.map_err(store_err)? {
            Some(v) => v,
            None => return self.finish_failed(&mut t, "the VIM was removed".into()).await,
        };
        // A removal works from what we recorded, so it runs after the entry's deletion too.
        let entry = self.entries.catalog_get(&entry_id).await.map_err(store_err)?;
        if entry.is_none() && job.method != "remove" {
            return self.finish_failed(&mut t, "the catalog entry was deleted".into()).await;
        }
        let open = match self.vims.open(&vim) {
            Ok(o) => o,
            Err(e) => return self.finish_failed(&mut t, e.to_string()).await,
        };
        let (slots, bucket) = self.vim_limits(&open);
        let busy = || {
            // Busy with other targets: come back soon, without holding a worker meanwhile.
            JobError::Later(
                Duration::from_millis(self.config.poll_interval_ms.max(100)),
                format!("VIM {} is busy", vim.name),
            )
        };
        let Ok(_slot) = slots.try_acquire_owned() else {
            return Err(busy());
        };
        // The same limit over every replica: one of the VIM's slot leases.
        let n = self.vim_concurrency(&open);
        let owner = format!("{}:{}", crate::core::jobs::replica_id(), ctx.job.id);
        let _cluster_slot = match SlotLease::take(self.enqueuer.store(), &vim.id, n, owner, &self.in_flight).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(busy()),
            Err(e) => return Err(store_err(e)),
        };
        let opts: JobOptions = serde_json::from_value(job.options.clone()).unwrap_or_default();
        let started = now_ms();
        let from = [t.state.clone()];
        let from: Vec<&str> = from.iter().map(String::as_str).collect();
        if self
            .advance(&mut t, &from, |n| {
                n.state = if job.method == "remove" {
                    "pending".into()
                } else {
                    "transferring".into()
                };
                n.attempts += 1;
                n.started_at = n.started_at.or(Some(started));
            })
            .await
            .is_err()
        {
            return Ok(()); // cancelled meanwhile
        }
        let deadline = Duration::from_secs(self.config.attempt_timeout_secs.max(1));
        // Boxed as Send here, where every borrow has its concrete lifetime (the compiler cannot
        // prove the unboxed future Send for all lifetimes).
        let attempt: std::pin::Pin<Box<dyn std::future::Future<Output = Attempt<()>> + Send + '_>> = Box::pin(async {
            match (&entry, &open.client) {
                _ if job.method == "remove" => self.remove_from(&open, &entry_id, &mut t).await,
                (None, _) => Err(Stop::Fail("the catalog entry was deleted".into())),
                (Some(entry), VimClient::Glance(g)) => {
                    self.to_glance(g, &open, entry, &job, &opts, &bucket, &mut t).await
                }
                (Some(entry), _) => self.to_other(&open, entry, &job, &opts, &bucket, &mut t).await,
            }
        });
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, attempt) => match r {
                Ok(r) => r,
                Err(_) => Err(Stop::Retry(format!("attempt took longer than {} s", deadline.as_secs()))),
            },
            _ = ctx.shutdown().cancelled() => Err(Stop::Retry("the server is shutting down".into())),
        };
        // Re-read: the attempt may have moved it (and a cancel may have come meanwhile).
        let mut t = match self
            .store
            .target_get(&job_id, &entry_id, &vim_id)
            .await
            .map_err(store_err)?
        {
            Some(t) => t,
            None => return Ok(()),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Stop::Cancelled) => Ok(()),
            Err(Stop::Fail(msg)) => self.finish_failed(&mut t, msg).await,
            Err(Stop::Retry(msg)) if t.attempts >= self.config.max_attempts.max(1) => {
                let msg = format!("{msg} (after {} attempts)", t.attempts);
                self.finish_failed(&mut t, msg).await
            }
            Err(Stop::Retry(msg)) => {
                let live: Vec<&str> = ["pending", "transferring", "verifying"].to_vec();
                let _ = self
                    .advance(&mut t, &live, |n| {
                        n.state = "pending".into();
                        n.last_error = Some(msg.clone());
                        n.rate = 0;
                    })
                    .await;
                let backoff = Backoff::new(
                    Duration::from_millis(self.config.retry_base_ms.max(1)),
                    Duration::from_secs(self.config.retry_max_secs.max(1)),
                );
                Err(JobError::Later(backoff.delay(t.attempts), msg))
            }
        }
    }

    async fn finish_failed(&self, t: &mut TargetRecord, msg: String) -> std::result::Result<(), JobError> {
        let live = ["pending", "transferring", "verifying"];
        let _ = self
            .advance(t, &live, |n| {
                n.state = "failed".into();
                n.last_error = Some(msg.clone());
                n.finished_at = Some(now_ms());
                n.rate = 0;
            })
            .await;
        Err(JobError::Fatal(msg))
    }

    /// Mark the target active, and record where the image is.
    async fn finish_active(
        &self,
        t: &mut TargetRecord,
        remote_id: &str,
        skipped: bool,
        image: VimImageRecord,
    ) -> Attempt<()> {
        self.vims.store().inventory_put(&image).await?;
        let live = ["transferring", "verifying"];
        self.advance(t, &live, |n| {
            n.state = "active".into();
            n.remote_id = Some(remote_id.to_string());
            n.skipped = skipped;
            n.bytes_done = if skipped { 0 } else { n.bytes_total };
            n.finished_at = Some(now_ms());
            n.last_error = None;
        })
        .await
    }

    /// Where the VIM downloads our blobs from, if it can: the VIM's own relay, else the first
    /// configured relay whose selector its labels match, else its download URL, else the
    /// configured public URL.
    fn download_base(&self, vim: &OpenVim) -> Option<String> {
        vim.settings
            .relay_url
            .clone()
            .or_else(|| relay_for(&self.config.relays, &vim.record.labels))
            .or_else(|| vim.settings.download_url.clone())
            .or_else(|| self.config.public_url.clone())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// A signed URL of `digest` (readable in `repository`) under `base`.
    pub fn download_url(&self, base: &str, repository: &str, digest: &Digest) -> Result<String> {
        let ttl = self.config.download_url_ttl_secs.max(60) as i64;
        let token = self.signer.token(&DownloadGrant {
            repository: repository.to_string(),
            digest: digest.to_string(),
            expires: now_ms() / 1000 + ttl,
        })?;
        Ok(format!("{base}/dl/{token}"))
    }

    /// One attempt to put `entry` on a Glance.
    #[allow(clippy::too_many_arguments)]
    async fn to_glance(
        &self,
        g: &GlanceClient,
        vim: &OpenVim,
        entry: &EntryRecord,
        job: &DistributionRecord,
        opts: &JobOptions,
        bucket: &Arc<Bucket>,
        t: &mut TargetRecord,
    ) -> Attempt<()> {
        let facts = VmFacts::of(entry)?;
        let record = |img: &GlanceImage| glance_record(&vim.record.id, entry, &facts, img);
        // 1. Already there? Ours under the catalog name, holding the bytes.
        let named = g.list_images(&[("name", entry.name.as_str())]).await?;
        if let Some(img) = named
            .iter()
            .find(|i| i.properties.get("im_entry_id") == Some(&entry.id) && facts.verified_by(i).is_ok())
        {
            self.replace_older(g, &vim.record.id, entry, &named, &img.id, opts)
                .await?;
            return self.finish_active(t, &img.id, true, record(img)).await;
        }
        let same_bytes = g.list_images(&[("os_hash_value", facts.sha512.as_str())]).await?;
        if let Some(img) = same_bytes
            .iter()
            .find(|i| i.name.as_deref() == Some(entry.name.as_str()) && facts.verified_by(i).is_ok())
        {
            // Someone put the same bytes there under our name: it is this entry.
            self.replace_older(g, &vim.record.id, entry, &named, &img.id, opts)
                .await?;
            return self.finish_active(t, &img.id, true, record(img)).await;
        }
        // An image under the name that no Image Manager made: taking the name would make
        // Heat's lookup ambiguous.
        if let Some(foreign) = named.iter().find(|i| !i.properties.contains_key("im_entry_id")) {
            return Err(Stop::Fail(format!(
                "the name {:?} is taken on this VIM by image {} that Image Manager did not make; \
                 rename or delete it there",
                entry.name, foreign.id
            )));
        }
        // 2. Half-made images of earlier attempts of this target go first (Glance cannot take
        // the bytes twice into one image).
        let temp = format!("{}.im-upload-{}", entry.name, &job.id[..8.min(job.id.len())]);
        for old in g.list_images(&[("name", temp.as_str())]).await? {
            g.delete_image(&old.id).await?;
        }
        let method = match job.method.as_str() {
            "auto" => {
                let web = self.download_base(vim).is_some()
                    && g.check()
                        .await
                        .map(|h| h.import_methods.iter().any(|m| m == "web-download"))
                        .unwrap_or(false);
                if web {
                    "web-download"
                } else {
                    "push"
                }
            }
            m => m,
        }
        .to_string();
        let visibility = opts
            .visibility
            .clone()
            .or_else(|| vim.settings.image_visibility.clone())
            .unwrap_or_else(|| "private".into());
        let mut tags = vec!["image-manager".to_string()];
        tags.extend(opts.tags.iter().cloned());
        let created = g
            .create_image(&NewGlanceImage {
                name: temp.clone(),
                disk_format: facts.disk_format.clone(),
                container_format: facts.container_format.clone(),
                visibility,
                min_disk: facts.min_disk_gib,
                min_ram: facts.min_ram_mib,
                tags,
                properties: facts.properties.clone(),
            })
            .await?;
        let id = created.id.clone();
        let m = method.clone();
        self.advance(t, &["transferring"], |n| {
            n.remote_id = Some(id.clone());
            n.method = Some(m);
        })
        .await?;
        // 3. The bytes.
        let sent = match method.as_str() {
            "web-download" => {
                let Some(base) = self.download_base(vim) else {
                    return Err(Stop::Fail(
                        "web-download needs distribution.public_url or the VIM's download_url".into(),
                    ));
                };
                let url = self.download_url(&base, &entry.repository, &facts.digest)?;
                g.import_web_download(&id, &url).await?;
                self.await_glance(g, &id, t).await
            }
            _ => self.push_to_glance(g, &id, &facts, bucket, t).await,
        };
        if let Err(e) = sent {
            // Failed or cancelled: the half image goes (Glance cannot take the bytes again).
            self.discard(g, &id).await;
            return Err(e);
        }
        // 4. Verify.
        self.advance(t, &["transferring"], |n| n.state = "verifying".into())
            .await?;
        let img = g
            .get_image(&id)
            .await?
            .ok_or_else(|| Stop::Retry("the image vanished from Glance after its upload".into()))?;
        if let Err(why) = facts.verified_by(&img) {
            let _ = g.delete_image(&id).await;
            return Err(Stop::Retry(format!(
                "verification failed ({why}): the copy was deleted"
            )));
        }
        // 5. The catalog name, and what becomes of the versions it replaces.
        let named = g.list_images(&[("name", entry.name.as_str())]).await?;
        let img = g
            .update(
                &id,
                &[PatchOp::Replace {
                    path: "/name".into(),
                    value: json!(entry.name),
                }],
            )
            .await?;
        self.replace_older(g, &vim.record.id, entry, &named, &id, opts).await?;
        self.finish_active(t, &id, false, record(&img)).await
    }

    /// Delete a half-made image until Glance no longer shows it: an upload Glance is still
    /// reading when the transfer stops may put it back in its queue right after a first delete.
    /// Best effort, bounded (a later attempt deletes leftovers under the temporary name).
    async fn discard(&self, g: &GlanceClient, id: &str) {
        let every = Duration::from_millis(self.config.poll_interval_ms.clamp(50, 2000));
        for _ in 0..20 {
            let _ = g.delete_image(id).await;
            match g.get_image(id).await {
                Ok(None) => return,
                Ok(Some(img)) if img.status == "deleted" => return,
                _ => tokio::time::sleep(every).await,
            }
        }
        tracing::warn!(
            image = id,
            "a half-made Glance image could not be deleted; the next attempt will"
        );
    }

    /// The images under `entry`'s name that earlier versions left (not `keep_id`): renamed
    /// and kept, hidden or deleted.
    async fn replace_older(
        &self,
        g: &GlanceClient,
        vim_id: &str,
        entry: &EntryRecord,
        named: &[GlanceImage],
        keep_id: &str,
        opts: &JobOptions,
    ) -> Attempt<()> {
        for old in named {
            if old.id == keep_id || old.name.as_deref() != Some(entry.name.as_str()) {
                continue;
            }
            if !old.properties.contains_key("im_entry_id") {
                continue; // not ours to touch
            }
            let version = old
                .properties
                .get("im_version")
                .cloned()
                .unwrap_or_else(|| old.id.clone());
            match opts.on_replace.as_str() {
                "delete" => g.delete_image(&old.id).await?,
                "keep" => {
                    g.update(
                        &old.id,
                        &[PatchOp::Replace {
                            path: "/name".into(),
                            value: json!(format!("{} ({version})", entry.name)),
                        }],
                    )
                    .await?;
                }
                _ => {
                    g.update(
                        &old.id,
                        &[
                            PatchOp::Replace {
                                path: "/name".into(),
                                value: json!(format!("{} ({version})", entry.name)),
                            },
                            PatchOp::Replace {
                                path: "/os_hidden".into(),
                                value: json!(true),
                            },
                        ],
                    )
                    .await?;
                }
            }
            if let Err(e) = self.vims.store().inventory_delete(vim_id, &old.id).await {
                tracing::debug!(error = %e, "inventory cleanup");
            }
        }
        Ok(())
    }

    /// Stream the blob to Glance, capped by the bandwidth limits, its progress recorded.
    async fn push_to_glance(
        &self,
        g: &GlanceClient,
        id: &str,
        facts: &VmFacts,
        bucket: &Arc<Bucket>,
        t: &mut TargetRecord,
    ) -> Attempt<()> {
        let stream = self.blobs.get(&facts.digest, None).await?;
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let global = self.global.clone();
        let vim_bucket = bucket.clone();
        let body: crate::storage::ByteStream = Box::pin(stream.then(move |chunk| {
            let (counter, global, vim_bucket) = (counter.clone(), global.clone(), vim_bucket.clone());
            async move {
                if let Ok(c) = &chunk {
                    let n = c.len() as u64;
                    global.take(n).await;
                    vim_bucket.take(n).await;
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                chunk
            }
        }));
        let upload = g.upload(id, reqwest::Body::wrap_stream(body), Some(facts.size));
        self.with_progress(upload, done, t).await
    }

    /// Run `transfer`, recording `done` bytes about every second; fails when no byte moved
    /// for `stall_timeout_secs`, stops when the target was cancelled.
    async fn with_progress<F, T>(&self, transfer: F, done: Arc<AtomicU64>, t: &mut TargetRecord) -> Attempt<T>
    where
        F: std::future::Future<Output = crate::adapters::AdapterResult<T>>,
    {
        tokio::pin!(transfer);
        let stall = Duration::from_secs(self.config.stall_timeout_secs.max(1));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (0u64, Instant::now());
        let began = Instant::now();
        loop {
            tokio::select! {
                r = &mut transfer => {
                    let n = done.load(Ordering::Relaxed);
                    let secs = began.elapsed().as_secs_f64().max(0.001);
                    let _ = self.advance(t, &["transferring"], |x| { x.bytes_done = n; x.rate = (n as f64 / secs) as u64; }).await;
                    return r.map_err(Stop::from);
                }
                _ = tick.tick() => {
                    let n = done.load(Ordering::Relaxed);
                    if n != last.0 {
                        last = (n, Instant::now());
                    } else if last.1.elapsed() >= stall {
                        return Err(Stop::Retry(format!("the transfer stalled: no byte moved in {} s", stall.as_secs())));
                    }
                    let secs = began.elapsed().as_secs_f64().max(0.001);
                    self.advance(t, &["transferring"], |x| { x.bytes_done = n; x.rate = (n as f64 / secs) as u64; }).await?;
                }
            }
        }
    }

    /// Wait for Glance to finish an import: active, or failed (back to queued with
    /// `os_glance_failed_import`, or killed).
    async fn await_glance(&self, g: &GlanceClient, id: &str, t: &mut TargetRecord) -> Attempt<()> {
        let every = Duration::from_millis(self.config.poll_interval_ms.max(50));
        let stall = Duration::from_secs(self.config.stall_timeout_secs.max(1));
        // Glance tells no progress of an import: one that is slower than the configured floor
        // (the image's size at import_min_bytes_per_sec, after the stall timeout) fails its
        // attempt instead of holding a worker and the VIM's slot for the attempt's 6 hours.
        let floor = self.config.import_min_bytes_per_sec;
        let import_limit = stall + Duration::from_secs(t.bytes_total.checked_div(floor).unwrap_or(u64::MAX / 4));
        let mut seen = (String::new(), Instant::now());
        loop {
            let img = g
                .get_image(id)
                .await?
                .ok_or_else(|| Stop::Retry("the image vanished from Glance during its import".into()))?;
            let failed = img
                .properties
                .get("os_glance_failed_import")
                .is_some_and(|v| !v.is_empty());
            match img.status.as_str() {
                "active" => return Ok(()),
                "killed" | "deleted" | "deactivated" => {
                    return Err(Stop::Retry(format!("Glance's import ended with status {}", img.status)))
                }
                "queued" if failed => {
                    let why = g
                        .import_failure(id)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "no reason given".into());
                    return Err(Stop::Retry(format!("Glance's web-download import failed: {why}")));
                }
                s => {
                    if s != seen.0 {
                        seen = (s.to_string(), Instant::now());
                    } else if s == "queued" && seen.1.elapsed() >= stall {
                        return Err(Stop::Retry(format!(
                            "Glance did not start the import in {} s",
                            stall.as_secs()
                        )));
                    } else if s != "queued" && seen.1.elapsed() >= import_limit {
                        return Err(Stop::Retry(format!(
                            "Glance's import is still {s} after {} s (slower than distribution.import_min_bytes_per_sec)",
                            import_limit.as_secs()
                        )));
                    }
                }
            }
            // A cancel shows as a failed write.
            self.advance(t, &["transferring"], |_| {}).await?;
            tokio::time::sleep(every).await;
        }
    }

    /// One attempt to put `entry` on an OCI registry or through ONAP MultiCloud.
    async fn to_other(
        &self,
        vim: &OpenVim,
        entry: &EntryRecord,
        job: &DistributionRecord,
        opts: &JobOptions,
        bucket: &Arc<Bucket>,
        t: &mut TargetRecord,
    ) -> Attempt<()> {
        match &vim.client {
            VimClient::Registry(r) => self.to_registry(r, vim, entry, opts, bucket, t).await,
            VimClient::MultiCloud(m) => self.to_multicloud(m, vim, entry, job, opts, t).await,
            VimClient::Glance(_) => Err(Stop::Fail("internal: Glance VIM routed to the wrong path".into())),
        }
    }

    /// Copy the entry's image graph (an index and every platform, or one manifest) to the
    /// registry under its repository and tag, skipping what is there, then verify every blob and
    /// manifest at the target. A VM image with `container_disk` becomes a KubeVirt
    /// containerDisk instead.
    async fn to_registry(
        &self,
        r: &RegistryClient,
        vim: &OpenVim,
        entry: &EntryRecord,
        opts: &JobOptions,
        bucket: &Arc<Bucket>,
        t: &mut TargetRecord,
    ) -> Attempt<()> {
        let root = Digest::parse(&entry.digest).map_err(|e| Stop::Fail(e.to_string()))?;
        let done = Arc::new(AtomicU64::new(0));
        let src = StoreSource {
            repo: entry.repository.clone(),
            registry: self.registry.clone(),
            blobs: self.blobs.clone(),
            global: self.global.clone(),
            vim: bucket.clone(),
            done: done.clone(),
        };
        let remote_id = format!("{}:{}", entry.repository, entry.tag);
        let record = |digest: &str, size: u64| VimImageRecord {
            vim_id: vim.record.id.clone(),
            remote_id: remote_id.clone(),
            name: Some(entry.repository.clone()),
            status: Some("active".into()),
            size: Some(size),
            digest: Some(digest.to_string()),
            sha512: None,
            entry_id: Some(entry.id.clone()),
            meta: json!({"tag": entry.tag, "container_disk": opts.container_disk}),
            seen_at: now_ms(),
        };
        let m = if opts.container_disk { "container-disk" } else { "push" }.to_string();
        self.advance(t, &["transferring"], |n| n.method = Some(m)).await?;
        if opts.container_disk {
            let facts = VmFacts::of(entry)?;
            let disk = DiskImage {
                digest: facts.digest.clone(),
                size: facts.size,
                format: facts.disk_format.clone(),
                name: entry.name.rsplit('/').next().unwrap_or(&entry.name).to_string(),
            };
            let cd = self
                .with_progress(
                    push_container_disk(&src, r, &entry.repository, &entry.tag, &disk, &|_| {}),
                    done.clone(),
                    t,
                )
                .await?;
            return self
                .finish_active(t, &remote_id, !cd.pushed, record(cd.manifest.as_str(), cd.layer_size))
                .await;
        }
        if verify_image(&src, r, &entry.repository, &entry.tag, &root).await? {
            return self
                .finish_active(t, &remote_id, true, record(root.as_str(), entry.size))
                .await;
        }
        self.with_progress(
            copy_image(&src, r, &entry.repository, &entry.tag, &root, &|_| {}),
            done,
            t,
        )
        .await?;
        self.advance(t, &["transferring"], |n| n.state = "verifying".into())
            .await?;
        if !verify_image(&src, r, &entry.repository, &entry.tag, &root).await? {
            return Err(Stop::Retry(
                "verification failed: the registry does not serve every blob and manifest".into(),
            ));
        }
        self.finish_active(t, &remote_id, false, record(root.as_str(), entry.size))
            .await
    }

    /// Have MultiCloud create the image from our signed link (`imagePath`), then wait for it to
    /// be active and check its size and hashes.
    async fn to_multicloud(
        &self,
        m: &MultiCloudClient,
        vim: &OpenVim,
        entry: &EntryRecord,
        _job: &DistributionRecord,
        opts: &JobOptions,
        t: &mut TargetRecord,
    ) -> Attempt<()> {
        let facts = VmFacts::of(entry)?;
        let Some(base) = self.download_base(vim) else {
            return Err(Stop::Fail(
                "MultiCloud fetches images from a URL of ours: set distribution.public_url or the VIM's download_url"
                    .into(),
            ));
        };
        let holds = |img: &MultiCloudImage| -> std::result::Result<(), String> {
            if img.status.as_deref() != Some("active") {
                return Err(format!("status is {:?}, not active", img.status));
            }
            if img.size() != Some(facts.size) {
                return Err(format!("size is {:?}, ours {}", img.size(), facts.size));
            }
            if img.checksum.as_deref() != Some(facts.md5.as_str()) {
                return Err("checksum differs from our md5".into());
            }
            if img.os_hash_algo.as_deref() == Some("sha512")
                && img.os_hash_value.as_deref() != Some(facts.sha512.as_str())
            {
                return Err("os_hash_value differs from our sha512".into());
            }
            Ok(())
        };
        let record = |img: &MultiCloudImage| VimImageRecord {
            vim_id: vim.record.id.clone(),
            remote_id: img.id.clone(),
            name: img.name.clone(),
            status: img.status.clone(),
            size: img.size(),
            digest: Some(facts.digest.to_string()),
            sha512: Some(facts.sha512.clone()),
            entry_id: Some(entry.id.clone()),
            meta: serde_json::to_value(img).unwrap_or(Value::Null),
            seen_at: now_ms(),
        };
        self.advance(t, &["transferring"], |n| n.method = Some("web-download".into()))
            .await?;
        if let Some(img) = m.list(Some(&entry.name)).await?.into_iter().find(|i| holds(i).is_ok()) {
            return self.finish_active(t, &img.id, true, record(&img)).await;
        }
        let url = self.download_url(&base, &entry.repository, &facts.digest)?;
        let visibility = opts
            .visibility
            .clone()
            .or_else(|| vim.settings.image_visibility.clone())
            .unwrap_or_else(|| "private".into());
        let created = m
            .create(&NewMultiCloudImage {
                name: entry.name.clone(),
                image_path: url,
                image_type: facts.disk_format.clone(),
                container_format: facts.container_format.clone(),
                visibility,
                properties: facts
                    .properties
                    .iter()
                    .map(|(k, v)| Property {
                        key_name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })
            .await?;
        let id = created.id.clone();
        self.advance(t, &["transferring"], |n| n.remote_id = Some(id.clone()))
            .await?;
        if created.return_code == Some(0) {
            // An image of that name was there already: it is ours only if it holds our bytes.
            return match holds(&created) {
                Ok(()) => self.finish_active(t, &id, true, record(&created)).await,
                Err(why) => Err(Stop::Fail(format!(
                    "MultiCloud has an image named {:?} already ({id}) that is not this one: {why}",
                    entry.name
                ))),
            };
        }
        let every = Duration::from_millis(self.config.poll_interval_ms.max(50));
        let stall = Duration::from_secs(self.config.stall_timeout_secs.max(1));
        let mut seen = (String::new(), Instant::now());
        let img = loop {
            let img = m
                .get(&id)
                .await?
                .ok_or_else(|| Stop::Retry("the image vanished from MultiCloud while it was made".into()))?;
            let status = img.status.clone().unwrap_or_default();
            match status.as_str() {
                "active" => break img,
                "killed" | "deleted" | "deactivated" => {
                    let _ = m.delete(&id).await;
                    return Err(Stop::Retry(format!("MultiCloud's image ended {status}")));
                }
                s if s != seen.0 => seen = (s.to_string(), Instant::now()),
                _ if seen.1.elapsed() >= stall => {
                    let _ = m.delete(&id).await;
                    return Err(Stop::Retry(format!(
                        "MultiCloud's image stayed {} for {} s",
                        seen.0,
                        stall.as_secs()
                    )));
                }
                _ => {}
            }
            self.advance(t, &["transferring"], |_| {}).await?;
            tokio::time::sleep(every).await;
        };
        self.advance(t, &["transferring"], |n| n.state = "verifying".into())
            .await?;
        if let Err(why) = holds(&img) {
            let _ = m.delete(&id).await;
            return Err(Stop::Retry(format!(
                "verification failed ({why}): the copy was deleted"
            )));
        }
        self.finish_active(t, &id, false, record(&img)).await
    }

    /// Un-distribute: remove the images of `entry` that the VIM holds (as we recorded them).
    async fn remove_from(&self, vim: &OpenVim, entry_id: &str, t: &mut TargetRecord) -> Attempt<()> {
        let held = self.vims.store().inventory_of_entry(entry_id).await?;
        for img in held.iter().filter(|i| i.vim_id == vim.record.id) {
            match &vim.client {
                VimClient::Glance(g) => g.delete_image(&img.remote_id).await?,
                VimClient::MultiCloud(m) => m.delete(&img.remote_id).await?,
                VimClient::Registry(r) => {
                    let digest = img.digest.as_deref().and_then(|d| Digest::parse(d).ok());
                    let repo = img
                        .remote_id
                        .rsplit_once(':')
                        .map(|(repo, _)| repo)
                        .unwrap_or(&img.remote_id);
                    if let Some(d) = digest {
                        r.delete_manifest(repo, &d).await?;
                    }
                }
            }
            self.vims
                .store()
                .inventory_delete(&vim.record.id, &img.remote_id)
                .await?;
        }
        self.advance(t, &["pending"], |n| {
            n.state = "removed".into();
            n.finished_at = Some(now_ms());
            n.last_error = None;
        })
        .await
    }

    /// What the catalog's VM images and manifests are known by: sha512 of the disk bytes →
    /// entry, and manifest digest → entries.
    async fn catalog_index(&self) -> Result<(HashMap<String, String>, HashMap<String, Vec<String>>)> {
        let (mut by_sha512, mut by_digest) = (HashMap::new(), HashMap::<String, Vec<String>>::new());
        let mut after = None;
        loop {
            let q = crate::storage::catalog::EntryQuery {
                after: after.clone(),
                limit: 5000,
                ..Default::default()
            };
            let page = self.entries.catalog_query(&q).await?;
            for e in &page {
                if let Some(sha) = e.details.pointer("/vm/checksums/sha512").and_then(Value::as_str) {
                    by_sha512.entry(sha.to_string()).or_insert_with(|| e.id.clone());
                }
                by_digest.entry(e.digest.clone()).or_default().push(e.id.clone());
            }
            match page.last() {
                Some(last) if page.len() == 5000 => {
                    after = Some(crate::storage::catalog::Cursor::Name(
                        last.name.clone(),
                        last.version.clone(),
                        last.id.clone(),
                    ))
                }
                _ => break,
            }
        }
        Ok((by_sha512, by_digest))
    }

    /// List what a VIM holds and record it: images that are catalog entries (our entry id
    /// property, or the same sha512 under Glance's sha512 `os_hash_value`) are linked to
    /// them, the rest listed as found there.
    pub async fn sync_inventory(&self, vim: &VimRecord) -> Result<SyncReport> {
        let open = self.vims.open(vim)?;
        let started = now_ms();
        let (by_sha512, by_digest) = self.catalog_index().await?;
        let upstream = |e: AdapterError| Error::Upstream(format!("VIM {}: {}", vim.name, e.message));
        let mut images = Vec::new();
        match &open.client {
            VimClient::Glance(g) => {
                for img in g.list_images(&[]).await.map_err(upstream)? {
                    let sha512 = img
                        .os_hash_value
                        .clone()
                        .filter(|_| img.os_hash_algo.as_deref() == Some("sha512"));
                    let ours = img.properties.get("im_entry_id").cloned();
                    let mut entry_id = None;
                    if let Some(id) = ours {
                        // Ours, provided it holds that entry's bytes still.
                        if sha512.as_ref().is_some_and(|s| by_sha512.get(s) == Some(&id)) {
                            entry_id = Some(id);
                        }
                    }
                    if entry_id.is_none() {
                        entry_id = sha512.as_ref().and_then(|s| by_sha512.get(s)).cloned();
                    }
                    images.push(VimImageRecord {
                        vim_id: vim.id.clone(),
                        remote_id: img.id.clone(),
                        name: img.name.clone(),
                        status: Some(img.status.clone()),
                        size: img.size,
                        digest: img.properties.get("im_digest").cloned(),
                        sha512,
                        entry_id,
                        meta: serde_json::to_value(&img).unwrap_or(Value::Null),
                        seen_at: started,
                    });
                }
            }
            VimClient::MultiCloud(m) => {
                for img in m.list(None).await.map_err(upstream)? {
                    let sha512 = img
                        .os_hash_value
                        .clone()
                        .filter(|_| img.os_hash_algo.as_deref() == Some("sha512"));
                    let entry_id = sha512.as_ref().and_then(|s| by_sha512.get(s)).cloned();
                    images.push(VimImageRecord {
                        vim_id: vim.id.clone(),
                        remote_id: img.id.clone(),
                        name: img.name.clone(),
                        status: img.status.clone(),
                        size: img.size(),
                        digest: img.property("im_digest").map(str::to_string),
                        sha512,
                        entry_id,
                        meta: serde_json::to_value(&img).unwrap_or(Value::Null),
                        seen_at: started,
                    });
                }
            }
            VimClient::Registry(r) => {
                // Every tag of every repository, by digest; at most MAX_TARGETS of them.
                'repos: for repo in r.repositories().await.map_err(upstream)? {
                    for tag in r.tags(&repo).await.map_err(upstream)? {
                        if images.len() >= MAX_TARGETS {
                            break 'repos;
                        }
                        let Some((digest, size)) = r.manifest_head(&repo, &tag).await.map_err(upstream)? else {
                            continue;
                        };
                        let entry_id = by_digest.get(digest.as_str()).and_then(|ids| ids.first()).cloned();
                        images.push(VimImageRecord {
                            vim_id: vim.id.clone(),
                            remote_id: format!("{repo}:{tag}"),
                            name: Some(repo.clone()),
                            status: Some("active".into()),
                            size: Some(size),
                            digest: Some(digest.to_string()),
                            sha512: None,
                            entry_id,
                            meta: json!({"tag": tag}),
                            seen_at: started,
                        });
                    }
                }
            }
        }
        let known = images.iter().filter(|i| i.entry_id.is_some()).count();
        self.vims.store().inventory_replace(&vim.id, &images, started).await?;
        Ok(SyncReport {
            vim: vim.id.clone(),
            images: images.len(),
            known,
            unknown: images.len() - known,
            synced_at: crate::storage::rfc3339(started),
        })
    }

    /// Sync every VIM's inventory (the periodic sync); failures are logged per VIM.
    pub async fn sync_all(&self) {
        let vims = match self.vims.all().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing VIMs for the inventory sync failed");
                return;
            }
        };
        futures::stream::iter(vims)
            .map(|v| async move {
                if let Err(e) = self.sync_inventory(&v).await {
                    tracing::info!(vim = %v.name, error = %e, "inventory sync failed");
                }
            })
            .buffer_unordered(8)
            .for_each(|()| async {})
            .await;
    }

    /// The VIMs that hold `entry_id` (for refusing its deletion).
    pub async fn holders(&self, entry_id: &str) -> Result<Vec<VimImageRecord>> {
        Ok(self.vims.store().inventory_of_entry(entry_id).await?)
    }
}

/// The inventory record of a Glance image of `entry`.
fn glance_record(vim_id: &str, entry: &EntryRecord, facts: &VmFacts, img: &GlanceImage) -> VimImageRecord {
    VimImageRecord {
        vim_id: vim_id.to_string(),
        remote_id: img.id.clone(),
        name: img.name.clone(),
        status: Some(img.status.clone()),
        size: img.size,
        digest: Some(facts.digest.to_string()),
        sha512: img.os_hash_value.clone(),
        entry_id: Some(entry.id.clone()),
        meta: serde_json::to_value(img).unwrap_or(Value::Null),
        seen_at: now_ms(),
    }
}

/// Our stores as the source of an OCI copy: manifests and blobs readable in one repository,
/// the blobs' bytes capped by the bandwidth buckets and counted.
struct StoreSource {
    repo: String,
    registry: Arc<dyn RegistryStore>,
    blobs: Arc<dyn BlobStore>,
    global: Arc<Bucket>,
    vim: Arc<Bucket>,
    done: Arc<AtomicU64>,
}

#[async_trait]
impl ImageSource for StoreSource {
    async fn manifest(&self, digest: &Digest) -> crate::adapters::AdapterResult<(String, bytes::Bytes)> {
        let m = self
            .registry
            .manifest_by_digest(&self.repo, digest.as_str(), true)
            .await
            .map_err(|e| AdapterError::new(AdapterErrorKind::Transient, format!("reading manifest {digest}: {e}")))?
            .ok_or_else(|| {
                AdapterError::new(
                    AdapterErrorKind::Other,
                    format!("manifest {digest} is not in {}", self.repo),
                )
            })?;
        Ok((m.media_type, bytes::Bytes::from(m.content)))
    }

    async fn blob(&self, digest: &Digest) -> crate::adapters::AdapterResult<(u64, crate::storage::ByteStream)> {
        let store = |e: crate::storage::StoreError| {
            AdapterError::new(AdapterErrorKind::Transient, format!("reading blob {digest}: {e}"))
        };
        let size = self
            .registry
            .repo_blob_size(&self.repo, digest.as_str())
            .await
            .map_err(store)?
            .ok_or_else(|| {
                AdapterError::new(
                    AdapterErrorKind::Other,
                    format!("blob {digest} is not in {}", self.repo),
                )
            })?;
        let stream = self.blobs.get(digest, None).await.map_err(store)?;
        let (global, vim, done) = (self.global.clone(), self.vim.clone(), self.done.clone());
        let limited = stream.then(move |chunk| {
            let (global, vim, done) = (global.clone(), vim.clone(), done.clone());
            async move {
                if let Ok(c) = &chunk {
                    let n = c.len() as u64;
                    global.take(n).await;
                    vim.take(n).await;
                    done.fetch_add(n, Ordering::Relaxed);
                }
                chunk
            }
        });
        Ok((size, Box::pin(limited)))
    }
}

/// Runs distribution targets from the job queue.
pub struct TargetHandler(pub Arc<Distribution>);

#[async_trait]
impl JobHandler for TargetHandler {
    async fn run(&self, ctx: &JobContext) -> std::result::Result<(), JobError> {
        self.0.run_target(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_cap_is_shared_by_the_replicas_transfers() {
        assert_eq!(bandwidth_share(1000, 0, 5), 1000);
        assert_eq!(bandwidth_share(1000, 3, 3), 1000);
        assert_eq!(bandwidth_share(1000, 1, 4), 250);
        assert_eq!(bandwidth_share(1000, 3, 4), 750);
        assert_eq!(bandwidth_share(10, 1, 1000), 1);
        // A count read while another replica's lease expired may be below ours.
        assert_eq!(bandwidth_share(1000, 4, 2), 1000);
    }

    #[test]
    fn download_tokens_are_bound_and_expire() {
        let s = DownloadSigner::new(b"k");
        let g = DownloadGrant {
            repository: "ns/img".into(),
            digest: "sha256:00".into(),
            expires: 1000,
        };
        let tok = s.token(&g).unwrap();
        assert_eq!(s.check(&tok, 999).unwrap(), g);
        assert!(s.check(&tok, 1001).is_err(), "expired");
        assert!(DownloadSigner::new(b"other").check(&tok, 0).is_err(), "another key");
        let (payload, sig) = tok.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"r":"ns/other","d":"sha256:00","e":1000}"#);
        assert!(s.check(&format!("{forged}.{sig}"), 0).is_err(), "payload swapped");
        assert!(s.check(payload, 0).is_err());
    }

    #[test]
    fn buckets_hold_the_rate() {
        let b = Bucket::new(1 << 20);
        // The first quarter second is free, then debt accrues at the rate.
        assert!(b.reserve(1 << 18).is_zero());
        let wait = b.reserve(1 << 20);
        assert!(
            wait >= Duration::from_millis(900) && wait <= Duration::from_millis(1100),
            "{wait:?}"
        );
        assert!(Bucket::new(0).reserve(u64::MAX).is_zero());
    }
}

/// What an inventory sync found on a VIM.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    /// The VIM's id.
    pub vim: String,
    /// Images it holds.
    pub images: usize,
    /// Of them, those that are catalog entries.
    pub known: usize,
    pub unknown: usize,
    /// RFC 3339.
    pub synced_at: String,
}

/// What a caller says about an image imported from a VIM into the catalog.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub namespace: Option<String>,
    /// Default: the image's name on the VIM.
    pub name: Option<String>,
    /// Default: `1`.
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl super::Registry {
    /// Import an image a VIM holds (as its inventory shows it) into the catalog: fetched from
    /// the VIM, hashed and inspected like any upload, then recorded as present there.
    pub async fn import_from_vim(
        &self,
        p: &Principal,
        vim_id: &str,
        remote_id: &str,
        req: ImportRequest,
    ) -> Result<EntryRecord> {
        let d = self
            .distribution
            .get()
            .ok_or_else(|| Error::Unsupported("distribution is not running on this server".into()))?;
        let vim = d.vims.find(vim_id).await?;
        let known = d.vims.store().inventory_of_vim(&vim.id).await?;
        let Some(img) = known.into_iter().find(|i| i.remote_id == remote_id) else {
            return Err(Error::NotFoundWhat(format!(
                "image {remote_id:?} on VIM {:?} (sync its inventory first)",
                vim.name
            )));
        };
        if let Some(e) = &img.entry_id {
            return Err(Error::Conflict(format!("that image is catalog entry {e} already")));
        }
        let open = d.vims.open(&vim)?;
        let VimClient::Glance(g) = &open.client else {
            return Err(Error::Unsupported(format!(
                "import from {} VIMs is not available",
                vim.kind
            )));
        };
        let remote = g
            .get_image(remote_id)
            .await
            .map_err(|e| Error::Upstream(e.message))?
            .ok_or_else(|| Error::NotFoundWhat(format!("image {remote_id:?} on VIM {:?}", vim.name)))?;
        let text = |k: &str| remote.properties.get(k).cloned();
        let meta = super::ingest::ImageMeta {
            namespace: req.namespace.clone(),
            name: req
                .name
                .clone()
                .or_else(|| remote.name.clone())
                .ok_or_else(|| Error::BadRequest("the image has no name on the VIM: give one".into()))?,
            version: req.version.clone().unwrap_or_else(|| "1".into()),
            disk_format: remote.disk_format.clone(),
            container_format: remote.container_format.clone(),
            min_disk: Some(remote.min_disk.saturating_mul(GIB)).filter(|v| *v > 0),
            min_ram: Some(remote.min_ram.saturating_mul(MIB)).filter(|v| *v > 0),
            os_type: text("os_type"),
            os_distro: text("os_distro"),
            os_version: text("os_version"),
            architecture: text("architecture"),
            vendor: None,
            description: req.description.clone(),
            labels: req.labels.clone(),
            file_name: None,
        };
        let (_, body) = g.download(remote_id).await.map_err(|e| Error::Upstream(e.message))?;
        let body = Box::pin(body);
        let entry = self
            .ingest_vm_image(
                p,
                &meta,
                body,
                super::ingest::Origin {
                    source: "import",
                    package: None,
                },
            )
            .await?;
        let facts = VmFacts::of(&entry)?;
        if remote.os_hash_value.as_deref() != Some(facts.sha512.as_str()) {
            tracing::warn!(vim = %vim.name, image = remote_id, "the imported bytes do not match the VIM's os_hash_value");
        }
        d.vims
            .store()
            .inventory_put(&glance_record(&vim.id, &entry, &facts, &remote))
            .await?;
        Ok(entry)
    }
}
