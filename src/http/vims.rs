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
use serde_json::{json, Map, Value};

use super::api::caller;
use super::headers::parse_range;
use super::AppState;
use crate::core::distribution::{DistributionRequest, DistributionView};
use crate::core::names::{Digest, RepoName};
use crate::core::vims::{VimInput, VimView};
use crate::error::{Error, Problem};

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

async fn register_vim(
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

async fn list_vims(State(state): State<AppState>, parts: Parts) -> Result<Json<Value>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["selector"])?;
    let mut vims = engine(&state)?.vims().list(&who).await?;
    if let Some(sel) = param(&pairs, "selector") {
        let sel = crate::core::vims::parse_selector(sel)?;
        vims.retain(|v| crate::core::vims::selector_matches(&sel, &v.labels));
    }
    Ok(Json(json!({ "vims": vims })))
}

async fn get_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<VimView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    Ok(Json(engine(&state)?.vims().get(&who, &id).await?))
}

async fn update_vim(
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

async fn remove_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    engine(&state)?.vims().remove(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test_vim(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<VimView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    Ok(Json(engine(&state)?.vims().test(&who, &id).await?))
}

async fn vim_images(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<Value>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let d = engine(&state)?;
    d.vims().may_read(&who).await?;
    let vim = d.vims().find(&id).await?;
    let images = d.vims().store().inventory_of_vim(&vim.id).await.map_err(Error::from)?;
    let (known, unknown): (Vec<_>, Vec<_>) = images.into_iter().partition(|i| i.entry_id.is_some());
    Ok(Json(json!({ "vim": vim.id, "known": known, "unknown": unknown })))
}

async fn sync_vim(State(state): State<AppState>, Path(id): Path<String>, parts: Parts) -> Result<Json<Value>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let d = engine(&state)?;
    d.vims().may_change(&who).await?;
    let vim = d.vims().find(&id).await?;
    let report = d.sync_inventory(&vim).await?;
    d.vims().audit(&who, "vim.sync", &vim.id, "ok", None).await;
    Ok(Json(report))
}

/// Import an image the VIM holds (and the catalog does not) into the catalog.
async fn import_image(
    State(state): State<AppState>,
    Path((id, remote)): Path<(String, String)>,
    parts: Parts,
    body: Result<Json<crate::core::distribution::ImportRequest>, JsonRejection>,
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

async fn create_distribution(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<DistributionRequest>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<DistributionView>), Problem> {
    create(&state, &parts, body, false).await
}

async fn create_undistribution(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<DistributionRequest>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<DistributionView>), Problem> {
    create(&state, &parts, body, true).await
}

async fn list_distributions(State(state): State<AppState>, parts: Parts) -> Result<Json<Value>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let pairs = query(&parts, &["limit"])?;
    let limit = match param(&pairs, "limit") {
        Some(v) => v
            .parse()
            .map_err(|_| Problem(Error::BadRequest(format!("limit: {v:?} is not a number"))))?,
        None => 100,
    };
    Ok(Json(
        json!({ "distributions": engine(&state)?.list(&who, limit).await? }),
    ))
}

async fn get_distribution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<DistributionView>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    Ok(Json(engine(&state)?.get(&who, &id).await?))
}

async fn cancel_distribution(
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

async fn retry_distribution(
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
async fn distribution_events(
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

async fn entry_vims(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<Value>, Problem> {
    let c = caller(&state, &parts).await?;
    // Reading the entry checks the caller may see it.
    let entry = state.entry_view(&c.principal, &id).await?;
    let _ = entry;
    let held = engine(&state)?.holders(&id).await?;
    Ok(Json(json!({ "entry": id, "vims": held })))
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
