//! VM image ingestion: one pass over the uploaded bytes stores them (sha256, the OCI digest),
//! computes sha512 and md5 (what Glance compares) on two other threads, and inspects the disk
//! format; an unsafe or contradictory image is refused before anything becomes visible. The
//! image is then stored as an OCI artifact (empty config, one layer holding the bytes as they
//! came, the metadata as annotations) and tagged with its version; its catalog entry is
//! derived from that manifest like any other.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::Stream;
use openssl::hash::{Hasher, MessageDigest};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::catalog::{
    check_label, repository_of, ANN, ANN_TITLE, DISK_LAYER_PREFIX, EMPTY_CONFIG, EMPTY_CONFIG_BYTES, VM_IMAGE_ARTIFACT,
};
use super::inspect::{DiskFormat, DiskInfo, Inspector, Limits};
use super::manifest::OCI_MANIFEST;
use super::names::{parse_tag, Digest, Reference, RepoName};
use super::uploads::{Batch, SessionLease, Taps};
use super::Registry;
use crate::auth::{Action, Principal, Resource};
use crate::error::{Error, Result};
use crate::storage::catalog::{EntryRecord, ImageUploadRecord, Upserted};
use crate::storage::now_ms;

/// Glance's container formats.
pub const CONTAINER_FORMATS: [&str; 8] = ["bare", "ovf", "ova", "aki", "ari", "ami", "docker", "compressed"];

/// What the uploader says about a VM image.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageMeta {
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
    /// The declared disk format; the bytes must agree.
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_disk: Option<u64>,
    pub min_ram: Option<u64>,
    pub os_type: Option<String>,
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    pub architecture: Option<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub file_name: Option<String>,
}

/// Where an image came from, when not uploaded on its own.
pub struct Origin<'a> {
    /// `upload` or `package`.
    pub source: &'a str,
    /// The package (name:version) holding it.
    pub package: Option<String>,
}

/// The three hashes and the inspection of one pass over the bytes.
pub struct Scanned {
    pub sha512: String,
    pub md5: String,
    pub disk: DiskInfo,
}

fn short(what: &str, v: &Option<String>) -> Result<()> {
    match v {
        Some(v) if v.chars().count() > 255 || v.chars().any(char::is_control) => {
            Err(Error::BadRequest(format!("{what}: at most 255 printable characters")))
        }
        _ => Ok(()),
    }
}

impl ImageMeta {
    /// Check everything that can be checked before reading the body; returns the repository,
    /// the tag and the declared disk format.
    pub fn validate(&self, default_ns: &str) -> Result<(RepoName, String, Option<DiskFormat>)> {
        let ns = self
            .namespace
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_ns);
        let ns_name = RepoName::parse(ns)?;
        if ns_name.as_str().contains('/') {
            return Err(Error::NameInvalid(format!("namespace {ns:?} must be one path segment")));
        }
        if self.name.is_empty() {
            return Err(Error::BadRequest("name is required".into()));
        }
        let repo = RepoName::parse(&repository_of(ns, &self.name))?;
        if self.version.is_empty() {
            return Err(Error::BadRequest("version is required".into()));
        }
        let tag = parse_tag(&self.version)?.to_string();
        let declared = match self.disk_format.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(f) => Some(DiskFormat::parse(f).ok_or_else(|| {
                Error::BadRequest(format!("disk_format {f:?}: one of qcow2, raw, vmdk, vhd, vhdx, iso"))
            })?),
        };
        if let Some(c) = &self.container_format {
            if !CONTAINER_FORMATS.contains(&c.as_str()) {
                return Err(Error::BadRequest(format!(
                    "container_format {c:?}: one of {}",
                    CONTAINER_FORMATS.join(", ")
                )));
            }
        }
        for (what, v) in [
            ("os_type", &self.os_type),
            ("os_distro", &self.os_distro),
            ("os_version", &self.os_version),
            ("architecture", &self.architecture),
            ("vendor", &self.vendor),
            ("file_name", &self.file_name),
        ] {
            short(what, v)?;
        }
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 4096) {
            return Err(Error::BadRequest("description: at most 4096 characters".into()));
        }
        for (k, v) in &self.labels {
            check_label(k, v)?;
        }
        if self.labels.len() > 100 {
            return Err(Error::BadRequest("at most 100 labels per entry".into()));
        }
        Ok((repo, tag, declared))
    }
}

