//! The catalog API under `/api/v1`: search and read entries, upload VM images, onboard VNF
//! packages, update and delete entries. JSON in and out; errors are RFC 9457 problem+json.
//! The handlers translate HTTP to `core::catalog` / `core::ingest` / `core::package` calls
//! and back; the OpenAPI document ([`super::openapi`]) is generated from the annotations here.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::api::{caller, Caller};
use super::AppState;
use crate::core::catalog::{decode_cursor, parse_time, EntryPatch, EntryView, TYPES};
use crate::core::ingest::{ImageMeta, Origin};
use crate::error::{Error, Problem};
use crate::storage::catalog::{EntryQuery, EntryRecord, SortKey};
use crate::storage::rfc3339;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/images",
            get(list_entries).post(upload_image).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/images/{id}",
            get(get_entry).patch(update_entry).delete(delete_entry),
        )
        .route("/api/v1/images/uploads", post(start_upload))
        .route(
            "/api/v1/images/uploads/{id}",
            get(upload_status)
                .patch(append_upload)
                .put(finish_upload)
                .delete(cancel_upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/packages",
            post(upload_package).layer(DefaultBodyLimit::disable()),
        )
}

/// Checksums of a VM image's bytes (hex), computed on ingest in one pass.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checksums {
    pub sha256: Option<String>,
    /// Glance's `os_hash_value` (with `os_hash_algo` sha512).
    pub sha512: Option<String>,
    /// Glance's `checksum`.
    pub md5: Option<String>,
}

