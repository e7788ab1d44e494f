//! The VIM part of the metadata store: the registered VIMs (clouds and registries images are
//! distributed to), what each one holds (its inventory), and distribution jobs with their
//! targets. The rules (who may register a VIM, how a target moves between states, how secrets
//! are sealed) live in `core::vims` and `core::distribution`; this is storage only.
//!
//! Two role traits: [`VimStore`] (VIMs and inventories) and [`DistributionStore`] (jobs and
//! targets), each used by the service that owns it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A registered VIM as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VimRecord {
    pub id: String,
    /// Unique among VIMs.
    pub name: String,
    /// `openstack`, `oci-registry` or `onap-multicloud`.
    pub kind: String,
    /// Every setting that is not secret (URLs, region, project, user name), as JSON.
    pub config: serde_json::Value,
    /// The secrets (password, application credential secret), sealed by `core::secrets`;
    /// never shown.
    pub secret: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The last health check's result (JSON), if one ran.
    pub health: Option<serde_json::Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One image (Glance) or tagged manifest (OCI) a VIM holds, as the last inventory sync or
/// distribution saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VimImageRecord {
    pub vim_id: String,
    /// The VIM's id of it: a Glance image id, `repository:tag` on a registry.
    pub remote_id: String,
    pub name: Option<String>,
    /// The VIM's status of it (Glance: queued, active...).
    pub status: Option<String>,
    pub size: Option<u64>,
    /// sha256 digest (`sha256:…`) when known: OCI manifests, images we distributed.
    pub digest: Option<String>,
    /// Glance's `os_hash_value` (sha512 hex) when `os_hash_algo` is sha512.
    pub sha512: Option<String>,
    /// The catalog entry it is, when it matched one.
    pub entry_id: Option<String>,
    /// What else the VIM says of it (formats, visibility, properties), as JSON.
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
    /// When a sync or distribution last saw it (ms).
    pub seen_at: i64,
}

#[async_trait]
pub trait VimStore: Send + Sync + 'static {
    /// Register a VIM; false when its name is taken.
    async fn vim_add(&self, vim: &VimRecord) -> Result<bool, StoreError>;
    async fn vim_get(&self, id: &str) -> Result<Option<VimRecord>, StoreError>;
    /// Every VIM, in name order.
    async fn vims(&self) -> Result<Vec<VimRecord>, StoreError>;
    /// Replace a VIM's name, config, secret and labels (by id), provided `updated_at` still
    /// equals `expected_updated_at` (no concurrent update won); false otherwise. A name taken
    /// by another VIM fails with a conflict.
    async fn vim_update(&self, vim: &VimRecord, expected_updated_at: i64) -> Result<bool, StoreError>;
    async fn vim_set_health(&self, id: &str, health: &serde_json::Value) -> Result<bool, StoreError>;
    /// Remove a VIM and its inventory; false when there was none.
    async fn vim_delete(&self, id: &str) -> Result<bool, StoreError>;

    /// Record what a sync saw on `vim_id` at `seen_at`: every image in `images` is written,
    /// and the VIM's other images (not seen by this sync) are removed.
    async fn inventory_replace(&self, vim_id: &str, images: &[VimImageRecord], seen_at: i64) -> Result<(), StoreError>;
    /// Record one image (a distribution just made or found it).
    async fn inventory_put(&self, image: &VimImageRecord) -> Result<(), StoreError>;
    async fn inventory_delete(&self, vim_id: &str, remote_id: &str) -> Result<bool, StoreError>;
    /// What `vim_id` holds, in remote id order.
    async fn inventory_of_vim(&self, vim_id: &str) -> Result<Vec<VimImageRecord>, StoreError>;
    /// Where catalog entry `entry_id` is, in VIM order.
    async fn inventory_of_entry(&self, entry_id: &str) -> Result<Vec<VimImageRecord>, StoreError>;
}

/// A distribution job: images to VIMs, by one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributionRecord {
    pub id: String,
    /// Who asked (as the audit log names them).
    pub created_by: String,
    /// `push`, `web-download`, `auto` or `remove` (un-distribute).
    pub method: String,
    /// What else was asked (the replaced image's fate, visibility...), as JSON.
    pub options: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One image on one VIM within a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub job_id: String,
    pub entry_id: String,
    pub vim_id: String,
    /// pending, transferring, verifying, active, failed, cancelled (and removed for
    /// un-distribution).
    pub state: String,
    /// The method this target uses (`auto` resolved).
    pub method: Option<String>,
    /// The VIM's id of the image once known.
    pub remote_id: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second of the last transfer.
    pub rate: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The VIM already held the bytes: nothing was sent.
    pub skipped: bool,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

/// The states a target never leaves by itself.
pub const FINAL_STATES: [&str; 4] = ["active", "failed", "cancelled", "removed"];

#[async_trait]
pub trait DistributionStore: Send + Sync + 'static {
    /// Create a job and its targets in one transaction.
    async fn distribution_add(&self, job: &DistributionRecord, targets: &[TargetRecord]) -> Result<(), StoreError>;
    async fn distribution_get(&self, id: &str) -> Result<Option<DistributionRecord>, StoreError>;
    /// Jobs newest first, at most `limit`, created before `before` (ms) when given.
    async fn distributions(&self, limit: u32, before: Option<i64>) -> Result<Vec<DistributionRecord>, StoreError>;
    async fn targets_of(&self, job_id: &str) -> Result<Vec<TargetRecord>, StoreError>;
    async fn target_get(&self, job_id: &str, entry_id: &str, vim_id: &str) -> Result<Option<TargetRecord>, StoreError>;
    /// Write `t` (by its key) provided its stored state is one of `from`; false otherwise
    /// (it was cancelled, or another writer moved it).
    async fn target_update(&self, t: &TargetRecord, from: &[&str]) -> Result<bool, StoreError>;
    /// Targets of entry `entry_id` that are not final (a distribution or removal in flight).
    async fn targets_in_flight(&self, entry_id: &str) -> Result<Vec<TargetRecord>, StoreError>;
}
