//! The catalog part of the metadata store: typed, named, versioned entries, their labels and
//! the links between them. The rules (what an entry says, who may see it) live in
//! `core::catalog`; this is storage only.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One catalog entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// container-image, vm-image, vnf-package, helm-chart, artifact.
    pub kind: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// uploading, validating, available, quarantined, deprecated.
    pub status: String,
    pub size: u64,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub disk_format: Option<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    /// The entry of the version before this one (same namespace and name).
    pub predecessor: Option<String>,
    /// How it came in: registry (a /v2 push), upload (the images API), package (inside a CSAR).
    pub source: String,
    /// Type-specific facts (JSON object).
    pub details: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an upsert of a derived entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    /// The tag moved to other content: derived fields were replaced, the rest kept.
    Updated,
    /// Same content as recorded: nothing changed.
    Unchanged,
}

/// Sort orders of listings; every one ends with the id so that cursors are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Name,
    Created,
    Size,
}

/// Where the previous page ended (the sort key values of its last entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cursor {
    Name(String, String, String),
    Created(i64, String),
    Size(u64, String),
}

/// A catalog search. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EntryQuery {
    /// Only these namespaces (what the caller may read); `None`: all.
    pub readable: Option<Vec<String>>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub name_prefix: Option<String>,
    pub name_contains: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub vendor: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub disk_format: Option<String>,
    pub digest: Option<String>,
    /// Only entries the inventory shows on this VIM (its id).
    pub vim: Option<String>,
    /// `(key, Some(value))`: label equals; `(key, None)`: label present.
    pub labels: Vec<(String, Option<String>)>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    pub sort: SortKey,
    pub descending: bool,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// A link between two entries, seen from one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub parent: String,
    pub child: String,
    /// `contains` (a package holds the image at `path`).
    pub kind: String,
    pub path: Option<String>,
}

/// A resumable VM image upload: where it goes and what the uploader said (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageUploadRecord {
    pub id: String,
    pub repository: String,
    pub tag: String,
    pub metadata: String,
    pub created_at: i64,
}

#[async_trait]
pub trait CatalogStore: Send + Sync {
    async fn image_upload_add(&self, rec: &ImageUploadRecord) -> Result<(), StoreError>;
    async fn image_upload_get(&self, id: &str) -> Result<Option<ImageUploadRecord>, StoreError>;
    async fn image_upload_delete(&self, id: &str) -> Result<(), StoreError>;
    /// Every open resumable upload (for expiry).
    async fn image_uploads(&self) -> Result<Vec<ImageUploadRecord>, StoreError>;
    /// Record the entry of `e.repository`:`e.tag` as derived from its manifest. A new entry is
    /// inserted as given (its predecessor found here); an existing one with the same digest is
    /// left alone; one with another digest gets the derived fields of `e` and keeps its id,
    /// status, labels and description. Returns the entry as stored.
    async fn catalog_upsert(&self, e: &EntryRecord) -> Result<(EntryRecord, Upserted), StoreError>;
    /// Insert `e` only if no entry has its repository and tag: false when one does (a version
    /// being uploaded or already there).
    async fn catalog_claim(&self, e: &EntryRecord) -> Result<bool, StoreError>;
    async fn catalog_get(&self, id: &str) -> Result<Option<EntryRecord>, StoreError>;
    async fn catalog_by_ref(&self, repository: &str, tag: &str) -> Result<Option<EntryRecord>, StoreError>;
    /// Up to `q.limit` entries in the query's order, after its cursor.
    async fn catalog_query(&self, q: &EntryQuery) -> Result<Vec<EntryRecord>, StoreError>;
    /// Replace the mutable fields (status, description, labels, details, os, architecture,
    /// disk_format, vendor) of entry `e.id` if it still has `e.updated_at == seen`; false when
    /// it changed meanwhile (or is gone).
    async fn catalog_save(&self, e: &EntryRecord, seen: i64) -> Result<bool, StoreError>;
    /// Delete an entry with its labels and links.
    async fn catalog_delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Delete the entries of `repository` with `tag` (if given) and/or `digest` (if given);
    /// returns their ids.
    async fn catalog_delete_where(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    async fn catalog_link(&self, link: &LinkRecord) -> Result<(), StoreError>;
    /// Links where `id` is the parent or the child.
    async fn catalog_links(&self, id: &str) -> Result<Vec<LinkRecord>, StoreError>;
    /// All versions of `namespace`/`name`, oldest first: (id, version, status, created_at).
    async fn catalog_versions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError>;
}