/// A catalog entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entry {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// container-image, vm-image, vnf-package, helm-chart or artifact.
    #[serde(rename = "type")]
    pub kind: String,
    /// uploading, validating, available, quarantined or deprecated.
    pub status: String,
    pub repository: String,
    pub tag: String,
    /// Digest of the manifest the tag points at.
    pub digest: String,
    /// `repository:tag@digest`, for pulling.
    pub reference: String,
    /// Total bytes: manifest, config and layers (of every platform of an index).
    pub size: u64,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub disk_format: Option<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The entry of the previous version of the same name.
    pub predecessor: Option<String>,
    /// registry (pushed through /v2), upload (images API) or package (inside a VNF package).
    pub source: String,
    /// VM images: sha256, sha512 and md5 of the disk bytes.
    pub checksums: Option<Checksums>,
    /// Type-specific facts: `vm` (disk and container format, virtual and file size, min_disk,
    /// min_ram, os, checksums), `package` (SOL004 metadata, files, signatures, software images,
    /// mismatches), `platforms`, `layers`, `annotations`, `config_labels`...
    #[schema(value_type = Object)]
    pub details: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<EntryRecord> for Entry {
    fn from(e: EntryRecord) -> Self {
        let checksums = match e.kind.as_str() {
            "vm-image" => e.details.pointer("/vm/checksums").map(|c| Checksums {
                sha256: c.get("sha256").and_then(Value::as_str).map(str::to_string),
                sha512: c.get("sha512").and_then(Value::as_str).map(str::to_string),
                md5: c.get("md5").and_then(Value::as_str).map(str::to_string),
            }),
            _ => None,
        };
        Entry {
            reference: format!("{}:{}@{}", e.repository, e.tag, e.digest),
            id: e.id,
            namespace: e.namespace,
            name: e.name,
            version: e.version,
            kind: e.kind,
            status: e.status,
            repository: e.repository,
            tag: e.tag,
            digest: e.digest,
            size: e.size,
            os: e.os,
            architecture: e.architecture,
            disk_format: e.disk_format,
            vendor: e.vendor,
            description: e.description,
            labels: e.labels,
            predecessor: e.predecessor,
            source: e.source,
            checksums,
            details: e.details,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// One page of entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryPage {
    pub items: Vec<Entry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An entry with its surroundings.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryDetail {
    #[serde(flatten)]
    pub entry: Entry,
    /// Manifests that refer to this one (signatures, SBOMs, validation reports).
    #[schema(value_type = Vec<Object>)]
    pub referrers: Value,
    /// Packages that contain this entry: `{id, kind, path}`.
    #[schema(value_type = Vec<Object>)]
    pub contained_in: Vec<Value>,
    /// Entries this one contains (a package's images): `{id, kind, path}`.
    #[schema(value_type = Vec<Object>)]
    pub contains: Vec<Value>,
    /// Every version of this name, oldest first: `{id, version, status, created_at}`.
    #[schema(value_type = Vec<Object>)]
    pub versions: Vec<Value>,
}

impl From<EntryView> for EntryDetail {
    fn from(v: EntryView) -> Self {
        EntryDetail {
            entry: v.entry.into(),
            referrers: v.referrers,
            contained_in: v.contained_in,
            contains: v.contains,
            versions: v.versions,
        }
    }
}

/// Search parameters of `GET /api/v1/images`. Every given one must match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Substring of the name.
    pub q: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// Start of the name.
    pub name_prefix: Option<String>,
    pub namespace: Option<String>,
    pub version: Option<String>,
    /// container-image, vm-image, vnf-package, helm-chart or artifact.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub status: Option<String>,
    /// Vendor or VNF provider.
    pub vendor: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub disk_format: Option<String>,
    /// Only entries the inventory shows on this VIM (id or name).
    pub vim: Option<String>,
    /// `key=value` (label equals) or `key` (label present); repeat for several.
    pub label: Option<Vec<String>>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// RFC 3339 time.
    pub created_after: Option<String>,
    /// RFC 3339 time.
    pub created_before: Option<String>,
    /// name, created or size; a leading `-` sorts descending. Default name.
    pub sort: Option<String>,
    /// Entries per page, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, Problem> {
    v.parse()
        .map_err(|_| Problem(Error::BadRequest(format!("{key}: {v:?} is not a valid number"))))
}

fn time_param(key: &str, v: &str) -> Result<i64, Problem> {
    parse_time(v).ok_or_else(|| Problem(Error::BadRequest(format!("{key}: {v:?} is not an RFC 3339 time"))))
}

/// Build the store query from the raw query string (keys may repeat).
fn entry_query(raw: Option<&str>) -> Result<EntryQuery, Problem> {
    let mut q = EntryQuery {
        limit: 100,
        ..Default::default()
    };
    let mut cursor = None;
    for (k, v) in query_pairs(raw) {
        let text = || Some(v.clone()).filter(|s| !s.is_empty());
        match k.as_str() {
            "q" => q.name_contains = text().map(|s| s.to_ascii_lowercase()),
            "name" => q.name = text(),
            "name_prefix" => q.name_prefix = text(),
            "namespace" => q.namespace = text(),
            "version" => q.version = text(),
            "type" => {
                if !TYPES.contains(&v.as_str()) {
                    return Err(Problem(Error::BadRequest(format!(
                        "type {v:?}: one of {}",
                        TYPES.join(", ")
                    ))));
                }
                q.kind = text();
            }
            "status" => q.status = text(),
            "vendor" => q.vendor = text(),
            "os" => q.os = text(),
            "architecture" => q.architecture = text(),
            "disk_format" => q.disk_format = text(),
            "vim" => q.vim = text(),
            "label" => match v.split_once('=') {
                Some((k, val)) => q.labels.push((k.to_string(), Some(val.to_string()))),
                None if !v.is_empty() => q.labels.push((v.clone(), None)),
                None => {}
            },
            "min_size" => q.min_size = Some(number(&k, &v)?),
            "max_size" => q.max_size = Some(number(&k, &v)?),
            "created_after" => q.created_after = Some(time_param(&k, &v)?),
            "created_before" => q.created_before = Some(time_param(&k, &v)?),
            "sort" => {
                let (desc, key) = match v.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, v.as_str()),
                };
                q.descending = desc;
                q.sort = match key {
                    "name" => SortKey::Name,
                    "created" => SortKey::Created,
                    "size" => SortKey::Size,
                    other => {
                        return Err(Problem(Error::BadRequest(format!(
                            "sort {other:?}: name, created or size (with - for descending)"
                        ))))
                    }
                };
            }
            "limit" => {
                let n: u32 = number(&k, &v)?;
                if !(1..=1000).contains(&n) {
                    return Err(Problem(Error::BadRequest("limit: 1 to 1000".into())));
                }
                q.limit = n;
            }
            "cursor" => cursor = text(),
            other => {
                return Err(Problem(Error::BadRequest(format!("unknown query parameter {other:?}"))));
            }
        }
    }
    if q.labels.len() > 20 {
        return Err(Problem(Error::BadRequest("at most 20 label filters".into())));
    }
    if let Some(c) = cursor {
        q.after = Some(decode_cursor(&c, q.sort)?);
    }
    Ok(q)
}

