//! HTTP surfaces: the `/v2` registry API ([`registry`]) and the health endpoints. Later
//! surfaces (catalog API, portal) are nested here beside them.

pub mod api;
pub mod catalog;
pub mod headers;
pub mod openapi;
pub mod registry;
pub mod relay;
pub mod serve;
pub mod token;
pub mod vims;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::core::uploads::BlobBody;
use crate::core::Registry;
use crate::error::Error;
use crate::oci::names::Digest;

pub type AppState = Arc<Registry>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v2", any(registry::dispatch))
        .route("/v2/", any(registry::dispatch))
        .route("/v2/{*path}", any(registry::dispatch))
        .route("/token", get(token::get).post(token::post))
        .merge(catalog::router())
        .merge(openapi::router())
        .merge(vims::router())
        .merge(api::router())
        .with_state(state)
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(CatchPanicLayer::custom(|_| {
            crate::error::Error::Internal("handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// The client's IP address, when the server was started with connection info.
pub fn remote_addr(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// The metrics label of a request path: a fixed set, never a repository or id.
pub fn route_label(path: &str) -> &'static str {
    if path == "/v2" || path.starts_with("/v2/") {
        return registry::route_label(path);
    }
    let api = |rest: &str| -> &'static str {
        match rest.split('/').next().unwrap_or_default() {
            "images" if rest.starts_with("images/uploads") => "api_image_uploads",
            "images" => "api_images",
            "packages" => "api_packages",
            "admin" => "api_admin",
            "vims" => "api_vims",
            "distributions" | "undistributions" => "api_distributions",
            _ => "api_other",
        }
    };
    match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/token" => "token",
        p if p.starts_with("/dl/") => "download",
        p if p.starts_with("/api/v1/") => api(&p["/api/v1/".len()..]),
        p if p.starts_with("/api") || p.starts_with("/openapi") => "api_docs",
        _ => "other",
    }
}

/// The headers of a blob answer; the body is the stream (a `HEAD` gets none).
pub(crate) fn blob_response(digest: &Digest, size: u64, body: Option<BlobBody>) -> Response {
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.as_str());
    let Some(body) = body else {
        return b
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, size)
            .body(Body::empty())
            .unwrap_or_else(|e| Error::Internal(e.to_string()).into_response());
    };
    b = match body.range {
        Some(r) => b
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, r.byte_count())
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end, body.size),
            ),
        None => b.status(StatusCode::OK).header(header::CONTENT_LENGTH, body.size),
    };
    b.body(Body::from_stream(body.stream))
        .unwrap_or_else(|e| Error::Internal(e.to_string()).into_response())
}

/// Prometheus metrics; the gauges that describe state are read now.
async fn metrics(State(reg): State<AppState>) -> impl IntoResponse {
    let m = crate::metrics::metrics();
    reg.observe_state().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// Total size of request headers accepted; larger requests get 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

async fn limit_headers(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > MAX_HEADER_BYTES {
        return crate::error::Error::HeadersTooLarge(MAX_HEADER_BYTES).into_response();
    }
    next.run(req).await
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(reg): State<AppState>) -> impl IntoResponse {
    let crate::core::Readiness {
        metadata: meta,
        blobs,
        free_bytes: free,
    } = reg.readiness().await;
    let status = if meta.is_ok() && blobs.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let show = |r: Result<(), crate::storage::StoreError>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    // Short of space: still ready (reads are served), but pushes are refused.
    let low = free.is_some_and(|f| f < reg.config.min_free_bytes);
    let overall = match (status == StatusCode::OK, low) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    (
        status,
        Json(json!({
            "status": overall,
            "metadata": show(meta),
            "blobs": show(blobs),
            "blobs_free_bytes": free,
            "min_free_bytes": reg.config.min_free_bytes,
        })),
    )
}
