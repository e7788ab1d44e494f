//! The VIM and distribution API under `/api/v1`, and the download links VIMs fetch images
//! from (`/dl/{token}`).
//!
//! * `/api/v1/vims`: register (POST), list; `/api/v1/vims/{id}`: read, update (PATCH, a
//!   merge), remove; `POST /api/v1/vims/{id}/test` checks it now; `GET
//!   /api/v1/vims/{id}/images` is what it holds (known and unknown), `POST
//!   /api/v1/vims/{id}/sync` syncs that now.
//! * `/api/v1/distributions`: start (POST) and list jobs; `/api/v1/distributions/{id}` reads
//!   one, `/events` streams its targets' changes (server-sent events), `/cancel` and `/retry`
//!   (optionally `?vim=` / `?entry=`) act on its targets. `POST /api/v1/undistributions`
//!   removes images from VIMs. `GET /api/v1/images/{id}/vims` says where an entry is.
//!
//! Handlers translate HTTP to `core::vims` / `core::distribution` calls and back; errors are
//! problem+json.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::api::caller;
use super::headers::parse_range;
use super::AppState;
use crate::core::distribution::{DistributionRequest, DistributionView, ImportRequest, SyncReport};
use crate::core::names::{Digest, RepoName};
use crate::core::vims::{VimInput, VimView};
use crate::error::{Error, Problem};
use crate::storage::vims::VimImageRecord;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/vims", get(list_vims).post(register_vim))
        .route("/api/v1/vims/{id}", get(get_vim).patch(update_vim).delete(remove_vim))
        .route("/api/v1/vims/{id}/test", post(test_vim))
        .route("/api/v1/vims/{id}/images", get(vim_images))
        .route("/api/v1/vims/{id}/sync", post(sync_vim))
        .route("/api/v1/vims/{id}/images/{remote}/import", post(import_image))
        .route(
            "/api/v1/distributions",
            get(list_distributions).post(create_distribution),
        )
        .route("/api/v1/undistributions", post(create_undistribution))
        .route("/api/v1/distributions/{id}", get(get_distribution))
        .route("/api/v1/distributions/{id}/events", get(distribution_events))
        .route("/api/v1/distributions/{id}/cancel", post(cancel_distribution))
        .route("/api/v1/distributions/{id}/retry", post(retry_distribution))
        .route("/api/v1/images/{id}/vims", get(entry_vims))
        .route("/dl/{token}", get(download))
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    body.map(|Json(b)| b)
        .map_err(|e| Problem(Error::BadRequest(e.body_text())))
}

fn engine(state: &AppState) -> Result<&std::sync::Arc<crate::core::distribution::Distribution>, Problem> {
    state
        .distribution
        .get()
        .ok_or_else(|| Problem(Error::Unsupported("distribution is not running on this server".into())))
}

fn query(parts: &Parts, allowed: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(Problem(Error::BadRequest(format!("unknown query parameter {k:?}"))));
        }
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The registered VIMs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct VimList {
    vims: Vec<VimView>,
}

/// What a VIM holds, as its last inventory sync (and the distributions since) saw it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct VimImages {
    /// The VIM's id.
    vim: String,
    /// Images that are catalog entries (`entry_id` set).
    known: Vec<VimImageRecord>,
    /// Images the catalog does not have (`entry_id` null): importable.
    unknown: Vec<VimImageRecord>,
}

/// Distribution jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DistributionList {
    distributions: Vec<DistributionView>,
}

/// Where a catalog entry is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EntryVims {
    /// The entry id asked about.
    entry: String,
    /// Its images on VIMs, in VIM order.
    vims: Vec<VimImageRecord>,
}

/// One server-sent event of `GET /api/v1/distributions/{id}/events` (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct DistributionEvent {
    /// `target` (a target changed; data: the target as in `targets`), `job` (after each
    /// round; data: `{"id", "state", "counts"}`) or `error` (the job could no longer be read;
    /// data: why, as text; the stream ends).
    event: String,
    /// The event's data: JSON for `target` and `job`.
    data: String,
}

/// Query of `GET /api/v1/vims`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct VimListParams {
    /// Only VIMs whose labels hold every pair: `key=value,key2=value2`.
    selector: Option<String>,
}

/// Query of `GET /api/v1/distributions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct DistributionListParams {
    /// At most this many jobs (1 to 1000; default 100).
    limit: Option<u32>,
}