/// Search the catalog.
#[utoipa::path(
    get, path = "/api/v1/images", tag = "catalog",
    params(ListParams),
    responses(
        (status = 200, description = "One page of entries the caller may read", body = EntryPage),
        (status = 400, description = "Invalid parameter", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "The VIM of `vim` is unknown", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn list_entries(State(state): State<AppState>, parts: Parts) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let mut q = entry_query(parts.uri.query())?;
    if let Some(vim) = q.vim.take() {
        // By id or name; an unknown VIM is a 404 naming it, not an empty page.
        let engine = state
            .distribution
            .get()
            .ok_or_else(|| Error::BadRequest("vim: this server distributes to no VIMs".into()))?;
        q.vim = Some(engine.vims().find(&vim).await?.id);
    }
    let page = state.search(&c.principal, q).await?;
    let next = page.next.clone();
    let body = EntryPage {
        items: page.items.into_iter().map(Entry::from).collect(),
        next_cursor: page.next,
    };
    let mut resp = Json(body).into_response();
    if let Some(next) = next {
        let mut pairs: Vec<(String, String)> = query_pairs(parts.uri.query())
            .into_iter()
            .filter(|(k, _)| k != "cursor")
            .collect();
        pairs.push(("cursor".into(), next));
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        if let Ok(v) = HeaderValue::from_str(&format!("</api/v1/images?{qs}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// Read one entry, with its layers, referrers, packages and versions.
#[utoipa::path(
    get, path = "/api/v1/images/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Entry id")),
    responses(
        (status = 200, description = "The entry", body = EntryDetail),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such entry, or not readable by the caller", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn get_entry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<EntryDetail>, Problem> {
    let c = caller(&state, &parts).await?;
    Ok(Json(state.entry_view(&c.principal, &id).await?.into()))
}

/// Change an entry's status, description, labels or VM image metadata (maintainers).
#[utoipa::path(
    patch, path = "/api/v1/images/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Entry id")),
    request_body = EntryPatch,
    responses(
        (status = 200, description = "The entry as changed", body = Entry),
        (status = 400, description = "Invalid change", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a maintainer of the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The entry changed meanwhile", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn update_entry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Result<Json<EntryPatch>, JsonRejection>,
) -> Result<Json<Entry>, Problem> {
    let c = caller(&state, &parts).await?;
    let patch = body
        .map(|Json(b)| b)
        .map_err(|e| Problem(Error::BadRequest(e.body_text())))?;
    let e = state.update_entry(&c.principal, &id, &patch).await?;
    let detail = serde_json::to_string(&patch).ok();
    c.audit(
        &state,
        "entry.update",
        &format!("{}:{}", e.repository, e.tag),
        Some(&e.namespace),
        detail,
    )
    .await;
    Ok(Json(e.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete even while VNF packages contain the entry.
    pub force: Option<bool>,
}

/// Delete an entry and its tag (the bytes go at the next garbage collection).
#[utoipa::path(
    delete, path = "/api/v1/images/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Entry id"), DeleteParams),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid parameter", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a maintainer of the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 405, description = "Deletes are disabled", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "A VNF package contains it (the packages are named)", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn delete_entry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let c = caller(&state, &parts).await?;
    let (mut force, mut undistribute) = (false, false);
    for (k, v) in query_pairs(parts.uri.query()) {
        match (k.as_str(), v.as_str()) {
            ("force", "true" | "1") => force = true,
            ("force", "false" | "0") => force = false,
            ("undistribute", "true" | "1") => undistribute = true,
            ("undistribute", "false" | "0") => undistribute = false,
            (k @ ("force" | "undistribute"), other) => {
                return Err(Problem(Error::BadRequest(format!(
                    "{k}: {other:?} is not true or false"
                ))))
            }
            (other, _) => return Err(Problem(Error::BadRequest(format!("unknown query parameter {other:?}")))),
        }
    }
    let e = state
        .delete_entry(&c.actor(), &c.principal, &id, force, undistribute)
        .await?;
    c.audit(
        &state,
        "entry.delete",
        &format!("{}:{}", e.repository, e.tag),
        Some(&e.namespace),
        force.then(|| "forced".to_string()),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Metadata of an upload, as query parameters, `X-Image-Meta-*` headers or multipart fields.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Namespace (default: the configured default namespace, `library`).
    pub namespace: Option<String>,
    /// Name of the image (a repository path within the namespace).
    pub name: Option<String>,
    /// Version (a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
    pub version: Option<String>,
    /// Declared disk format: qcow2, raw, vmdk, vhd, vhdx or iso; the bytes must agree.
    pub disk_format: Option<String>,
    /// Glance container format (default bare).
    pub container_format: Option<String>,
    /// Minimum disk in bytes.
    pub min_disk: Option<u64>,
    /// Minimum RAM in bytes.
    pub min_ram: Option<u64>,
    pub os_type: Option<String>,
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    pub architecture: Option<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    /// `key=value`; repeat for several.
    pub label: Option<Vec<String>>,
    /// File name recorded with the layer (what `oras pull` writes).
    pub file_name: Option<String>,
}

/// Fill `meta` from one (key, value) pair of metadata.
fn set_meta(meta: &mut ImageMeta, key: &str, v: String) -> Result<(), Problem> {
    let some = Some(v.clone()).filter(|s| !s.is_empty());
    match key {
        "namespace" => meta.namespace = some,
        "name" => meta.name = v,
        "version" => meta.version = v,
        "disk_format" => meta.disk_format = some,
        "container_format" => meta.container_format = some,
        "min_disk" => meta.min_disk = Some(number(key, &v)?),
        "min_ram" => meta.min_ram = Some(number(key, &v)?),
        "os_type" => meta.os_type = some,
        "os_distro" => meta.os_distro = some,
        "os_version" => meta.os_version = some,
        "architecture" => meta.architecture = some,
        "vendor" => meta.vendor = some,
        "description" => meta.description = some,
        "file_name" => meta.file_name = some,
        "label" => {
            let (k, val) = v
                .split_once('=')
                .ok_or_else(|| Problem(Error::BadRequest(format!("label {v:?}: key=value"))))?;
            meta.labels.insert(k.to_string(), val.to_string());
        }
        other => return Err(Problem(Error::BadRequest(format!("unknown parameter {other:?}")))),
    }
    Ok(())
}

/// Metadata from the query string and `X-Image-Meta-<Key>` headers (`-` for `_`).
fn upload_meta(parts: &Parts) -> Result<ImageMeta, Problem> {
    let mut meta = ImageMeta::default();
    for (k, v) in query_pairs(parts.uri.query()) {
        set_meta(&mut meta, &k, v)?;
    }
    header_meta(&mut meta, &parts.headers)?;
    Ok(meta)
}

fn header_meta(meta: &mut ImageMeta, headers: &HeaderMap) -> Result<(), Problem> {
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("x-image-meta-") {
            let v = value
                .to_str()
                .map_err(|_| Problem(Error::BadRequest(format!("header {name} is not ASCII"))))?;
            set_meta(meta, &key.replace('-', "_"), v.to_string())?;
        }
    }
    Ok(())
}

/// Upload a VM disk image: the raw bytes as the body (`application/octet-stream`) with the
/// metadata in the query or `X-Image-Meta-*` headers, or `multipart/form-data` with metadata
/// fields followed by a `file` part. The bytes decide the disk format; unsafe images
/// (backing or external data files, multi-file VMDKs, contradicting headers, oversized
/// virtual disks) are refused.
#[utoipa::path(
    post, path = "/api/v1/images", tag = "catalog",
    params(UploadParams),
    request_body(content = crate::http::openapi::Binary, content_type = "application/octet-stream", description = "The disk image bytes"),
    responses(
        (status = 201, description = "The new vm-image entry, checksums included", body = Entry, links(("GetEntry" = (operation_id = "get_entry", parameters(("id" = "$response.body#/id")))), ("UpdateEntry" = (operation_id = "update_entry", parameters(("id" = "$response.body#/id")))), ("DeleteEntry" = (operation_id = "delete_entry", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid metadata", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace, or over quota", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The version exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The image was refused on inspection", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn upload_image(State(state): State<AppState>, parts: Parts, body: Body) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase();
    let origin = Origin {
        source: "upload",
        package: None,
    };
    admit_upload(&state, &c, &parts, content_type.starts_with("multipart/form-data"))?;
    let entry = if content_type.starts_with("multipart/form-data") {
        let req = axum::http::Request::from_parts(parts.clone(), body);
        let mut form = <Multipart as axum::extract::FromRequest<()>>::from_request(req, &())
            .await
            .map_err(|e| Problem(Error::BadRequest(e.body_text())))?;
        let mut meta = upload_meta(&parts)?;
        let mut fields = 0usize;
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| Problem(Error::BadRequest(format!("multipart: {e}"))))?
                .ok_or_else(|| Problem(Error::BadRequest("multipart: no `file` part".into())))?;
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" {
                if meta.file_name.is_none() {
                    meta.file_name = field
                        .file_name()
                        .map(|f| f.rsplit(['/', '\\']).next().unwrap_or(f).to_string());
                }
                let stream = field.map_err(|e| e.to_string());
                break state
                    .ingest_vm_image(&c.principal, &meta, Box::pin(stream), origin)
                    .await;
            }
            fields += 1;
            if fields > state.catalog.max_fields {
                return Err(Problem(Error::TooLarge(format!(
                    "more than {} metadata fields (catalog.max_fields)",
                    state.catalog.max_fields
                ))));
            }
            let text = field_text(field, &name, state.catalog.max_field_bytes).await?;
            set_meta(&mut meta, &name, text)?;
        }
    } else if content_type.starts_with("application/octet-stream") || content_type.is_empty() {
        let meta = upload_meta(&parts)?;
        state
            .ingest_vm_image(&c.principal, &meta, body.into_data_stream(), origin)
            .await
    } else {
        return Err(Problem(Error::UnsupportedMediaType(format!(
            "Content-Type {content_type:?}: send application/octet-stream or multipart/form-data"
        ))));
    };
    let entry = match entry {
        Ok(e) => e,
        Err(e) => {
            audit_refusal(&state, &c, "image.upload", &e).await;
            return Err(Problem(e));
        }
    };
    c.audit(
        &state,
        "image.upload",
        &format!("{}:{}", entry.repository, entry.tag),
        Some(&entry.namespace),
        Some(format!(
            "{} bytes, {}",
            entry.size,
            entry.disk_format.clone().unwrap_or_default()
        )),
    )
    .await;
    Ok(created(entry))
}

/// What can be decided before a byte of an upload's body is read: an anonymous caller (who
/// may push nowhere) gets 401, and a body whose Content-Length exceeds what could be stored
/// gets 413.
fn admit_upload(state: &AppState, c: &Caller, parts: &Parts, multipart: bool) -> Result<(), Problem> {
    if state.auth.enabled() && matches!(c.principal, crate::auth::Principal::Anonymous) {
        return Err(Problem(Error::Unauthorized("authentication required to upload".into())));
    }
    let max = match state.config.max_blob_bytes {
        0 => u64::MAX,
        n => n,
    };
    let overhead = if multipart {
        (state.catalog.max_fields as u64 + 2).saturating_mul(state.catalog.max_field_bytes as u64 + 1024)
    } else {
        0
    };
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|l| l > max.saturating_add(overhead)) {
        return Err(Problem(Error::TooLarge(format!(
            "an image may have at most {max} bytes (registry.max_blob_bytes)"
        ))));
    }
    Ok(())
}

/// A multipart metadata field as text, refused (413) once it passes `cap` bytes.
async fn field_text(mut field: axum::extract::multipart::Field<'_>, name: &str, cap: usize) -> Result<String, Problem> {
    let mut buf = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| Problem(Error::BadRequest(format!("multipart field {name:?}: {e}"))))?
    {
        if buf.len() + chunk.len() > cap {
            return Err(Problem(Error::TooLarge(format!(
                "multipart field {name:?} is larger than {cap} bytes (catalog.max_field_bytes)"
            ))));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| Problem(Error::BadRequest(format!("multipart field {name:?} is not UTF-8"))))
}

/// 201 with the new entry and its Location.
fn created(entry: EntryRecord) -> Response {
    let location = format!("/api/v1/images/{}", entry.id);
    let mut resp = (StatusCode::CREATED, Json(Entry::from(entry))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn audit_refusal(state: &AppState, c: &Caller, action: &str, e: &Error) {
    if matches!(e, Error::Refused { .. }) {
        c.audit_outcome(state, action, "refused", Some(e.to_string())).await;
    }
}

/// Onboard a VNF package (ETSI SOL004 CSAR zip) as the raw body: the manifest's hashes are
/// verified, hostile archives refused, contained software images become vm-image entries
/// linked to the package and checked against the VNFD.
#[utoipa::path(
    post, path = "/api/v1/packages", tag = "catalog",
    params(crate::core::package::PackageParams),
    request_body(content = crate::http::openapi::Binary, content_type = "application/octet-stream", description = "The CSAR bytes (sent as application/zip or application/octet-stream)"),
    responses(
        (status = 201, description = "The new vnf-package entry (its images are in details.package.software_images)", body = Entry, links(("GetEntry" = (operation_id = "get_entry", parameters(("id" = "$response.body#/id")))), ("UpdateEntry" = (operation_id = "update_entry", parameters(("id" = "$response.body#/id")))), ("DeleteEntry" = (operation_id = "delete_entry", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid metadata", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace, or over quota", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The version exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The package is larger than allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The package was refused (every problem listed in `problems`)", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn upload_package(State(state): State<AppState>, parts: Parts, body: Body) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    admit_upload(&state, &c, &parts, false)?;
    let params = crate::core::package::PackageParams::from_pairs(query_pairs(parts.uri.query()))?;
    let entry = match state
        .onboard_package(&c.principal, &params, body.into_data_stream())
        .await
    {
        Ok(e) => e,
        Err(e) => {
            audit_refusal(&state, &c, "package.upload", &e).await;
            return Err(Problem(e));
        }
    };
    c.audit(
        &state,
        "package.upload",
        &format!("{}:{}", entry.repository, entry.tag),
        Some(&entry.namespace),
        None,
    )
    .await;
    Ok(created(entry))
}

/// A resumable upload session.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadSession {
    pub id: String,
    /// Bytes received so far: the next chunk starts here.
    pub offset: u64,
    pub repository: String,
    pub version: String,
    /// Always `uploading` while the session is open.
    pub status: String,
}

fn session_response(status: StatusCode, id: &str, repository: &str, version: &str, offset: u64) -> Response {
    let body = UploadSession {
        id: id.to_string(),
        offset,
        repository: repository.to_string(),
        version: version.to_string(),
        status: "uploading".into(),
    };
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/images/uploads/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        resp.headers_mut().insert("upload-offset", v);
    }
    resp
}

/// Start a resumable VM image upload (for multi-GB files over unreliable links): the same
/// metadata as `POST /api/v1/images`, no body. Then `PATCH` chunks, `PUT` to finish.
#[utoipa::path(
    post, path = "/api/v1/images/uploads", tag = "catalog",
    params(UploadParams),
    responses(
        (status = 202, description = "The session; send chunks to its Location", body = UploadSession, links(("UploadStatus" = (operation_id = "upload_status", parameters(("id" = "$response.body#/id")))), ("AppendUpload" = (operation_id = "append_upload", parameters(("id" = "$response.body#/id")))), ("FinishUpload" = (operation_id = "finish_upload", parameters(("id" = "$response.body#/id")))), ("CancelUpload" = (operation_id = "cancel_upload", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid metadata", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The version exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn start_upload(State(state): State<AppState>, parts: Parts) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let meta = upload_meta(&parts)?;
    let id = state.start_image_upload(&c.principal, &meta).await?;
    let (rec, _, offset) = state.image_upload(&c.principal, &id).await?;
    Ok(session_response(
        StatusCode::ACCEPTED,
        &id,
        &rec.repository,
        &rec.tag,
        offset,
    ))
}

/// Where a resumable upload stands.
#[utoipa::path(
    get, path = "/api/v1/images/uploads/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = UploadSession),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such session (finished, cancelled or expired)", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn upload_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let (rec, _, offset) = state.image_upload(&c.principal, &id).await?;
    Ok(session_response(StatusCode::OK, &id, &rec.repository, &rec.tag, offset))
}

/// Where the client says a chunk starts and how long it is: `Content-Range: START-END`
/// (inclusive, as on /v2) or `Upload-Offset: START`.
fn chunk_position(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>), Problem> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(range) = text("content-range") {
        let (start, len) = super::headers::parse_content_range(range)
            .map_err(|_| Problem(Error::BadRequest(format!("Content-Range {range:?}: START-END"))))?;
        return Ok((Some(start), Some(len)));
    }
    if let Some(off) = text("upload-offset") {
        return Ok((Some(number("Upload-Offset", off)?), None));
    }
    Ok((None, None))
}

/// Append a chunk. A chunk that does not start at the session's offset is refused (416) and
/// the answer says where to resume.
#[utoipa::path(
    patch, path = "/api/v1/images/uploads/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = crate::http::openapi::Binary, content_type = "application/octet-stream", description = "The next bytes"),
    responses(
        (status = 202, description = "Stored; the new offset", body = UploadSession),
        (status = 400, description = "Invalid Content-Range", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 416, description = "The chunk does not start at the session's offset", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn append_upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Body,
) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let (start, len) = chunk_position(&parts.headers)?;
    let (rec, offset) = state
        .append_image_upload(&c.principal, &id, start, len, body.into_data_stream())
        .await?;
    Ok(session_response(
        StatusCode::ACCEPTED,
        &id,
        &rec.repository,
        &rec.tag,
        offset,
    ))
}

/// Finish: an optional last chunk as the body, then the bytes are hashed and inspected and the
/// image is catalogued (or refused, which ends the session).
#[utoipa::path(
    put, path = "/api/v1/images/uploads/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = crate::http::openapi::Binary, content_type = "application/octet-stream", description = "The last bytes, if any"),
    responses(
        (status = 201, description = "The new vm-image entry", body = Entry),
        (status = 400, description = "Empty upload or invalid Content-Range", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace, or over quota", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The version exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 416, description = "The last chunk does not start at the session's offset", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The image was refused on inspection", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn finish_upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Body,
) -> Result<Response, Problem> {
    let c = caller(&state, &parts).await?;
    let (start, len) = chunk_position(&parts.headers)?;
    let has_body = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    if has_body {
        state
            .append_image_upload(&c.principal, &id, start, len, body.into_data_stream())
            .await?;
    }
    let entry = match state.finish_image_upload(&c.principal, &id).await {
        Ok(e) => e,
        Err(e) => {
            audit_refusal(&state, &c, "image.upload", &e).await;
            return Err(Problem(e));
        }
    };
    c.audit(
        &state,
        "image.upload",
        &format!("{}:{}", entry.repository, entry.tag),
        Some(&entry.namespace),
        Some(format!(
            "{} bytes, {}, resumable",
            entry.size,
            entry.disk_format.clone().unwrap_or_default()
        )),
    )
    .await;
    Ok(created(entry))
}

/// Abandon a resumable upload and its bytes.
#[utoipa::path(
    delete, path = "/api/v1/images/uploads/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 401, description = "Bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub async fn cancel_upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let c = caller(&state, &parts).await?;
    state.cancel_image_upload(&c.principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
