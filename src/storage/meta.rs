//! The metadata store interfaces, one per role, so that each service depends on what it uses:
//!
//! * [`RegistryStore`]: what the registry holds (blob links, upload sessions, manifests,
//!   tags, repositories, referrers, namespace usage and quotas); used by the registry core.
//! * [`AccountStore`]: users, robots, namespace members and visibility, the audit log and
//!   shared settings; used by `auth` and `core::admin`.
//! * [`GcStore`]: the guarded reads and removals of garbage collection (`core::gc`).
//! * [`CatalogStore`](super::CatalogStore) (the ONAP catalog) and
//!   [`JobStore`](super::JobStore) (jobs, leases, the event outbox) live in their own modules.
//!
//! [`MetadataStore`] names all of them at once; it is for wiring only (one database serves
//! every role), never for a service's signature. Backend-neutral: implementations decide how
//! to make each method atomic.

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
    /// Token of the request holding the write lease, if any, and when that lease expires.
    pub writer: Option<String>,
    pub writer_until: i64,
    /// Serialized running hash of the acknowledged bytes (`None` on sessions from before hash
    /// states were kept, or not yet written to).
    pub hash_state: Option<String>,
    /// Upload data in the blob store, when it is not named by the session id.
    pub data_id: Option<String>,
}

impl UploadRecord {
    /// The id of the session's upload data in the blob store.
    pub fn data(&self) -> &str {
        self.data_id.as_deref().unwrap_or(&self.id)
    }
}

/// What a writer that holds a session's lease records once its chunk is stored.
#[derive(Debug, Clone)]
pub struct UploadAdvance<'a> {
    /// Acknowledged size before and after the chunk.
    pub from: u64,
    pub to: u64,
    pub hash_state: &'a str,
    /// The data the bytes now live in.
    pub data_id: &'a str,
    /// Give up the lease in the same update.
    pub release: bool,
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

/// Every metadata role one database serves: for wiring (the server, the CLI, tests), not for
/// the signatures of services, which take the narrowest role trait they use.
pub trait MetadataStore: RegistryStore + AccountStore + GcStore + super::catalog::CatalogStore {}

impl<T: RegistryStore + AccountStore + GcStore + super::catalog::CatalogStore + ?Sized> MetadataStore for T {}