/// Which targets of a job its view lists (default all); the counts always cover all.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct TargetListing {
    /// Only targets in these states, comma-separated (pending, transferring, verifying,
    /// active, failed, cancelled, removed).
    state: Option<String>,
    /// `false`: no targets, only the job and its counts (cheap to poll at thousands of targets).
    targets: Option<bool>,
}

/// The target states a job view may be filtered by.
const TARGET_STATES: [&str; 7] = [
    "pending",
    "transferring",
    "verifying",
    "active",
    "failed",
    "cancelled",
    "removed",
];

/// Which targets of a job `cancel` and `retry` act on (default all).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct TargetFilter {
    /// Only the targets on this VIM (id or name).
    vim: Option<String>,
    /// Only the targets of this catalog entry id.
    entry: Option<String>,
}

/// Register a VIM (system administrators). Secrets are sealed at rest and never shown.
#[utoipa::path(
    post, path = "/api/v1/vims", tag = "distribution",
    request_body = VimInput,
    responses(
        (status = 201, description = "The VIM, not yet checked (`health.state` unknown)", body = VimView,
            headers(("Location" = String, description = "/api/v1/vims/{id}")),
            links(("GetVim" = (operation_id = "get_vim", parameters(("id" = "$response.body#/id")))), ("UpdateVim" = (operation_id = "update_vim", parameters(("id" = "$response.body#/id")))), ("RemoveVim" = (operation_id = "remove_vim", parameters(("id" = "$response.body#/id")))), ("TestVim" = (operation_id = "test_vim", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid request: a body that is not the JSON documented (not application/json, malformed, unknown fields, over 2 MiB), or a setting refused", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a system administrator", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "A VIM of that name exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn register_vim(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<VimInput>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<VimView>), Problem> {
    let who = caller(&state, &parts).await?.actor();
    let vims = engine(&state)?.vims().clone();
    vims.may_change(&who).await?;
    let view = vims.register(&who, json_body(body)?).await?;
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("/api/v1/vims/{}", view.id).parse() {
        h.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, h, Json(view)))
}

/// The registered VIMs (any authenticated caller), in name order.
#[utoipa::path(
    get, path = "/api/v1/vims", tag = "distribution",
    params(VimListParams),
    responses(
        (status = 200, description = "The VIMs (matching `selector`)", body = VimList),
        (status = 400, description = "An unknown query parameter, or a selector that is not key=value pairs", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_vims(State(state): State<AppState>, parts: Parts) -> Result<Json<VimList>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["selector"])?;
    let mut vims = engine(&state)?.vims().list(&who).await?;
    if let Some(sel) = param(&pairs, "selector") {
        let sel = crate::core::vims::parse_selector(sel)?;
        vims.retain(|v| crate::core::vims::selector_matches(&sel, &v.labels));
    }
    Ok(Json(VimList { vims }))
}

/// A VIM (any authenticated caller).
#[utoipa::path(
    get, path = "/api/v1/vims/{id}", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    responses(
        (status = 200, description = "The VIM", body = VimView),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn get_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<VimView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    Ok(Json(engine(&state)?.vims().get(&who, &id).await?))
}

/// Change a VIM (system administrators), merging the body over its registration: a field
/// given replaces, `null` removes it, `labels` replaces every label; a secret given replaces
/// the sealed one (`null` removes it). The result is validated like a registration; `type`
/// cannot change.
#[utoipa::path(
    patch, path = "/api/v1/vims/{id}", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    request_body = VimInput,
    responses(
        (status = 200, description = "The VIM as changed", body = VimView),
        (status = 400, description = "Invalid request: a body that is not the JSON documented (not application/json, malformed, unknown fields, over 2 MiB), or a setting refused", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a system administrator", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Another VIM has that name, or the VIM changed meanwhile", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn update_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Result<Json<Map<String, Value>>, JsonRejection>,
) -> Result<Json<VimView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let vims = engine(&state)?.vims().clone();
    vims.may_change(&who).await?;
    Ok(Json(vims.update(&who, &id, json_body(body)?).await?))
}

/// Remove a VIM (system administrators) and what the catalog knows it holds; the images stay
/// on the VIM.
#[utoipa::path(
    delete, path = "/api/v1/vims/{id}", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a system administrator", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn remove_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    engine(&state)?.vims().remove(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check a VIM now (system administrators): reachable, authenticated, its free quota where
/// it tells. The outcome is the VIM's `health`, whatever it is.
#[utoipa::path(
    post, path = "/api/v1/vims/{id}/test", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    responses(
        (status = 200, description = "The VIM with the health just found", body = VimView),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a system administrator", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn test_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<VimView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    Ok(Json(engine(&state)?.vims().test(&who, &id).await?))
}

/// What a VIM holds (any authenticated caller), as its last inventory sync and the
/// distributions since saw it.
#[utoipa::path(
    get, path = "/api/v1/vims/{id}/images", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    responses(
        (status = 200, description = "Its images, known to the catalog or not", body = VimImages),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn vim_images(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<VimImages>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let d = engine(&state)?;
    d.vims().may_read(&who).await?;
    let vim = d.vims().find(&id).await?;
    let images = d.vims().store().inventory_of_vim(&vim.id).await.map_err(Error::from)?;
    let (known, unknown): (Vec<_>, Vec<_>) = images.into_iter().partition(|i| i.entry_id.is_some());
    Ok(Json(VimImages {
        vim: vim.id,
        known,
        unknown,
    }))
}

/// Sync a VIM's inventory now (system administrators): list what it holds and link the
/// images that are catalog entries.
#[utoipa::path(
    post, path = "/api/v1/vims/{id}/sync", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name")),
    responses(
        (status = 200, description = "What the sync found", body = SyncReport),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a system administrator", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No VIM of that id or name", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The VIM failed or refused the listing", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn sync_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<SyncReport>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let d = engine(&state)?;
    d.vims().may_change(&who).await?;
    let vim = d.vims().find(&id).await?;
    let report = d.sync_inventory(&vim).await?;
    d.vims().audit(&who, "vim.sync", &vim.id, "ok", None).await;
    Ok(Json(report))
}

/// Import an image a Glance VIM holds (and the catalog does not) into the catalog: fetched,
/// hashed and inspected like an upload (push right in the namespace). The image must be in
/// the VIM's inventory (sync it first).
#[utoipa::path(
    post, path = "/api/v1/vims/{id}/images/{remote}/import", tag = "distribution",
    params(("id" = String, Path, description = "VIM id, or name"), ("remote" = String, Path, description = "The VIM's id of the image (a Glance image id)")),
    request_body = ImportRequest,
    responses(
        (status = 201, description = "The new vm-image entry", body = crate::http::catalog::Entry),
        (status = 400, description = "Invalid request (a body that is not the JSON documented) or metadata, a VIM that is not openstack, an image without a name on the VIM and none given", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in the namespace, or over quota", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such VIM, or no such image in its inventory or on it", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The image is a catalog entry already, or the version exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The image is larger than a blob may be", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The image was refused on inspection", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The VIM failed or refused", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn import_image(
    State(state): State<AppState>,
    Path((id, remote)): Path<(String, String)>,
    parts: Parts,
    body: Result<Json<ImportRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<crate::http::catalog::Entry>), Problem> {
    let c = caller(&state, &parts).await?;
    let req = json_body(body)?;
    let e = state.import_from_vim(&c.principal, &id, &remote, req).await?;
    c.audit(
        &state,
        "vim.import",
        &format!("{}:{}", e.repository, e.tag),
        Some(&e.namespace),
        Some(remote),
    )
    .await;
    Ok((StatusCode::CREATED, Json(e.into())))
}

async fn create(
    state: &AppState,
    parts: &Parts,
    body: Result<Json<DistributionRequest>, JsonRejection>,
    remove: bool,
) -> Result<(StatusCode, HeaderMap, Json<DistributionView>), Problem> {
    let who = caller(state, parts).await?.actor();
    let view = engine(state)?.create(&who, json_body(body)?, remove).await?;
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("/api/v1/distributions/{}", view.id).parse() {
        h.insert(header::LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, h, Json(view)))
}

/// Distribute catalog entries to VIMs: one target per image and VIM, run in the background.
/// Needs the push right in every namespace of the images. OpenStack and MultiCloud VIMs take
/// VM images only.
#[utoipa::path(
    post, path = "/api/v1/distributions", tag = "distribution",
    request_body = DistributionRequest,
    responses(
        (status = 202, description = "The job, its targets pending", body = DistributionView,
            headers(("Location" = String, description = "/api/v1/distributions/{id}")),
            links(("GetDistribution" = (operation_id = "get_distribution", parameters(("id" = "$response.body#/id")))), ("CancelDistribution" = (operation_id = "cancel_distribution", parameters(("id" = "$response.body#/id")))), ("RetryDistribution" = (operation_id = "retry_distribution", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid request: a body that is not the JSON documented, no images, no VIM named or selected, a bad method, on_replace, visibility or tags, a non-VM image to a VM-only VIM, too many targets", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in a namespace of the images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "An image or a VIM named is unknown", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn create_distribution(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<DistributionRequest>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<DistributionView>), Problem> {
    create(&state, &parts, body, false).await
}

/// Remove catalog entries' images from VIMs (an un-distribution job, method `remove`).
/// Needs the push right in every namespace of the images.
#[utoipa::path(
    post, path = "/api/v1/undistributions", tag = "distribution",
    request_body = DistributionRequest,
    responses(
        (status = 202, description = "The job, its targets pending", body = DistributionView,
            headers(("Location" = String, description = "/api/v1/distributions/{id}")),
            links(("GetDistribution" = (operation_id = "get_distribution", parameters(("id" = "$response.body#/id")))), ("CancelDistribution" = (operation_id = "cancel_distribution", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid request: a body that is not the JSON documented, no images, no VIM named or selected, bad options, a non-VM image on a VM-only VIM, too many targets", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in a namespace of the images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "An image or a VIM named is unknown", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn create_undistribution(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<DistributionRequest>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<DistributionView>), Problem> {
    create(&state, &parts, body, true).await
}

/// Distribution jobs (any authenticated caller), newest first: those whose images' namespaces
/// the caller may pull from.
#[utoipa::path(
    get, path = "/api/v1/distributions", tag = "distribution",
    params(DistributionListParams),
    responses(
        (status = 200, description = "The jobs", body = DistributionList),
        (status = 400, description = "An unknown query parameter, or a limit that is not a number", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_distributions(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Json<DistributionList>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["limit"])?;
    let limit = match param(&pairs, "limit") {
        Some(v) => v
            .parse()
            .map_err(|_| Problem(Error::BadRequest(format!("limit: {v:?} is not a number"))))?,
        None => 100,
    };
    Ok(Json(DistributionList {
        distributions: engine(&state)?.list(&who, limit).await?,
    }))
}

/// A distribution job with its targets (pull right in its images' namespaces).
#[utoipa::path(
    get, path = "/api/v1/distributions/{id}", tag = "distribution",
    params(("id" = String, Path, description = "Distribution job id"), TargetListing),
    responses(
        (status = 200, description = "The job", body = DistributionView),
        (status = 400, description = "An unknown query parameter, target state, or a `targets` that is not true or false", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No pull right in a namespace of its images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn get_distribution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<DistributionView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["state", "targets"])?;
    let states: Option<Vec<&str>> = param(&pairs, "state").map(|s| s.split(',').filter(|s| !s.is_empty()).collect());
    if let Some(bad) = states.iter().flatten().find(|s| !TARGET_STATES.contains(s)) {
        return Err(Problem(Error::BadRequest(format!(
            "state {bad:?}: one of {}",
            TARGET_STATES.join(", ")
        ))));
    }
    let with_targets = match param(&pairs, "targets") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(Problem(Error::BadRequest(format!("targets {other:?}: true or false")))),
    };
    let mut view = engine(&state)?.get(&who, &id).await?;
    if !with_targets {
        view.targets.clear();
    } else if let Some(states) = states {
        view.targets.retain(|t| states.contains(&t.state.as_str()));
    }
    Ok(Json(view))
}

/// Cancel a job's targets that have not finished (push right in its images' namespaces).
#[utoipa::path(
    post, path = "/api/v1/distributions/{id}/cancel", tag = "distribution",
    params(("id" = String, Path, description = "Distribution job id"), TargetFilter),
    responses(
        (status = 200, description = "The job after the change", body = DistributionView),
        (status = 400, description = "An unknown query parameter", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in a namespace of its images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such VIM", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn cancel_distribution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<DistributionView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["vim", "entry"])?;
    Ok(Json(
        engine(&state)?
            .cancel(&who, &id, param(&pairs, "vim"), param(&pairs, "entry"))
            .await?,
    ))
}

/// Run again a job's targets that failed or were cancelled (push right in its images'
/// namespaces).
#[utoipa::path(
    post, path = "/api/v1/distributions/{id}/retry", tag = "distribution",
    params(("id" = String, Path, description = "Distribution job id"), TargetFilter),
    responses(
        (status = 200, description = "The job after the change", body = DistributionView),
        (status = 400, description = "An unknown query parameter", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No push right in a namespace of its images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such VIM", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn retry_distribution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<DistributionView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["vim", "entry"])?;
    Ok(Json(
        engine(&state)?
            .retry(&who, &id, param(&pairs, "vim"), param(&pairs, "entry"))
            .await?,
    ))
}

/// The job's targets as server-sent events: one `target` event per change (and each at the
/// start), a `job` event with the job's state after each round, and the stream ends once every
/// target is final. Polls the store, so it sees the changes any replica makes.
#[utoipa::path(
    get, path = "/api/v1/distributions/{id}/events", tag = "distribution",
    params(("id" = String, Path, description = "Distribution job id")),
    responses(
        (status = 200, description = "The stream: `target` events, a `job` event after each round; it ends once every target is final", body = DistributionEvent, content_type = "text/event-stream"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No pull right in a namespace of its images", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn distribution_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Response, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let d = engine(&state)?.clone();
    let first = d.get(&who, &id).await?;
    let every = Duration::from_millis(d.vims().config.poll_interval_ms.clamp(100, 5000));
    let stream = async_stream_of(d, who, id, first, every);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn async_stream_of(
    d: std::sync::Arc<crate::core::distribution::Distribution>,
    who: crate::core::admin::Actor,
    id: String,
    first: DistributionView,
    every: Duration,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    // State: the last view sent (None before the first round) and whether the stream ended.
    futures::stream::unfold(
        (None::<DistributionView>, Some(first), false),
        move |(last, next, ended)| {
            let (d, who, id) = (d.clone(), who.clone(), id.clone());
            async move {
                if ended {
                    return None;
                }
                let view = match next {
                    Some(v) => v,
                    None => {
                        tokio::time::sleep(every).await;
                        match d.get(&who, &id).await {
                            Ok(v) => v,
                            Err(e) => {
                                let ev = Event::default().event("error").data(e.to_string());
                                return Some((vec![Ok(ev)], (last, None, true)));
                            }
                        }
                    }
                };
                let mut events = Vec::new();
                for t in &view.targets {
                    let changed = last.as_ref().and_then(|l| {
                        l.targets
                            .iter()
                            .find(|o| o.entry_id == t.entry_id && o.vim_id == t.vim_id)
                    }) != Some(t);
                    if changed {
                        if let Ok(ev) = Event::default().event("target").json_data(t) {
                            events.push(Ok(ev));
                        }
                    }
                }
                let done = matches!(view.state.as_str(), "active" | "failed" | "cancelled" | "removed");
                if last.as_ref().map(|l| &l.state) != Some(&view.state) || done || !events.is_empty() {
                    if let Ok(ev) = Event::default()
                        .event("job")
                        .json_data(json!({"id": view.id, "state": view.state, "counts": view.counts}))
                    {
                        events.push(Ok(ev));
                    }
                }
                Some((events, (Some(view), None, done)))
            }
        },
    )
    .flat_map(futures::stream::iter)
}

use futures::StreamExt;

/// The VIMs that hold a catalog entry, as their inventories show (read right on the entry).
#[utoipa::path(
    get, path = "/api/v1/images/{id}/vims", tag = "distribution",
    params(("id" = String, Path, description = "Entry id")),
    responses(
        (status = 200, description = "Its images on VIMs", body = EntryVims),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such entry, or not readable by the caller", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn entry_vims(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<EntryVims>, Problem> {
    let c = caller(&state, &parts).await?;
    // Reading the entry checks the caller may see it.
    let entry = state.entry_view(&c.principal, &id).await?;
    let _ = entry;
    let held = engine(&state)?.holders(&id).await?;
    Ok(Json(EntryVims { entry: id, vims: held }))
}

/// A blob through a signed download link (Glance's web-download, MultiCloud's imagePath):
/// no credentials, no redirect, `Range` answered.
async fn download(State(state): State<AppState>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    match download_inner(&state, &token, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn download_inner(state: &AppState, token: &str, headers: &HeaderMap) -> Result<Response, Problem> {
    let d = engine(state)?;
    let grant = d.signer().check(token, crate::storage::now_ms() / 1000)?;
    let repo = RepoName::parse(&grant.repository).map_err(Error::from)?;
    let digest = Digest::parse(&grant.digest).map_err(Error::from)?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let mut blob = state.get_blob(&repo, &digest, range).await?;
    blob.stream = Box::pin(blob.stream.map(|chunk| {
        if let Ok(c) = &chunk {
            crate::metrics::metrics().download_bytes.inc_by(c.len() as u64);
        }
        chunk
    }));
    Ok(super::blob_response(&digest, blob.size, Some(blob)))
}
