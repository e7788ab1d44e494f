//! The `/api/v1` JSON API. For now its admin part: namespaces with their storage usage and
//! quotas. Errors are RFC 9457 problem+json ([`Problem`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::core::names::RepoName;
use crate::error::{Error, Problem};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/namespaces", get(list_namespaces))
        .route("/api/v1/admin/namespaces/{ns}", get(get_namespace))
        .route(
            "/api/v1/admin/namespaces/{ns}/quota",
            put(set_quota).delete(clear_quota),
        )
        .fallback(|| async { Problem(Error::NotFound) })
}

/// A namespace's storage: bytes of the distinct blobs its repositories hold, and its quota.
#[derive(Debug, Serialize)]
pub struct NamespaceUsage {
    pub name: String,
    pub usage_bytes: u64,
    /// `null`: unlimited.
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Bytes; `null` removes the namespace's own quota (the configured default applies).
    pub bytes: Option<u64>,
}

fn namespace(ns: &str) -> Result<&str, Problem> {
    let repo = RepoName::parse(ns)?;
    if repo.as_str().contains('/') {
        return Err(Problem(Error::NameInvalid(format!(
            "{ns:?} is not a namespace (one path segment)"
        ))));
    }
    Ok(ns)
}

async fn usage(state: &AppState, ns: &str) -> Result<NamespaceUsage, Problem> {
    Ok(NamespaceUsage {
        name: ns.to_string(),
        usage_bytes: state.meta.namespace_usage(ns).await?,
        quota_bytes: state.quota_of(ns).await?,
    })
}

async fn list_namespaces(State(state): State<AppState>) -> Result<Json<Vec<NamespaceUsage>>, Problem> {
    let mut out = Vec::new();
    for ns in state.meta.namespaces().await? {
        out.push(usage(&state, &ns).await?);
    }
    Ok(Json(out))
}

async fn get_namespace(State(state): State<AppState>, Path(ns): Path<String>) -> Result<Json<NamespaceUsage>, Problem> {
    Ok(Json(usage(&state, namespace(&ns)?).await?))
}

async fn set_quota(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    body: Result<Json<QuotaBody>, JsonRejection>,
) -> Result<Json<NamespaceUsage>, Problem> {
    let ns = namespace(&ns)?;
    let Json(body) = body.map_err(|e| Problem(Error::BadRequest(e.body_text())))?;
    state.meta.set_namespace_quota(ns, body.bytes).await?;
    Ok(Json(usage(&state, ns).await?))
}

async fn clear_quota(State(state): State<AppState>, Path(ns): Path<String>) -> Result<StatusCode, Problem> {
    state.meta.set_namespace_quota(namespace(&ns)?, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
