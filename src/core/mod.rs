//! The registry core: what a repository holds and the rules for changing it. HTTP surfaces call
//! these methods; these methods reach storage only through [`BlobStore`] and the metadata
//! role traits ([`RegistryStore`], [`AccountStore`], [`CatalogStore`], [`JobStore`]).

pub mod admin;
pub mod catalog;
pub mod csar;
pub mod distribution;
pub mod gc;
pub mod ingest;
pub mod inspect;
pub mod jobs;
/// The OCI vocabulary, re-exported where core code has always found it.
pub use crate::oci::{manifest, names};
pub mod outbox;
pub mod package;
pub mod relay;
pub mod secrets;
pub mod uploads;
pub mod vims;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::storage::meta::{NewManifest, PutOutcome};
use crate::storage::{AccountStore, BlobStore, CatalogStore, JobStore, MetadataStore, RegistryStore};
pub use manifest::ParsedManifest;
use names::{Digest, Reference, RepoName};

/// Largest page the listing endpoints return.
pub const MAX_PAGE: u32 = 10_000;

pub struct Registry {
    pub blobs: Arc<dyn BlobStore>,
    /// Repositories, blob links, uploads, manifests, tags.
    pub meta: Arc<dyn RegistryStore>,
    /// Accounts, members, visibility, audit (what [`crate::auth`] reads).
    pub accounts: Arc<dyn AccountStore>,
    /// Catalog entries and resumable image uploads.
    pub entries: Arc<dyn CatalogStore>,
    pub config: RegistryConfig,
    pub catalog: crate::config::CatalogConfig,
    /// Authentication mode, token keys and the access policy ([`crate::auth`]).
    pub auth: Arc<crate::auth::Auth>,
    /// Woken after this process changed what the registry holds (the catalog indexer waits).
    pub events: tokio::sync::Notify,
    /// Jobs, leases and outbox cursors (the catalog indexer's lag is read through it).
    pub jobs: Option<Arc<dyn JobStore>>,
    /// The VIM registry and distribution engine, once the server started it.
    pub distribution: std::sync::OnceLock<Arc<distribution::Distribution>>,
}

/// A manifest as served.
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub content: Vec<u8>,
}

/// Result of a manifest push.
pub struct Pushed {
    pub digest: Digest,
    pub subject: Option<Digest>,
    pub tags: Vec<String>,
}

/// What the readiness probe reports.
pub struct Readiness {
    pub metadata: std::result::Result<(), crate::storage::StoreError>,
    pub blobs: std::result::Result<(), crate::storage::StoreError>,
    /// Bytes free for new blobs, where the blob store can tell.
    pub free_bytes: Option<u64>,
}

/// One page of a listing and whether more follow.
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

impl Registry {
    /// A registry on `blobs` and the metadata database `store` (which serves every role).
    pub fn new(blobs: Arc<dyn BlobStore>, store: Arc<dyn MetadataStore>, config: RegistryConfig) -> Self {
        Self {
            blobs,
            meta: store.clone(),
            accounts: store.clone(),
            entries: store,
            config,
            catalog: crate::config::CatalogConfig::default(),
            auth: Arc::new(crate::auth::Auth::none()),
            events: tokio::sync::Notify::new(),
            jobs: None,
            distribution: std::sync::OnceLock::new(),
        }
    }