/// What the registry holds: blob links, upload sessions, manifests, tags, repositories,
/// referrers, namespace usage and quotas.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
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
    /// Take the write lease of session `id` for `token` until `until` (ms), provided the
    /// session still has acknowledged size `size` and its lease is still held by `previous`
    /// (`None`: free) and free or expired at `now`; false when another request got there first.
    async fn upload_lock(
        &self,
        id: &str,
        size: u64,
        previous: Option<&str>,
        token: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Extend the lease `token` holds to `until`; false when it no longer holds it.
    async fn upload_renew(&self, id: &str, token: &str, until: i64) -> Result<bool, StoreError>;
    /// Give the lease `token` holds up; nothing happens when it holds none.
    async fn upload_release(&self, id: &str, token: &str) -> Result<(), StoreError>;
    /// Record a stored chunk (and possibly release the lease), provided `token` still holds the
    /// lease and the size is still `adv.from`; false otherwise (nothing changes then).
    async fn upload_advance(&self, id: &str, token: &str, adv: &UploadAdvance<'_>) -> Result<bool, StoreError>;
    /// End an upload session whose lease `token` holds by making its blob readable in its
    /// repository, atomically; false (nothing changes) when the lease is no longer held.
    async fn upload_complete(
        &self,
        id: &str,
        token: &str,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<bool, StoreError>;
    /// Whether upload data `data` belongs to an open session.
    async fn upload_data_in_use(&self, data: &str) -> Result<bool, StoreError>;
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
    /// Bytes of the distinct blobs readable in the repositories of namespace `ns`.
    async fn namespace_usage(&self, ns: &str) -> Result<u64, StoreError>;
    /// Whether a repository of namespace `ns` may read blob `digest`.
    async fn namespace_has_blob(&self, ns: &str, digest: &str) -> Result<bool, StoreError>;
    /// The quota set on `ns`, if any.
    async fn namespace_quota(&self, ns: &str) -> Result<Option<u64>, StoreError>;
    /// Set or clear (`None`) the quota of `ns`.
    async fn set_namespace_quota(&self, ns: &str, bytes: Option<u64>) -> Result<(), StoreError>;
    /// Namespaces that have repositories or a quota, in lexical order.
    async fn namespaces(&self) -> Result<Vec<String>, StoreError>;

    /// Manifests in `repo` whose subject is `subject`.
    async fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StoreError>;
}

/// Accounts and what they may do: users, robots, namespace members and visibility, the audit
/// log, and settings shared by replicas (src/auth, src/core/admin.rs). Names are validated by
/// the caller.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Create a user; false when the name is taken.
    async fn user_add(&self, user: &UserRecord) -> Result<bool, StoreError>;
    async fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Set the disabled flag; false when there is no such user.
    async fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError>;
    /// Delete a user and their memberships; false when there was no such user.
    async fn user_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// Create a robot account; false when the name is taken.
    async fn robot_add(&self, robot: &RobotRecord) -> Result<bool, StoreError>;
    async fn robot_get(&self, name: &str) -> Result<Option<RobotRecord>, StoreError>;
    async fn robots(&self) -> Result<Vec<RobotRecord>, StoreError>;
    async fn robot_set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError>;
    async fn robot_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// The role of `principal` in namespace `ns`, if any.
    async fn member_role(&self, ns: &str, principal: &str) -> Result<Option<String>, StoreError>;
    /// Namespaces where `principal` has a role, with the role.
    async fn memberships_of(&self, principal: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Members of `ns` with their roles.
    async fn members(&self, ns: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Set (`Some`) or remove (`None`) the role of `principal` in `ns`.
    async fn set_member(&self, ns: &str, principal: &str, role: Option<&str>) -> Result<bool, StoreError>;
    /// Whether `ns` allows anonymous pulls.
    async fn namespace_public(&self, ns: &str) -> Result<bool, StoreError>;
    async fn set_namespace_public(&self, ns: &str, public: bool) -> Result<(), StoreError>;
    /// Namespaces that allow anonymous pulls.
    async fn public_namespaces(&self) -> Result<Vec<String>, StoreError>;
    /// Append to the audit log.
    async fn audit_add(&self, rec: &AuditRecord) -> Result<(), StoreError>;
    /// Audit records matching `filter`, oldest first, at most `limit`.
    async fn audit(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// A server setting shared by replicas.
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Store a setting unless one is already stored (the first replica wins); returns the stored value.
    async fn setting_init(&self, name: &str, value: &str) -> Result<String, StoreError>;
}

/// Garbage collection (src/core/gc.rs). The mark phase reads snapshots; every removal then
/// runs in its own transaction that first locks the row it removes (so a push that relies on
/// that row either committed before, and is seen, or waits until after) and re-checks that
/// the row is still garbage. Pushes lock the rows they rely on too: `manifest_put` the blobs
/// and child manifests it references and its own repo_manifests row, `link_blob` the blob row
/// and link it refreshes.
#[async_trait]
pub trait GcStore: Send + Sync + 'static {
    /// Every repository, in id order.
    async fn gc_repositories(&self) -> Result<Vec<GcRepository>, StoreError>;
    /// What the mark phase needs to know about repository `repo_id`, read from one snapshot
    /// where the database offers one.
    async fn gc_snapshot(&self, repo_id: i64) -> Result<GcSnapshot, StoreError>;
    /// Take manifest `digest` out of `repo` if it is still unreachable there: no tag points at
    /// it, no manifest the repository holds lists it as an index child, it reached the
    /// repository before `young_since` (ms), and no chain of subjects and index parents leads
    /// from it to a tagged manifest or one younger than that. Writes a `manifest.delete` event.
    async fn gc_remove_manifest(
        &self,
        repo: &GcRepository,
        digest: &str,
        young_since: i64,
    ) -> Result<GcOutcome, StoreError>;
    /// Take blob `digest` away from `repo` if no manifest the repository holds references it
    /// and it was linked (or last re-linked) before `linked_before` (ms). Writes a
    /// `blob.delete` event.
    async fn gc_unlink_blob(
        &self,
        repo: &GcRepository,
        digest: &str,
        linked_before: i64,
    ) -> Result<GcOutcome, StoreError>;
    /// Manifests no repository holds, in digest order after `after`, at most `limit`.
    async fn gc_orphan_manifests(&self, after: &str, limit: u32) -> Result<Vec<GcItem>, StoreError>;
    /// Delete manifest `digest` (and its references) if still no repository holds it.
    async fn gc_delete_manifest(&self, digest: &str) -> Result<GcOutcome, StoreError>;
    /// Blobs no repository links, recorded before `before` (ms), in digest order after
    /// `after`, at most `limit`.
    async fn gc_orphan_blobs(&self, before: i64, after: &str, limit: u32) -> Result<Vec<GcItem>, StoreError>;
    /// Delete the blob row `digest` if it was recorded before `before` (ms) and still no
    /// repository links it, in one conditional statement. Only the metadata: the caller then
    /// deals with the bytes (see `core::gc`).
    async fn gc_delete_blob(&self, digest: &str, before: i64) -> Result<GcOutcome, StoreError>;
    /// The blob row `digest`, read from the latest committed state.
    async fn gc_blob(&self, digest: &str) -> Result<Option<GcBlobRow>, StoreError>;
    /// Ids of the repositories that hold manifest `digest` (for dry-run predictions).
    async fn gc_manifest_holders(&self, digest: &str) -> Result<Vec<i64>, StoreError>;
    /// Ids of the repositories that link blob `digest` (for dry-run predictions).
    async fn gc_blob_holders(&self, digest: &str) -> Result<Vec<i64>, StoreError>;
    /// Record a finished collection in the event outbox (`gc.run`, size = bytes freed).
    async fn gc_record_run(&self, freed_bytes: u64) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotRecord {
    pub name: String,
    pub secret_hash: String,
    pub namespaces: Vec<String>,
    pub actions: Vec<String>,
    /// ms since the epoch; `None`: never.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// ms since the epoch.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub namespace: Option<String>,
    pub remote: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub namespace: Option<String>,
    pub actor: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// A repository as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRepository {
    pub id: i64,
    pub name: String,
}

/// A manifest a repository holds, as the mark phase sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcManifest {
    pub digest: String,
    /// Size of the manifest itself.
    pub size: u64,
    /// When the repository got it (ms since the epoch; a re-push refreshes it).
    pub created_at: i64,
    /// Whether a tag of the repository points at it.
    pub tagged: bool,
    pub subject: Option<String>,
}

/// One reference from a held manifest: `manifest` true for an index child, false for a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRef {
    pub parent: String,
    pub child: String,
    pub manifest: bool,
}

/// A blob a repository links, and when it was linked (or last re-linked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcBlobLink {
    pub digest: String,
    pub created_at: i64,
}

/// Everything the mark phase reads about one repository.
#[derive(Debug, Clone, Default)]
pub struct GcSnapshot {
    pub manifests: Vec<GcManifest>,
    /// References of the manifests in `manifests`.
    pub refs: Vec<GcRef>,
    pub blobs: Vec<GcBlobLink>,
}

/// A manifest or blob row with its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcItem {
    pub digest: String,
    pub size: u64,
}

/// A blob row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcBlobRow {
    pub size: u64,
    pub created_at: i64,
}

/// What a guarded removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcOutcome {
    Removed,
    /// Re-checked and no longer garbage (a push got there first).
    Kept,
    /// Already gone.
    Gone,
    /// A concurrent transaction got in the way (deadlock, foreign key): left for the next run.
    Conflict,
}
