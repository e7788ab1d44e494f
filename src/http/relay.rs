//! The HTTP surface of relay mode ([`crate::core::relay`]): download links (`/dl/{token}`),
//! blob pulls and the small `/v2` reads (ping, manifests, tags, referrers) passed on to the
//! upstream, health and metrics. Pushes and the API belong to the upstream.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use super::blob_response;
use super::headers::parse_range;
use super::registry::{route, Route};
use crate::core::names::{Digest, RepoName};
use crate::core::relay::{Refusal, Relay};
use crate::error::{Error, Problem};

type RelayState = Arc<Relay>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// Manifests, tag lists and referrers passed on are read whole, up to this size.
const MAX_FORWARDED_BYTES: usize = 4 * 1024 * 1024;

pub fn router(relay: RelayState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dl/{token}", any(download))
        .route("/v2", any(registry))
        .route("/v2/", any(registry))
        .route("/v2/{*path}", any(registry))
        .with_state(relay)
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal("handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

/// A refusal in the surface's own format: problem+json under `/dl`, the OCI error body under
/// `/v2`, each with the upstream's challenge when it asked for credentials.
fn refused(r: Refusal, oci: bool) -> Response {
    let mut resp = if oci {
        r.error.into_response()
    } else {
        Problem(r.error).into_response()
    };
    if let Some(c) = r.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    }
    resp
}

fn range_of(headers: &HeaderMap) -> Option<crate::core::uploads::RangeRequest> {
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
}

async fn download(
    State(relay): State<RelayState>,
    method: Method,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = match method {
        Method::HEAD => relay
            .stat_download(&token)
            .await
            .map(|(digest, size)| blob_response(&digest, size, None)),
        Method::GET => relay
            .download(&token, range_of(&headers))
            .await
            .map(|(digest, body)| blob_response(&digest, body.size, Some(body))),
        _ => Err(Error::MethodNotAllowed("download links answer GET and HEAD".into()).into()),
    };
    result.unwrap_or_else(|e| refused(e, false))
}

async fn registry(State(relay): State<RelayState>, req: axum::extract::Request) -> Response {
    let (parts, _body) = req.into_parts();
    let mut resp = registry_inner(&relay, &parts.method, &parts.uri, &parts.headers)
        .await
        .unwrap_or_else(|e| refused(e, true));
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn registry_inner(
    relay: &Relay,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let read_only = || {
        Refusal::from(Error::MethodNotAllowed(format!(
            "this server is a read-only relay of {}: push and delete there",
            relay.upstream()
        )))
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Err(read_only());
    }
    let auth = headers.get(header::AUTHORIZATION);
    match route(uri.path()) {
        Some(Route::Blob(name, digest)) => {
            let name = RepoName::parse(name)?;
            let digest = Digest::parse(digest)?;
            if *method == Method::HEAD {
                let size = relay.stat_blob(name.as_str(), &digest, auth).await?;
                return Ok(blob_response(&digest, size, None));
            }
            let body = relay.blob(name.as_str(), &digest, auth, range_of(headers)).await?;
            Ok(blob_response(&digest, body.size, Some(body)))
        }
        Some(Route::Base | Route::Manifest(..) | Route::Tags(_) | Route::Referrers(..)) => {
            forward(relay, method, uri, headers).await
        }
        Some(Route::Catalog) | Some(Route::UploadStart(_)) | Some(Route::Upload(..)) | None => Err(read_only()),
    }
}

/// A small `/v2` read passed on to the upstream with the client's credentials and `Accept`.
async fn forward(
    relay: &Relay,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let mut fwd = reqwest::header::HeaderMap::new();
    for h in [header::AUTHORIZATION, header::ACCEPT] {
        for v in headers.get_all(&h) {
            fwd.append(h.clone(), v.clone());
        }
    }
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let m = if *method == Method::HEAD {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let (status, up, body) = relay.forward(m, path, &fwd, MAX_FORWARDED_BYTES).await?;
    let mut b = Response::builder().status(status);
    for h in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::WWW_AUTHENTICATE,
        header::LINK,
        header::ETAG,
        CONTENT_DIGEST,
        HeaderName::from_static("oci-filters-applied"),
    ] {
        for v in up.get_all(h.as_str()) {
            b = b.header(h.clone(), v.clone());
        }
    }
    b.body(Body::from(body))
        .map_err(|e| Error::Internal(e.to_string()).into())
}

async fn readyz(State(relay): State<RelayState>) -> Response {
    let (blobs, upstream) = relay.readiness().await;
    let (bytes, count) = relay.usage();
    let ok = blobs.is_ok() && upstream.is_ok();
    let show = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ok { "ok" } else { "unavailable" },
            "mode": "relay",
            "upstream": relay.upstream(),
            "upstream_status": show(upstream),
            "blobs": show(blobs),
            "cached_blobs": count,
            "cached_bytes": bytes,
        })),
    )
        .into_response()
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().encode(),
    )
}
