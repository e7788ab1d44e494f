//! The image catalog: every tagged artifact of the registry as a typed, named, versioned entry.
//!
//! Entries are derived from what the registry holds (the manifest, its config, its
//! annotations), so the catalog can always be rebuilt from the registry: the indexer follows
//! the event outbox and re-derives the entry of every tag an event touches from the tag's
//! current state (idempotent, safe to run on every replica). What only the catalog knows
//! (status, labels, description, metadata updates, links) is kept across re-derivations.
//!
//! Entry names: a repository `ns/rest` is namespace `ns`, name `rest`; a one-segment repository
//! `r` is namespace `r`, name `r`. The version is the tag.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::jobs::Backoff;
use super::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use super::names::{Digest, RepoName};
use super::outbox::OutboxConsumer;
use super::Registry;
use crate::auth::{Action, Principal, Resource};
use crate::error::{Error, Result};
use crate::storage::catalog::{Cursor, EntryQuery, EntryRecord, LinkRecord, SortKey, Upserted};
use crate::storage::jobs::{EventRecord, JobStore};
use crate::storage::{now_ms, StoreErrorKind};

/// `artifactType` of a VM disk image stored by the images API: an OCI image manifest with the
/// empty config and one layer holding the disk bytes exactly as uploaded.
pub const VM_IMAGE_ARTIFACT: &str = "application/vnd.image-manager.vm-image.v1";
/// Media type of the layer of a VM image: this prefix and the disk format (`...disk.qcow2`).
pub const DISK_LAYER_PREFIX: &str = "application/vnd.image-manager.disk.";
/// `artifactType` of a VNF package (ETSI SOL004 CSAR) stored by the packages API.
pub const VNF_PACKAGE_ARTIFACT: &str = "application/vnd.image-manager.vnf-package.v1";
/// Media type of the layer of a VNF package: the CSAR zip exactly as uploaded.
pub const CSAR_LAYER: &str = "application/vnd.image-manager.csar.v1+zip";
/// The OCI empty descriptor's media type, content and digest (config of artifacts).
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG_BYTES: &[u8] = b"{}";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Annotation keys of VM images and packages (besides the `org.opencontainers.image.*` ones).
pub const ANN: &str = "io.image-manager.";
const ANN_CREATED: &str = "org.opencontainers.image.created";
const ANN_VENDOR: &str = "org.opencontainers.image.vendor";
pub const ANN_TITLE: &str = "org.opencontainers.image.title";

/// Largest config read (an image config, a package description).
const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;

pub const TYPES: [&str; 5] = ["container-image", "vm-image", "vnf-package", "helm-chart", "artifact"];
pub const STATUSES: [&str; 5] = ["uploading", "validating", "available", "quarantined", "deprecated"];

/// How entries are named: (namespace, name) of a repository.
pub fn entry_name(repo: &str) -> (String, String) {
    match repo.split_once('/') {
        Some((ns, rest)) => (ns.to_string(), rest.to_string()),
        None => (repo.to_string(), repo.to_string()),
    }
}