/// Bytes handed to the hash threads at a time.
const SCAN_BATCH: usize = 1 << 20;
/// Batches a hash thread may be behind the body (bounds the memory of one ingest).
const SCAN_QUEUE: usize = 16;

type HashResult<T> = std::result::Result<T, openssl::error::ErrorStack>;

/// The catalog's answer to an image the inspector refused.
fn refused(e: super::inspect::InspectError) -> Error {
    Error::Refused {
        reason: format!("the disk image was refused: {e}"),
        problems: vec![e.to_string()],
    }
}

/// sha512, md5 and the disk inspection on two threads, fed the same chunks.
struct Scanner {
    taps: Taps,
    sha512: tokio::task::JoinHandle<HashResult<String>>,
    md5: tokio::task::JoinHandle<HashResult<(String, std::result::Result<DiskInfo, super::inspect::InspectError>)>>,
}

impl Scanner {
    fn start(limits: Limits, declared: Option<DiskFormat>) -> Self {
        let (tx_512, mut rx_512) = mpsc::channel::<Batch>(SCAN_QUEUE);
        let (tx_md5, mut rx_md5) = mpsc::channel::<Batch>(SCAN_QUEUE);
        // OpenSSL's SHA-512 and MD5 (its AVX2 and tuned assembly, picked for the CPU at run
        // time) run 20-50% faster here than ring's or RustCrypto's, and these two hashes are
        // what an ingest costs beyond a push.
        let sha512 = tokio::task::spawn_blocking(move || {
            let mut h = Hasher::new(MessageDigest::sha512())?;
            while let Some(b) = rx_512.blocking_recv() {
                for c in b.iter() {
                    h.update(c)?;
                }
            }
            Ok(hex::encode(h.finish()?))
        });
        let md5 = tokio::task::spawn_blocking(move || {
            let mut h = Hasher::new(MessageDigest::md5())?;
            let mut inspector = Inspector::new(limits);
            while let Some(b) = rx_md5.blocking_recv() {
                for c in b.iter() {
                    h.update(c)?;
                    inspector.feed(c);
                }
            }
            Ok((hex::encode(h.finish()?), inspector.finish(declared)))
        });
        Scanner {
            taps: Taps::new(vec![tx_512, tx_md5], SCAN_BATCH),
            sha512,
            md5,
        }
    }

    async fn feed(&mut self, chunk: Bytes) -> std::result::Result<(), ()> {
        self.taps.feed(&chunk).await
    }

    async fn finish(mut self) -> Result<Scanned> {
        let _ = self.taps.flush().await;
        self.taps.close();
        match (self.sha512.await, self.md5.await) {
            (Ok(Ok(sha512)), Ok(Ok((md5, Ok(disk))))) => Ok(Scanned { sha512, md5, disk }),
            (_, Ok(Ok((_, Err(e))))) => Err(refused(e)),
            _ => Err(Error::Internal("a hashing thread failed".into())),
        }
    }
}