    /// The same registry with job store `jobs`.
    pub fn with_jobs(mut self, jobs: Arc<dyn JobStore>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// The same registry with catalog settings `catalog`.
    pub fn with_catalog(mut self, catalog: crate::config::CatalogConfig) -> Self {
        self.catalog = catalog;
        self
    }

    /// The same registry with access control `auth`.
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// The administration service on this registry's stores and access control.
    pub fn admin(&self) -> admin::Admin {
        admin::Admin::new(
            self.accounts.clone(),
            self.meta.clone(),
            self.auth.clone(),
            self.config.default_quota_bytes,
        )
    }

    /// Whether the stores answer, and the blob store's free space where it can tell.
    pub async fn readiness(&self) -> Readiness {
        Readiness {
            metadata: self.meta.check().await,
            blobs: self.blobs.check().await,
            free_bytes: self.blobs.free_space().await.ok().flatten(),
        }
    }

    /// Read the state the metrics gauges describe (at each scrape of /metrics).
    pub async fn observe_state(&self) {
        let m = crate::metrics::metrics();
        let free = self.blobs.free_space().await.ok().flatten();
        m.blob_free_bytes
            .set(free.map_or(-1, |f| f.min(i64::MAX as u64) as i64));
        match self.indexer_lag().await {
            Ok(lag) => {
                m.indexer_lag_events.set(lag.min(i64::MAX as u64) as i64);
            }
            Err(e) => tracing::debug!(error = %e, "reading the catalog indexer's lag"),
        }
        if let Some(jobs) = &self.jobs {
            match jobs.queue_stats().await {
                Ok(stats) => {
                    for q in stats {
                        let labels = crate::metrics::QueueLabels { queue: q.queue };
                        let depth = q.queued.saturating_add(q.running).min(i64::MAX as u64) as i64;
                        m.job_queue_depth.get_or_create(&labels).set(depth);
                        m.job_queue_oldest_seconds
                            .get_or_create(&labels)
                            .set(q.oldest_ready_age_ms / 1000);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the job queues"),
            }
        }
    }

    /// The quota of namespace `ns`: its own, else the configured default (0: none).
    pub async fn quota_of(&self, ns: &str) -> Result<Option<u64>> {
        let own = self.meta.namespace_quota(ns).await?;
        Ok(own.or(Some(self.config.default_quota_bytes).filter(|q| *q > 0)))
    }

    /// Refuse a blob of `size` bytes that would take `repo`'s namespace over its quota. A blob
    /// the namespace already holds costs nothing; a full namespace refuses even empty uploads.
    pub async fn check_quota(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let ns = repo.namespace();
        let Some(quota) = self.quota_of(ns).await? else {
            return Ok(());
        };
        let usage = self.meta.namespace_usage(ns).await?;
        let over = if size == 0 {
            usage >= quota
        } else {
            usage.saturating_add(size) > quota
        };
        if over && !(size > 0 && self.meta.namespace_has_blob(ns, digest.as_str()).await?) {
            return Err(Error::Denied(format!(
                "namespace {ns:?} is over its storage quota: {usage} of {quota} bytes used, this blob needs {size} more"
            )));
        }
        Ok(())
    }

    fn ensure_deletes(&self) -> Result<()> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(Error::MethodNotAllowed("deletes are disabled on this registry".into()))
        }
    }

    /// Store a manifest under `reference` (a tag or its own digest), plus any extra `tags`.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: &str,
        body: Vec<u8>,
        extra_tags: &[String],
    ) -> Result<Pushed> {
        let parsed = manifest::parse(&body, content_type)?;
        let digest = Digest::sha256(&body);
        let mut tags: Vec<String> = Vec::new();
        match reference {
            Reference::Digest(d) if d != &digest => {
                return Err(Error::DigestInvalid(format!("manifest digest is {digest}, not {d}")))
            }
            Reference::Digest(_) => {}
            Reference::Tag(t) => tags.push(t.clone()),
        }
        for t in extra_tags {
            tags.push(names::parse_tag(t)?.to_string());
        }
        tags.dedup();
        let record = NewManifest {
            digest: digest.to_string(),
            media_type: parsed.media_type.clone(),
            content: body,
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject.as_ref().map(ToString::to_string),
            annotations: parsed.annotations.clone(),
            blobs: parsed.blobs.iter().map(ToString::to_string).collect(),
            manifests: parsed.manifests.iter().map(ToString::to_string).collect(),
        };
        match self.meta.manifest_put(repo.as_str(), &record, &tags).await? {
            PutOutcome::Stored => Ok({
                self.events.notify_one();
                Pushed {
                    digest,
                    subject: parsed.subject,
                    tags,
                }
            }),
            PutOutcome::MissingBlobs(list) => Err(Error::ManifestBlobUnknown(list.join(", "))),
            PutOutcome::MissingManifests(list) => Err(Error::ManifestBlobUnknown(format!(
                "manifests not in repository: {}",
                list.join(", ")
            ))),
        }
    }

    /// Fetch a manifest by tag or digest; `content` false fetches only its description (HEAD).
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference, content: bool) -> Result<Manifest> {
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo.as_str(), t, content).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo.as_str(), d.as_str(), content).await?,
        };
        let m = found.ok_or(Error::ManifestUnknown)?;
        Ok(Manifest {
            digest: m.digest,
            media_type: m.media_type,
            size: m.size,
            content: m.content,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.ensure_deletes()?;
        let gone = match reference {
            Reference::Tag(t) => self.meta.tag_delete(repo.as_str(), t).await?,
            Reference::Digest(d) => self.meta.manifest_delete(repo.as_str(), d.as_str()).await?,
        };
        if gone {
            self.events.notify_one();
            Ok(())
        } else {
            Err(Error::ManifestUnknown)
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo))]
    pub async fn tags(&self, repo: &RepoName, n: Option<u32>, last: Option<&str>) -> Result<Page> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        if limit == 0 {
            return match self.meta.tags(repo.as_str(), 1, None).await? {
                Some(_) => Ok(Page {
                    items: Vec::new(),
                    more: false,
                }),
                None => Err(Error::NameUnknown),
            };
        }
        let mut items = self
            .meta
            .tags(repo.as_str(), limit + 1, last)
            .await?
            .ok_or(Error::NameUnknown)?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page { items, more })
    }

    /// Repository names after `last`; with `readable`, only those of these namespaces.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn catalog(
        &self,
        n: Option<u32>,
        last: Option<&str>,
        readable: Option<&std::collections::HashSet<String>>,
    ) -> Result<Page> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        }
        let mut items = match readable {
            None => self.meta.repositories(limit + 1, last).await?,
            Some(allowed) => {
                let mut out = Vec::new();
                let mut cursor = last.map(str::to_string);
                loop {
                    let batch = self.meta.repositories(MAX_PAGE, cursor.as_deref()).await?;
                    let done = batch.len() < MAX_PAGE as usize;
                    cursor = batch.last().cloned();
                    out.extend(
                        batch
                            .into_iter()
                            .filter(|r| allowed.contains(r.split('/').next().unwrap_or_default())),
                    );
                    if done || out.len() > limit as usize {
                        break;
                    }
                }
                out
            }
        };
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page { items, more })
    }

    /// The referrers of `subject` in `repo` as an OCI image index.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo, subject = %subject))]
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<Value> {
        let list = self
            .meta
            .referrers(repo.as_str(), subject.as_str(), artifact_type)
            .await?;
        let manifests: Vec<Value> = list
            .into_iter()
            .map(|r| {
                let mut d = json!({ "mediaType": r.media_type, "digest": r.digest, "size": r.size });
                if let Some(at) = r.artifact_type {
                    d["artifactType"] = Value::String(at);
                }
                if let Some(a) = r.annotations.and_then(|a| serde_json::from_str::<Value>(&a).ok()) {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        Ok(json!({ "schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": manifests }))
    }
}