/// The repository an entry (namespace, name) lives in.
pub fn repository_of(namespace: &str, name: &str) -> String {
    if namespace == name && !name.contains('/') {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn descriptors(m: &Value, key: &str) -> Vec<Value> {
    m.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn desc_size(d: &Value) -> u64 {
    d.get("size").and_then(Value::as_u64).unwrap_or(0)
}

fn annotations_of(m: &Value) -> BTreeMap<String, String> {
    m.get("annotations")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What the catalog derives from a manifest, before naming and status.
struct Derived {
    kind: &'static str,
    size: u64,
    os: Option<String>,
    architecture: Option<String>,
    disk_format: Option<String>,
    vendor: Option<String>,
    created_at: Option<i64>,
    details: Map<String, Value>,
}

impl Registry {
    /// Read a small blob (an image config) whole; `None` when it is missing or too large. A
    /// blob store that fails is an error (the indexer tries again), not a missing blob.
    async fn small_blob(&self, digest: &str, size: u64) -> Result<Option<Vec<u8>>> {
        if size > MAX_CONFIG_BYTES {
            return Ok(None);
        }
        let Ok(d) = Digest::parse(digest) else { return Ok(None) };
        if self.blobs.stat(&d).await?.is_none() {
            return Ok(None);
        }
        let mut stream = self.blobs.get(&d, None).await?;
        let mut out = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(crate::storage::StoreError::from)?);
            if out.len() as u64 > MAX_CONFIG_BYTES {
                return Ok(None);
            }
        }
        Ok(Some(out.to_vec()))
    }

    /// Total bytes of an image manifest: itself, its config and its layers.
    fn image_size(m: &Value, manifest_len: u64) -> u64 {
        let config = m.get("config").map(desc_size).unwrap_or(0);
        descriptors(m, "layers")
            .iter()
            .map(desc_size)
            .fold(manifest_len + config, u64::saturating_add)
    }

    async fn derive(&self, repo: &str, content: &[u8]) -> Result<Derived> {
        let m: Value = serde_json::from_slice(content)
            .map_err(|e| Error::ManifestInvalid(format!("stored manifest is not JSON: {e}")))?;
        let media_type = text(&m, "mediaType").unwrap_or_else(|| OCI_MANIFEST.to_string());
        let ann = annotations_of(&m);
        let artifact_type = text(&m, "artifactType");
        let config = m.get("config").cloned().unwrap_or(Value::Null);
        let config_type = text(&config, "mediaType");
        let mut d = Derived {
            kind: "artifact",
            size: content.len() as u64,
            os: None,
            architecture: None,
            disk_format: None,
            vendor: ann.get(ANN_VENDOR).cloned(),
            created_at: ann.get(ANN_CREATED).and_then(|s| parse_time(s)),
            details: Map::new(),
        };
        d.details.insert("media_type".into(), json!(media_type));
        if let Some(a) = &artifact_type {
            d.details.insert("artifact_type".into(), json!(a));
        }
        if !ann.is_empty() {
            d.details.insert("annotations".into(), json!(ann));
        }
        if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
            let children = descriptors(&m, "manifests");
            let mut platforms = Vec::new();
            let mut size = d.size;
            for c in &children {
                size = size.saturating_add(desc_size(c));
                if let Some(p) = c.get("platform") {
                    platforms.push(p.clone());
                }
                // Children's own layers count too, when the registry holds them.
                if let Some(child) = text(c, "digest") {
                    if let Some(rec) = self.meta.manifest_by_digest(repo, &child, true).await? {
                        if let Ok(cm) = serde_json::from_slice::<Value>(&rec.content) {
                            size = size.saturating_add(Self::image_size(&cm, 0));
                        }
                    }
                }
            }
            d.size = size;
            let image_children = platforms.len();
            d.kind = if artifact_type.is_none() && image_children > 0 {
                "container-image"
            } else {
                "artifact"
            };
            if platforms.len() == 1 {
                d.os = text(&platforms[0], "os");
                d.architecture = text(&platforms[0], "architecture");
            } else if !platforms.is_empty() {
                d.os = Some("multi".into());
                d.architecture = Some("multi".into());
            }
            d.details.insert("platforms".into(), json!(platforms));
            d.details.insert("manifests".into(), json!(children.len()));
            return Ok(d);
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Ok(d);
        }
        let layers = descriptors(&m, "layers");
        d.size = Self::image_size(&m, content.len() as u64);
        d.details.insert("layer_count".into(), json!(layers.len()));
        let layer_info: Vec<Value> = layers
            .iter()
            .map(|l| json!({"media_type": l.get("mediaType"), "digest": l.get("digest"), "size": l.get("size")}))
            .collect();
        d.details.insert("layers".into(), json!(layer_info));
        match (artifact_type.as_deref(), config_type.as_deref()) {
            (Some(VM_IMAGE_ARTIFACT), _) => {
                d.kind = "vm-image";
                self.derive_vm_image(&mut d, &ann, &layers);
            }
            (Some(VNF_PACKAGE_ARTIFACT), _) => {
                d.kind = "vnf-package";
                d.vendor = ann.get(&format!("{ANN}provider")).cloned().or(d.vendor);
                if let Some(l) = layers.first() {
                    d.details.insert("package_size".into(), json!(desc_size(l)));
                    if let Some(h) = text(l, "digest").and_then(|d| d.strip_prefix("sha256:").map(str::to_string)) {
                        d.details.insert("package_sha256".into(), json!(h));
                    }
                }
                let digest = text(&config, "digest").unwrap_or_default();
                let package = match self.small_blob(&digest, desc_size(&config)).await? {
                    Some(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
                    None => Value::Null,
                };
                d.details.insert("package".into(), package);
            }
            (_, Some(HELM_CONFIG)) => {
                d.kind = "helm-chart";
                if let Some(bytes) = self
                    .small_blob(&text(&config, "digest").unwrap_or_default(), desc_size(&config))
                    .await?
                {
                    if let Ok(chart) = serde_json::from_slice::<Value>(&bytes) {
                        d.details.insert("chart".into(), chart);
                    }
                }
            }
            (None, Some(OCI_CONFIG | DOCKER_CONFIG)) => {
                d.kind = "container-image";
                let digest = text(&config, "digest").unwrap_or_default();
                if let Some(bytes) = self.small_blob(&digest, desc_size(&config)).await? {
                    if let Ok(c) = serde_json::from_slice::<Value>(&bytes) {
                        d.os = text(&c, "os");
                        d.architecture = text(&c, "architecture");
                        if let Some(v) = text(&c, "variant") {
                            d.details.insert("variant".into(), json!(v));
                        }
                        if d.created_at.is_none() {
                            d.created_at = text(&c, "created").and_then(|s| parse_time(&s));
                        }
                        let labels = c.pointer("/config/Labels").cloned().unwrap_or(Value::Null);
                        if labels.is_object() {
                            if d.vendor.is_none() {
                                d.vendor = text(&labels, ANN_VENDOR).or_else(|| text(&labels, "vendor"));
                            }
                            d.details.insert("config_labels".into(), labels);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(d)
    }

    fn derive_vm_image(&self, d: &mut Derived, ann: &BTreeMap<String, String>, layers: &[Value]) {
        let get = |k: &str| ann.get(&format!("{ANN}{k}")).cloned();
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        d.disk_format = get("disk-format");
        d.architecture = get("architecture");
        d.os = get("os-type");
        let file_size = layers.first().map(desc_size).unwrap_or(0);
        let sha256 = layers.first().and_then(|l| text(l, "digest"));
        let mut vm = Map::new();
        vm.insert("disk_format".into(), json!(d.disk_format));
        vm.insert(
            "container_format".into(),
            json!(get("container-format").unwrap_or_else(|| "bare".into())),
        );
        vm.insert("virtual_size".into(), json!(num("virtual-size")));
        vm.insert("file_size".into(), json!(file_size));
        vm.insert("min_disk".into(), json!(num("min-disk")));
        vm.insert("min_ram".into(), json!(num("min-ram")));
        vm.insert("os_type".into(), json!(get("os-type")));
        vm.insert("os_distro".into(), json!(get("os-distro")));
        vm.insert("os_version".into(), json!(get("os-version")));
        vm.insert("architecture".into(), json!(get("architecture")));
        vm.insert(
            "checksums".into(),
            json!({
                "sha256": sha256.as_deref().and_then(|s| s.strip_prefix("sha256:")),
                "sha512": get("sha512"),
                "md5": get("md5"),
            }),
        );
        vm.insert(
            "file_name".into(),
            json!(layers
                .first()
                .and_then(|l| l.pointer("/annotations/org.opencontainers.image.title"))
                .and_then(Value::as_str)),
        );
        if let Some(p) = get("package") {
            vm.insert("package".into(), json!(p));
        }
        d.details.insert("vm".into(), Value::Object(vm));
    }

    /// The entry `repo:tag` should have now, from the tag's current manifest; `None` when the
    /// tag does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(repo, tag))]
    pub async fn derive_entry(&self, repo: &str, tag: &str, source: &str) -> Result<Option<EntryRecord>> {
        let Some(m) = self.meta.manifest_by_tag(repo, tag, true).await? else {
            return Ok(None);
        };
        let d = self.derive(repo, &m.content).await?;
        let (namespace, name) = entry_name(repo);
        let now = now_ms();
        Ok(Some(EntryRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            namespace,
            name,
            version: tag.to_string(),
            kind: d.kind.to_string(),
            repository: repo.to_string(),
            tag: tag.to_string(),
            digest: m.digest,
            status: "available".into(),
            size: d.size,
            os: d.os,
            architecture: d.architecture,
            disk_format: d.disk_format,
            vendor: d.vendor,
            description: None,
            predecessor: None,
            source: source.to_string(),
            details: Value::Object(d.details),
            labels: BTreeMap::new(),
            created_at: d.created_at.unwrap_or(now),
            updated_at: now,
        }))
    }

    /// Bring the entry of `repo:tag` in line with the registry: create, update or delete it.
    pub async fn reindex_tag(&self, repo: &str, tag: &str) -> Result<Option<(EntryRecord, Upserted)>> {
        match self.derive_entry(repo, tag, "registry").await? {
            Some(e) => Ok(Some(self.entries.catalog_upsert(&e).await?)),
            None => {
                self.entries.catalog_delete_where(repo, Some(tag), None).await?;
                Ok(None)
            }
        }
    }

    /// Registry events after the catalog indexer's stored cursor (counted up to 10,000): what
    /// it has not applied yet, plus, while it waits on a gap, what it applied above the gap.
    /// Zero when the registry was given no job store.
    pub async fn indexer_lag(&self) -> Result<u64> {
        let Some(jobs) = &self.jobs else { return Ok(0) };
        let cursor = jobs.cursor_get(INDEXER).await?.unwrap_or(0);
        Ok(jobs.events_after(cursor, 10_000).await?.len() as u64)
    }

    /// Apply the registry events `consumer` has not handled yet to the catalog; returns how
    /// many it handled. A store failure that may pass (transient, or a full disk) ends the
    /// round before the event it hit, so that event comes again (and the ones after it); an
    /// event that cannot be indexed for any other reason is reported and passed over.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn index_events(&self, consumer: &mut OutboxConsumer) -> Result<usize> {
        let events = consumer.poll().await?;
        let mut handled = 0;
        for e in &events {
            match self.index_event(e).await {
                Ok(()) => {}
                Err(Error::Storage(err)) if matches!(err.kind(), StoreErrorKind::Transient | StoreErrorKind::Full) => {
                    consumer.commit().await?;
                    return Err(Error::Storage(err));
                }
                Err(err) => {
                    tracing::warn!(event = e.id, kind = %e.kind, repository = %e.repository, error = %err, "catalog indexing of an event failed");
                }
            }
            consumer.ack(e.id);
            handled += 1;
        }
        consumer.commit().await?;
        Ok(handled)
    }

    async fn index_event(&self, e: &EventRecord) -> Result<()> {
        match (e.kind.as_str(), &e.tag, &e.digest) {
            ("manifest.push" | "tag.delete", Some(tag), _) => self.reindex_tag(&e.repository, tag).await.map(|_| ()),
            ("manifest.delete", _, Some(digest)) => {
                // Entries still naming the deleted manifest: their tags went with it.
                let q = EntryQuery {
                    digest: Some(digest.clone()),
                    limit: 1000,
                    ..Default::default()
                };
                for entry in self
                    .entries
                    .catalog_query(&q)
                    .await?
                    .iter()
                    .filter(|x| x.repository == e.repository)
                {
                    self.reindex_tag(&entry.repository, &entry.tag).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    // ----- queries ----------------------------------------------------------------------

    /// The namespaces `p` may read, for listings (`None`: all).
    async fn readable_list(&self, p: &Principal) -> Result<Option<Vec<String>>> {
        Ok(self
            .auth
            .readable(&*self.accounts, p)
            .await?
            .map(|set| set.into_iter().collect()))
    }

    /// Search the catalog as `p` sees it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn search(&self, p: &Principal, mut q: EntryQuery) -> Result<SearchPage> {
        // These columns hold ASCII only (names, tags, digests, enumerations): a filter with
        // anything else matches nothing, and is not sent to the database.
        let ascii_only = [
            &q.namespace,
            &q.name,
            &q.name_prefix,
            &q.name_contains,
            &q.version,
            &q.kind,
            &q.status,
            &q.digest,
        ];
        if ascii_only.iter().any(|f| f.as_deref().is_some_and(|v| !v.is_ascii())) {
            return Ok(SearchPage {
                items: Vec::new(),
                next: None,
            });
        }
        q.readable = self.readable_list(p).await?;
        let limit = q.limit.clamp(1, 1000);
        q.limit = limit + 1;
        let mut items = self.entries.catalog_query(&q).await?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = if more {
            items.last().map(|e| encode_cursor(&cursor_of(q.sort, e)))
        } else {
            None
        };
        Ok(SearchPage { items, next })
    }

    /// One entry, if `p` may read it (others get the same answer as for a missing one).
    pub async fn entry(&self, p: &Principal, id: &str) -> Result<EntryRecord> {
        if !is_entry_id(id) {
            return Err(Error::EntryUnknown(id.chars().take(64).collect()));
        }
        let e = self
            .entries
            .catalog_get(id)
            .await?
            .ok_or_else(|| Error::EntryUnknown(id.to_string()))?;
        if !self
            .auth
            .allowed(&*self.accounts, p, Action::Pull, Resource::Namespace(&e.namespace))
            .await?
        {
            return Err(Error::EntryUnknown(id.to_string()));
        }
        Ok(e)
    }

    /// An entry with what surrounds it: layers, referrers, containing packages, contents,
    /// other versions.
    pub async fn entry_view(&self, p: &Principal, id: &str) -> Result<EntryView> {
        let entry = self.entry(p, id).await?;
        let links = self.entries.catalog_links(id).await?;
        let mut contained_in = Vec::new();
        let mut contains = Vec::new();
        for l in links {
            if l.child == id {
                contained_in.push(json!({"id": l.parent, "kind": l.kind, "path": l.path}));
            } else {
                contains.push(json!({"id": l.child, "kind": l.kind, "path": l.path}));
            }
        }
        let versions = self
            .entries
            .catalog_versions(&entry.namespace, &entry.name)
            .await?
            .into_iter()
            .map(|(id, version, status, at)| json!({"id": id, "version": version, "status": status, "created_at": crate::storage::rfc3339(at)}))
            .collect();
        let referrers = match (RepoName::parse(&entry.repository), Digest::parse(&entry.digest)) {
            (Ok(repo), Ok(d)) => self
                .referrers(&repo, &d, None)
                .await
                .ok()
                .and_then(|v| v.get("manifests").cloned())
                .unwrap_or_else(|| json!([])),
            _ => json!([]),
        };
        Ok(EntryView {
            entry,
            referrers,
            contained_in,
            contains,
            versions,
        })
    }

    /// Change what maintainers may change about an entry.
    #[tracing::instrument(level = "debug", skip_all, fields(entry = id))]
    pub async fn update_entry(&self, p: &Principal, id: &str, patch: &EntryPatch) -> Result<EntryRecord> {
        for _ in 0..5 {
            let mut e = self.entry(p, id).await?;
            self.auth
                .authorize(&*self.accounts, p, Action::Delete, Resource::Namespace(&e.namespace))
                .await?;
            let seen = e.updated_at;
            patch.apply(&mut e)?;
            e.updated_at = now_ms().max(seen + 1);
            if self.entries.catalog_save(&e, seen).await? {
                return Ok(e);
            }
        }
        Err(Error::Conflict(format!("entry {id} kept changing; try again")))
    }

    /// Delete an entry and its tag. Refused while a VNF package contains it, unless `force`,
    /// and while VIMs hold it, unless `undistribute` (then a job removes it from them).
    #[tracing::instrument(level = "debug", skip_all, fields(entry = id))]
    pub async fn delete_entry(
        &self,
        who: &super::admin::Actor,
        p: &Principal,
        id: &str,
        force: bool,
        undistribute: bool,
    ) -> Result<EntryRecord> {
        let e = self.entry(p, id).await?;
        self.auth
            .authorize(&*self.accounts, p, Action::Delete, Resource::Namespace(&e.namespace))
            .await?;
        let holders: Vec<LinkRecord> = self
            .entries
            .catalog_links(id)
            .await?
            .into_iter()
            .filter(|l| l.child == id && l.kind == "contains")
            .collect();
        if !holders.is_empty() && !force {
            let mut names = Vec::new();
            for h in &holders {
                match self.entries.catalog_get(&h.parent).await? {
                    Some(pkg) => names.push(format!("{}:{} ({})", pkg.name, pkg.version, pkg.id)),
                    None => names.push(h.parent.clone()),
                }
            }
            return Err(Error::Conflict(format!(
                "{}:{} is contained in VNF package(s) {}; delete those first or pass force=true",
                e.name,
                e.version,
                names.join(", ")
            )));
        }
        self.ensure_deletes()?;
        if let Some(d) = self.distribution.get() {
            let held = d.holders(id).await?;
            if !held.is_empty() {
                if !undistribute {
                    let mut vims: Vec<String> = held.iter().map(|h| h.vim_id.clone()).collect();
                    vims.dedup();
                    let mut names = Vec::new();
                    for v in &vims {
                        names.push(match d.vims().find(v).await {
                            Ok(rec) => format!("{} ({v})", rec.name),
                            Err(_) => v.clone(),
                        });
                    }
                    return Err(Error::Conflict(format!(
                        "{}:{} is on VIM(s) {}; remove it from them first or pass undistribute=true",
                        e.name,
                        e.version,
                        names.join(", ")
                    )));
                }
                let mut vims: Vec<String> = held.iter().map(|h| h.vim_id.clone()).collect();
                vims.dedup();
                let req = super::distribution::DistributionRequest {
                    images: vec![id.to_string()],
                    vims,
                    ..Default::default()
                };
                d.create(who, req, true).await?;
            }
        }
        self.meta.tag_delete(&e.repository, &e.tag).await?;
        self.entries.catalog_delete(id).await?;
        self.events.notify_one();
        Ok(e)
    }
}

/// The catalog indexer's outbox consumer (its row in `outbox_cursors`).
pub const INDEXER: &str = "catalog-indexer";

/// Follow the event outbox until `stop`: at once when this process changed the registry
/// (`Registry::events` is notified), and every `every` for changes made by other replicas.
/// Store failures are retried with a capped exponential delay; no event is skipped for them.
pub async fn run_indexer(
    reg: Arc<Registry>,
    jobs: Arc<dyn JobStore>,
    every: Duration,
    gap_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut consumer = OutboxConsumer::new(jobs, INDEXER, gap_timeout);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        let wait = loop {
            match reg.index_events(&mut consumer).await {
                Ok(0) => {
                    failures = 0;
                    break every;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff.delay(failures).max(Duration::from_millis(50));
                    tracing::warn!(error = %e, failures, retry_in = ?wait, "catalog indexing failed");
                    break wait;
                }
            }
        };
        tokio::select! {
            () = reg.events.notified(), if failures == 0 => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One page of a search and the cursor of the next.
pub struct SearchPage {
    pub items: Vec<EntryRecord>,
    pub next: Option<String>,
}

pub struct EntryView {
    pub entry: EntryRecord,
    pub referrers: Value,
    pub contained_in: Vec<Value>,
    pub contains: Vec<Value>,
    pub versions: Vec<Value>,
}

fn cursor_of(sort: SortKey, e: &EntryRecord) -> Cursor {
    match sort {
        SortKey::Name => Cursor::Name(e.name.clone(), e.version.clone(), e.id.clone()),
        SortKey::Created => Cursor::Created(e.created_at, e.id.clone()),
        SortKey::Size => Cursor::Size(e.size, e.id.clone()),
    }
}

pub fn encode_cursor(c: &Cursor) -> String {
    use base64::Engine;
    let raw = serde_json::to_vec(c).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_cursor(s: &str, sort: SortKey) -> Result<Cursor> {
    use base64::Engine;
    let bad = || Error::BadRequest("invalid cursor: pass the next_cursor of the previous page unchanged".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| bad())?;
    let c: Cursor = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let ascii = match &c {
        Cursor::Name(a, b, id) => a.is_ascii() && b.is_ascii() && id.is_ascii(),
        Cursor::Created(_, id) | Cursor::Size(_, id) => id.is_ascii(),
    };
    if !ascii {
        return Err(bad());
    }
    let fits = matches!(
        (&c, sort),
        (Cursor::Name(..), SortKey::Name) | (Cursor::Created(..), SortKey::Created) | (Cursor::Size(..), SortKey::Size)
    );
    if fits {
        Ok(c)
    } else {
        Err(Error::BadRequest("the cursor belongs to another sort order".into()))
    }
}

/// What a PATCH may change. Absent fields stay; `labels` replaces all labels; a label set to
/// null in `set_labels` is removed.
#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryPatch {
    /// available, quarantined or deprecated (uploading and validating are set by the service).
    pub status: Option<String>,
    pub description: Option<String>,
    /// Replace every label.
    pub labels: Option<BTreeMap<String, String>>,
    /// Add or change these labels (null removes one).
    pub set_labels: Option<BTreeMap<String, Option<String>>>,
    /// VM images: minimum disk in bytes.
    pub min_disk: Option<u64>,
    /// VM images: minimum RAM in bytes.
    pub min_ram: Option<u64>,
    pub os_type: Option<String>,
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    pub architecture: Option<String>,
    pub vendor: Option<String>,
}

/// Check one label: keys like annotation keys, short values.
pub fn check_label(k: &str, v: &str) -> Result<()> {
    let key_ok =
        !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !key_ok {
        return Err(Error::BadRequest(format!(
            "invalid label key {k:?}: 1-128 of A-Z, a-z, 0-9, '.', '_', '-', '/'"
        )));
    }
    if v.chars().count() > 256 || v.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!(
            "invalid value of label {k:?}: at most 256 printable characters"
        )));
    }
    Ok(())
}

fn check_short(what: &str, v: &str) -> Result<()> {
    if v.chars().count() > 255 || v.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!("{what}: at most 255 printable characters")));
    }
    Ok(())
}

impl EntryPatch {
    fn apply(&self, e: &mut EntryRecord) -> Result<()> {
        if let Some(s) = &self.status {
            if !matches!(s.as_str(), "available" | "quarantined" | "deprecated") {
                return Err(Error::BadRequest(format!(
                    "status {s:?} cannot be set: available, quarantined or deprecated"
                )));
            }
            e.status = s.clone();
        }
        if let Some(d) = &self.description {
            if d.chars().count() > 4096 {
                return Err(Error::BadRequest("description: at most 4096 characters".into()));
            }
            e.description = Some(d.clone()).filter(|d| !d.is_empty());
        }
        if let Some(labels) = &self.labels {
            for (k, v) in labels {
                check_label(k, v)?;
            }
            e.labels = labels.clone();
        }
        if let Some(set) = &self.set_labels {
            for (k, v) in set {
                match v {
                    Some(v) => {
                        check_label(k, v)?;
                        e.labels.insert(k.clone(), v.clone());
                    }
                    None => {
                        e.labels.remove(k);
                    }
                }
            }
        }
        if e.labels.len() > 100 {
            return Err(Error::BadRequest("at most 100 labels per entry".into()));
        }
        for (what, v) in [
            ("os_type", &self.os_type),
            ("os_distro", &self.os_distro),
            ("os_version", &self.os_version),
            ("architecture", &self.architecture),
            ("vendor", &self.vendor),
        ] {
            if let Some(v) = v {
                check_short(what, v)?;
            }
        }
        if let Some(v) = &self.vendor {
            e.vendor = Some(v.clone()).filter(|v| !v.is_empty());
        }
        if let Some(a) = &self.architecture {
            e.architecture = Some(a.clone()).filter(|v| !v.is_empty());
        }
        if let Some(o) = &self.os_type {
            e.os = Some(o.clone()).filter(|v| !v.is_empty());
        }
        let vm_fields = self.min_disk.is_some()
            || self.min_ram.is_some()
            || self.os_type.is_some()
            || self.os_distro.is_some()
            || self.os_version.is_some();
        if vm_fields {
            if e.kind != "vm-image" {
                return Err(Error::BadRequest(
                    "min_disk, min_ram, os_type, os_distro and os_version apply to vm-image entries".into(),
                ));
            }
            if !e.details.is_object() {
                e.details = json!({});
            }
            let vm = e
                .details
                .as_object_mut()
                .map(|o| o.entry("vm").or_insert_with(|| json!({})));
            if let Some(Value::Object(vm)) = vm {
                for (k, v) in [
                    ("min_disk", self.min_disk.map(|v| json!(v))),
                    ("min_ram", self.min_ram.map(|v| json!(v))),
                ] {
                    if let Some(v) = v {
                        vm.insert(k.into(), v);
                    }
                }
                for (k, v) in [
                    ("os_type", &self.os_type),
                    ("os_distro", &self.os_distro),
                    ("os_version", &self.os_version),
                ] {
                    if let Some(v) = v {
                        vm.insert(k.into(), json!(v));
                    }
                }
                if let Some(a) = &self.architecture {
                    vm.insert("architecture".into(), json!(a));
                }
            }
        }
        Ok(())
    }
}

/// Whether `id` has the shape of a catalog entry id (32 hex digits, as minted): anything else
/// is unknown without asking the database (whose key columns may refuse it).
pub fn is_entry_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
