//! The metadata store interface: repositories, blob visibility, manifests, tags, upload
//! sessions and the event outbox. Backend-neutral: implementations decide how to make each
//! method atomic.

use async_trait::async_trait;

use super::StoreError;

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repo: String,
    /// Bytes acknowledged to the client so far.
    pub size: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A manifest to record, already parsed and validated by the core.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: String,
    pub media_type: String,
    pub content: Vec<u8>,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    /// The manifest's annotations as a JSON object, if any.
    pub annotations: Option<String>,
    /// Blobs (config, layers) that must be readable in the repository.
    pub blobs: Vec<String>,
    /// Manifests (index children) that must exist in the repository.
    pub manifests: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    MissingBlobs(Vec<String>),
    MissingManifests(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ManifestRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Empty when the caller asked for metadata only.
    pub content: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Readiness: the database answers.
    async fn check(&self) -> Result<(), StoreError>;

    /// Size of `digest` if repository `repo` may read it.
    async fn repo_blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>, StoreError>;
    /// Give `repo` read access to a stored blob (creating the repository on first use).
    async fn link_blob(&self, repo: &str, digest: &str, size: u64) -> Result<(), StoreError>;
    /// Take it away again; false when it had none.
    async fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool, StoreError>;

    async fn upload_create(&self, id: &str, repo: &str) -> Result<(), StoreError>;
    async fn upload_get(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    /// Move the acknowledged size from `from` to `to`; false when another request moved it first.
    async fn upload_advance(&self, id: &str, from: u64, to: u64) -> Result<bool, StoreError>;
    /// End an upload session by making its blob readable in its repository, atomically.
    async fn upload_complete(&self, id: &str, repo: &str, digest: &str, size: u64) -> Result<(), StoreError>;
    async fn upload_delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Ids of sessions not touched since `before_ms`.
    async fn uploads_idle_since(&self, before_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Record a manifest in `repo` and point `tags` at it, after checking in the same
    /// transaction that everything it references is there.
    async fn manifest_put(&self, repo: &str, m: &NewManifest, tags: &[String]) -> Result<PutOutcome, StoreError>;
    async fn manifest_by_tag(&self, repo: &str, tag: &str, content: bool)
        -> Result<Option<ManifestRecord>, StoreError>;
    async fn manifest_by_digest(
        &self,
        repo: &str,
        digest: &str,
        content: bool,
    ) -> Result<Option<ManifestRecord>, StoreError>;
    /// Remove a manifest and the tags pointing at it from `repo`; false when it was not there.
    async fn manifest_delete(&self, repo: &str, digest: &str) -> Result<bool, StoreError>;
    async fn tag_delete(&self, repo: &str, tag: &str) -> Result<bool, StoreError>;

    /// Tags of `repo` in lexical order after `last`; `None` when the repository is unknown.
    async fn tags(&self, repo: &str, limit: u32, last: Option<&str>) -> Result<Option<Vec<String>>, StoreError>;
    /// Repository names in lexical order after `last`.
    async fn repositories(&self, limit: u32, last: Option<&str>) -> Result<Vec<String>, StoreError>;
    /// Manifests in `repo` whose subject is `subject`.
    async fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StoreError>;
}