impl Registry {
    /// Upload a VM image as `p`: stream, hash, inspect, store, tag, catalog. An existing
    /// version is a conflict (versions are immutable); the same bytes under another name or
    /// version are stored once.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ingest_vm_image<S, E>(
        &self,
        p: &Principal,
        meta: &ImageMeta,
        body: S,
        origin: Origin<'_>,
    ) -> Result<EntryRecord>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let (repo, tag, declared) = meta.validate(&self.catalog.default_namespace)?;
        self.auth
            .authorize(&*self.accounts, p, Action::Push, Resource::Namespace(repo.namespace()))
            .await?;
        if self.meta.manifest_by_tag(repo.as_str(), &tag, false).await?.is_some() {
            return Err(Error::Conflict(format!(
                "{repo}:{tag} exists: versions are immutable, upload under a new version"
            )));
        }
        self.claim_version(
            &repo,
            &tag,
            "vm-image",
            origin.source,
            meta,
            json!({"upload": "direct"}),
        )
        .await?;
        let done = self.ingest_claimed(&repo, &tag, declared, meta, body, origin).await;
        if done.is_err() {
            self.claim_status(repo.as_str(), &tag, None).await?;
        }
        done
    }

    async fn ingest_claimed<S, E>(
        &self,
        repo: &RepoName,
        tag: &str,
        declared: Option<DiskFormat>,
        meta: &ImageMeta,
        body: S,
        origin: Origin<'_>,
    ) -> Result<EntryRecord>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let repo = repo.clone();
        let tag = tag.to_string();
        let limits = Limits {
            max_virtual_size: self.catalog.max_virtual_size_bytes,
        };
        let (staged, scanned) = self.scan_into_blob(body, limits, declared).await?;
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => {
                self.discard_staged(&staged).await;
                return Err(e);
            }
        };
        self.claim_status(repo.as_str(), &tag, Some("validating")).await?;
        self.commit_staged(&repo, &staged).await?;
        self.publish_vm_image(&repo, &tag, meta, &staged.digest, staged.size, &scanned, &origin)
            .await
    }

    /// Tag the stored, inspected bytes as a VM image artifact and record its catalog entry.
    #[allow(clippy::too_many_arguments)]
    async fn publish_vm_image(
        &self,
        repo: &RepoName,
        tag: &str,
        meta: &ImageMeta,
        digest: &Digest,
        size: u64,
        scanned: &Scanned,
        origin: &Origin<'_>,
    ) -> Result<EntryRecord> {
        let manifest = self.vm_manifest(repo, meta, digest, size, scanned, origin).await?;
        self.put_manifest(repo, &Reference::Tag(tag.to_string()), OCI_MANIFEST, manifest, &[])
            .await?;
        let entry = self
            .derive_entry(repo.as_str(), tag, origin.source)
            .await?
            .ok_or_else(|| Error::Conflict(format!("{repo}:{tag} was deleted while it was being uploaded")))?;
        self.record_entry(entry, meta.labels.clone(), meta.description.clone())
            .await
    }

    /// Store a derived entry with what the uploader said that the manifest does not carry.
    pub async fn record_entry(
        &self,
        mut entry: EntryRecord,
        labels: BTreeMap<String, String>,
        description: Option<String>,
    ) -> Result<EntryRecord> {
        entry.labels = labels.clone();
        entry.description = description.clone().filter(|d| !d.is_empty());
        let (stored, how) = self.entries.catalog_upsert(&entry).await?;
        if how == Upserted::Created {
            return Ok(stored);
        }
        // The indexer recorded it first without these, or a resumable upload's `uploading`
        // entry now has its content.
        let mut stored = stored;
        let seen = stored.updated_at;
        if matches!(stored.status.as_str(), "uploading" | "validating") {
            stored.status = entry.status.clone();
        }
        stored.labels = labels;
        stored.description = description.filter(|d| !d.is_empty());
        stored.updated_at = now_ms().max(seen + 1);
        self.entries.catalog_save(&stored, seen).await?;
        Ok(stored)
    }

    /// Stage `body` as a blob while sha512, md5 and the disk inspection run beside it. The
    /// staged blob comes back even when the inspection failed (the caller discards it).
    pub async fn scan_into_blob<S, E>(
        &self,
        body: S,
        limits: Limits,
        declared: Option<DiskFormat>,
    ) -> Result<(super::uploads::StagedBlob, Result<Scanned>)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut scanner = Scanner::start(limits, declared);
        let staged = self.stage_blob(body, Some(&mut scanner.taps)).await;
        let scanned = scanner.finish().await;
        Ok((staged?, scanned))
    }

    // ----- resumable uploads ----------------------------------------------------------------

    /// Open a resumable upload of a VM image described by `meta`; returns its id.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn start_image_upload(&self, p: &Principal, meta: &ImageMeta) -> Result<String> {
        let (repo, tag, _) = meta.validate(&self.catalog.default_namespace)?;
        self.auth
            .authorize(&*self.accounts, p, Action::Push, Resource::Namespace(repo.namespace()))
            .await?;
        if self.meta.manifest_by_tag(repo.as_str(), &tag, false).await?.is_some() {
            return Err(Error::Conflict(format!(
                "{repo}:{tag} exists: versions are immutable, upload under a new version"
            )));
        }
        let session = self.start_upload_all_hashes(&repo).await?;
        let metadata = serde_json::to_string(meta).map_err(|e| Error::BadRequest(e.to_string()))?;
        self.entries
            .image_upload_add(&ImageUploadRecord {
                id: session.id.clone(),
                repository: repo.to_string(),
                tag: tag.clone(),
                metadata,
                created_at: now_ms(),
            })
            .await?;
        // The catalog shows the image from now on, `uploading` (no content yet).
        let claimed = self
            .claim_version(
                &repo,
                &tag,
                "vm-image",
                "upload",
                meta,
                json!({"upload_session": session.id}),
            )
            .await;
        if let Err(e) = claimed {
            self.cancel_upload(&repo, &session.id).await?;
            self.entries.image_upload_delete(&session.id).await?;
            return Err(e);
        }
        Ok(session.id)
    }

    /// Take `repo:tag` for an upload in progress: an `uploading` entry (no content yet) that a
    /// concurrent upload of the same version cannot take too (409).
    pub(crate) async fn claim_version(
        &self,
        repo: &RepoName,
        tag: &str,
        kind: &str,
        source: &str,
        meta: &ImageMeta,
        details: Value,
    ) -> Result<()> {
        let (namespace, name) = super::catalog::entry_name(repo.as_str());
        let now = now_ms();
        let placeholder = EntryRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            namespace,
            name,
            version: tag.to_string(),
            kind: kind.into(),
            repository: repo.to_string(),
            tag: tag.to_string(),
            digest: String::new(),
            status: "uploading".into(),
            size: 0,
            os: meta.os_type.clone(),
            architecture: meta.architecture.clone(),
            disk_format: meta.disk_format.clone(),
            vendor: meta.vendor.clone(),
            description: meta.description.clone(),
            predecessor: None,
            source: source.into(),
            details,
            labels: meta.labels.clone(),
            created_at: now,
            updated_at: now,
        };
        if self.entries.catalog_claim(&placeholder).await? {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "{repo}:{tag} exists or is being uploaded: versions are immutable, use a new version"
            )))
        }
    }

    /// Set the status of the `uploading` entry of `repo:tag` (none: remove it). Entries with
    /// content are left alone.
    pub(crate) async fn claim_status(&self, repo: &str, tag: &str, status: Option<&str>) -> Result<()> {
        let Some(mut e) = self.entries.catalog_by_ref(repo, tag).await? else {
            return Ok(());
        };
        if !e.digest.is_empty() {
            return Ok(());
        }
        match status {
            Some(s) => {
                let seen = e.updated_at;
                e.status = s.to_string();
                e.updated_at = now_ms().max(seen + 1);
                self.entries.catalog_save(&e, seen).await?;
            }
            None => {
                self.entries.catalog_delete(&e.id).await?;
            }
        }
        Ok(())
    }

    /// Remove resumable uploads whose registry session expired, with their entries.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn expire_image_uploads(&self) -> Result<usize> {
        let mut n = 0;
        for rec in self.entries.image_uploads().await? {
            if self.meta.upload_get(&rec.id).await?.is_none() {
                self.claim_status(&rec.repository, &rec.tag, None).await?;
                self.entries.image_upload_delete(&rec.id).await?;
                n += 1;
            }
        }
        // Claims of single uploads that never finished (the process stopped meanwhile).
        let stale = now_ms() - (self.config.upload_expiry_secs as i64).saturating_mul(1000);
        let q = crate::storage::catalog::EntryQuery {
            digest: Some(String::new()),
            limit: 1000,
            ..Default::default()
        };
        for e in self.entries.catalog_query(&q).await? {
            let session = e
                .details
                .get("upload_session")
                .and_then(Value::as_str)
                .map(str::to_string);
            let live = match session {
                Some(id) => self.entries.image_upload_get(&id).await?.is_some(),
                None => false,
            };
            if !live && e.updated_at < stale {
                self.entries.catalog_delete(&e.id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The session `id` as `p` may see it: its record, metadata and how many bytes it holds.
    pub async fn image_upload(&self, p: &Principal, id: &str) -> Result<(ImageUploadRecord, ImageMeta, u64)> {
        let unknown = || Error::EntryUnknown(format!("upload session {}", id.chars().take(64).collect::<String>()));
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(unknown());
        }
        let rec = self.entries.image_upload_get(id).await?.ok_or_else(unknown)?;
        let repo = RepoName::parse(&rec.repository)?;
        self.auth
            .authorize(&*self.accounts, p, Action::Push, Resource::Namespace(repo.namespace()))
            .await?;
        let offset = match self.upload_status(&repo, id).await {
            Ok(s) => s.offset,
            Err(Error::BlobUploadUnknown) => {
                // The registry session expired: forget the metadata too.
                self.entries.image_upload_delete(id).await?;
                return Err(unknown());
            }
            Err(e) => return Err(e),
        };
        let meta: ImageMeta =
            serde_json::from_str(&rec.metadata).map_err(|e| Error::Internal(format!("upload metadata: {e}")))?;
        Ok((rec, meta, offset))
    }

    /// Append a chunk at `start` (the client's idea of the offset, checked).
    #[tracing::instrument(level = "debug", skip_all, fields(upload = id))]
    pub async fn append_image_upload<S, E>(
        &self,
        p: &Principal,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<(ImageUploadRecord, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let (rec, _, _) = self.image_upload(p, id).await?;
        let repo = RepoName::parse(&rec.repository)?;
        let offset = self.append_upload(&repo, id, start, len, body).await?.offset;
        Ok((rec, offset))
    }

    /// Close the session: read the bytes back once for the three hashes and the inspection,
    /// then store and catalog the image as a single upload would.
    #[tracing::instrument(level = "debug", skip_all, fields(upload = id))]
    pub async fn finish_image_upload(&self, p: &Principal, id: &str) -> Result<EntryRecord> {
        let (rec, meta, _) = self.image_upload(p, id).await?;
        let repo = RepoName::parse(&rec.repository)?;
        let (_, declared) = meta
            .validate(&self.catalog.default_namespace)
            .map(|(_, _, d)| ((), d))?;
        if self
            .meta
            .manifest_by_tag(repo.as_str(), &rec.tag, false)
            .await?
            .is_some()
        {
            return Err(Error::Conflict(format!("{repo}:{} exists", rec.tag)));
        }
        let lease = self.lease_session(&repo, id).await?;
        let token = lease.token.clone();
        let done = self
            .leased(id, &token, self.scan_and_commit(&rec, &repo, &lease, declared))
            .await;
        let (digest, size, scanned) = match done {
            Ok(d) => d,
            Err(e) => {
                self.release_lease(id, &token).await;
                return Err(e);
            }
        };
        self.entries.image_upload_delete(id).await?;
        let origin = Origin {
            source: "upload",
            package: None,
        };
        self.publish_vm_image(&repo, &rec.tag, &meta, &digest, size, &scanned, &origin)
            .await
    }

    /// Inspect the session's bytes and take its three hashes, then make them a blob; a refused
    /// image ends the session. The session kept its hashes chunk by chunk, so the inspector
    /// reads only the parts of the image it looks at (about 5 MiB at most); a session opened
    /// before sessions kept sha512 and md5 is read back once in full.
    async fn scan_and_commit(
        &self,
        rec: &ImageUploadRecord,
        repo: &RepoName,
        lease: &SessionLease,
        declared: Option<DiskFormat>,
    ) -> Result<(Digest, u64, Scanned)> {
        if lease.size == 0 {
            return Err(Error::BadRequest("the upload is empty".into()));
        }
        let limits = Limits {
            max_virtual_size: self.catalog.max_virtual_size_bytes,
        };
        self.claim_status(&rec.repository, &rec.tag, Some("validating")).await?;
        let scanned = match lease.hash.sha512_md5() {
            Some((sha512, md5)) => {
                self.inspect_leased(lease, limits, declared)
                    .await
                    .map(|disk| Scanned { sha512, md5, disk })
            }
            None => self.scan_leased(lease, limits, declared).await,
        };
        let scanned = match scanned {
            Ok(s) => s,
            Err(e @ Error::Refused { .. }) => {
                self.cancel_upload(repo, &lease.id).await?;
                self.claim_status(&rec.repository, &rec.tag, None).await?;
                self.entries.image_upload_delete(&lease.id).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let digest = lease.hash.digest();
        self.commit_leased(repo, lease, &digest).await?;
        Ok((digest, lease.size, scanned))
    }

    /// Inspect a leased session's bytes, reading only the ranges the inspector keeps.
    async fn inspect_leased(
        &self,
        lease: &SessionLease,
        limits: Limits,
        declared: Option<DiskFormat>,
    ) -> Result<DiskInfo> {
        let mut inspector = Inspector::new(limits);
        while let Some(range) = inspector.wanted(lease.size) {
            inspector.skip_to(range.start);
            let mut bytes = self.leased_range(lease, range.start, range.end - range.start).await?;
            while let Some(chunk) = futures::StreamExt::next(&mut bytes).await {
                inspector.feed(&chunk.map_err(|e| Error::Storage(e.into()))?);
            }
            if inspector.bytes_seen() < range.end {
                return Err(Error::Internal(format!(
                    "upload data ended at byte {} of {}",
                    inspector.bytes_seen(),
                    lease.size
                )));
            }
        }
        inspector.finish(declared).map_err(refused)
    }

    /// Read a leased session's bytes back once for the inspection and the sha512 and md5.
    async fn scan_leased(&self, lease: &SessionLease, limits: Limits, declared: Option<DiskFormat>) -> Result<Scanned> {
        let mut data = self.leased_bytes(lease).await?;
        let mut scanner = Scanner::start(limits, declared);
        let mut read = Ok(());
        while let Some(chunk) = futures::StreamExt::next(&mut data).await {
            match chunk {
                Ok(c) => {
                    if scanner.feed(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    read = Err(Error::Storage(e.into()));
                    break;
                }
            }
        }
        let scanned = scanner.finish().await;
        read?;
        scanned
    }

    /// Abandon the session and its bytes.
    #[tracing::instrument(level = "debug", skip_all, fields(upload = id))]
    pub async fn cancel_image_upload(&self, p: &Principal, id: &str) -> Result<()> {
        let (rec, _, _) = self.image_upload(p, id).await?;
        let repo = RepoName::parse(&rec.repository)?;
        self.cancel_upload(&repo, id).await?;
        self.claim_status(&rec.repository, &rec.tag, None).await?;
        self.entries.image_upload_delete(id).await?;
        Ok(())
    }

    /// The OCI manifest of a VM image (pushing the empty config blob it names).
    async fn vm_manifest(
        &self,
        repo: &RepoName,
        meta: &ImageMeta,
        digest: &Digest,
        size: u64,
        scanned: &Scanned,
        origin: &Origin<'_>,
    ) -> Result<Vec<u8>> {
        let empty = Digest::sha256(EMPTY_CONFIG_BYTES);
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from_static(
            EMPTY_CONFIG_BYTES,
        ))]);
        self.put_blob(repo, &empty, body).await?;
        let format = scanned.disk.format.as_str();
        let mut ann = Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                ann.insert(format!("{ANN}{k}"), json!(v));
            }
        };
        put("name", Some(meta.name.clone()));
        put("version", Some(meta.version.clone()));
        put("disk-format", Some(format.to_string()));
        put(
            "container-format",
            Some(meta.container_format.clone().unwrap_or_else(|| "bare".into())),
        );
        put("virtual-size", Some(scanned.disk.virtual_size.to_string()));
        put("min-disk", meta.min_disk.map(|v| v.to_string()));
        put("min-ram", meta.min_ram.map(|v| v.to_string()));
        put("os-type", meta.os_type.clone());
        put("os-distro", meta.os_distro.clone());
        put("os-version", meta.os_version.clone());
        put("architecture", meta.architecture.clone());
        put("sha512", Some(scanned.sha512.clone()));
        put("md5", Some(scanned.md5.clone()));
        put("package", origin.package.clone());
        for (k, v) in &scanned.disk.details {
            put(&format!("disk.{k}"), Some(v.clone()));
        }
        ann.insert(
            "org.opencontainers.image.created".into(),
            json!(crate::storage::rfc3339(now_ms())),
        );
        ann.insert("org.opencontainers.image.version".into(), json!(meta.version));
        if let Some(v) = meta.vendor.as_ref().filter(|v| !v.is_empty()) {
            ann.insert("org.opencontainers.image.vendor".into(), json!(v));
        }
        let title = meta
            .file_name
            .clone()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| format!("{}-{}.{format}", meta.name.replace('/', "-"), meta.version));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": VM_IMAGE_ARTIFACT,
            "config": {"mediaType": EMPTY_CONFIG, "digest": empty.to_string(), "size": 2, "data": "e30="},
            "layers": [{
                "mediaType": format!("{DISK_LAYER_PREFIX}{format}"),
                "digest": digest.to_string(),
                "size": size,
                "annotations": {ANN_TITLE: title},
            }],
            "annotations": Value::Object(ann),
        });
        serde_json::to_vec(&manifest).map_err(|e| Error::ManifestInvalid(e.to_string()))
    }
}
