//! The token endpoint of Docker's token authentication (`realm` of the `/v2` challenge):
//! `GET /token?service=&scope=` with optional HTTP Basic, and the OAuth2 form POST
//! (`grant_type=password` or `refresh_token`) newer clients use. It answers a short-lived
//! signed token that carries the grants the policy allows, possibly fewer than asked for, and
//! on request (`access_type=offline`, `offline_token=true`) a long-lived refresh token that
//! stands for the account itself and is exchanged for access tokens as the account is then.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::auth::{Identity, Principal, API_SERVICE, SERVICE};
use crate::error::{Error, Result};

fn pairs(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn all(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether the token is for the API under `/api/v1` (`service=image-manager-api`) rather
/// than the registry.
fn check_service(pairs: &[(String, String)]) -> Result<bool> {
    match one(pairs, "service") {
        Some(API_SERVICE) => Ok(true),
        Some(s) if !s.is_empty() && s != SERVICE => Err(Error::BadRequest(format!(
            "unknown service {s:?}: this server is {SERVICE:?} (and {API_SERVICE:?} for /api/v1)"
        ))),
        _ => Ok(false),
    }
}

async fn answer(
    state: &AppState,
    principal: &Principal,
    scopes: &[String],
    offline: bool,
    api: bool,
) -> Result<Response> {
    if api {
        if matches!(principal, Principal::Anonymous) {
            return Err(Error::Unauthorized("API tokens are for accounts: log in".into()));
        }
        if scopes.iter().any(|s| !s.trim().is_empty()) {
            return Err(Error::BadRequest(
                "API tokens take no scope: each request is decided by the account's rights".into(),
            ));
        }
        let token = state.auth.issue_api(principal)?;
        return Ok(Json(json!({
            "token": token,
            "access_token": token,
            "expires_in": state.auth.token_ttl_secs,
            "issued_at": iso_now(),
        }))
        .into_response());
    }
    let access = state.auth.grant(&*state.accounts, principal, scopes).await?;
    let scope: Vec<String> = access
        .iter()
        .filter(|a| !a.actions.is_empty())
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect();
    let token = state.auth.issue(principal, access)?;
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": state.auth.token_ttl_secs,
        "issued_at": iso_now(),
        "scope": scope.join(" "),
    });
    if offline {
        if let Some(refresh) = state.auth.issue_refresh(principal)? {
            body["refresh_token"] = json!(refresh);
        }
    }
    Ok(Json(body).into_response())
}

/// The current time as RFC 3339 UTC (the `issued_at` of token responses).
fn iso_now() -> String {
    crate::storage::rfc3339(crate::storage::now_ms())
}

/// `GET /token`: Basic credentials (or none, for what anonymous callers may do).
pub async fn get(State(state): State<AppState>, parts: Parts) -> Response {
    run_get(&state, &parts.uri, &parts)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run_get(state: &AppState, uri: &Uri, parts: &Parts) -> Result<Response> {
    if !state.auth.enabled() {
        return Err(Error::NotFound);
    }
    let q = pairs(uri.query().unwrap_or(""));
    let api = check_service(&q)?;
    let remote = super::remote_addr(&parts.extensions);
    let id: Identity = state
        .auth
        .identify(&*state.accounts, &parts.headers, remote.as_deref())
        .await?;
    if id.token.is_some() {
        return Err(Error::Unauthorized("a token cannot be exchanged for another".into()));
    }
    let offline = one(&q, "offline_token") == Some("true");
    answer(state, &id.principal, &all(&q, "scope"), offline, api).await
}

/// `POST /token`: the OAuth2 password grant (`application/x-www-form-urlencoded`).
pub async fn post(State(state): State<AppState>, parts: Parts, body: Bytes) -> Response {
    run_post(&state, &parts, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run_post(state: &AppState, parts: &Parts, body: &[u8]) -> Result<Response> {
    if !state.auth.enabled() {
        return Err(Error::NotFound);
    }
    let form = pairs(std::str::from_utf8(body).map_err(|_| Error::BadRequest("form is not UTF-8".into()))?);
    let api = check_service(&form)?;
    let remote = super::remote_addr(&parts.extensions);
    match one(&form, "grant_type") {
        Some("password") => {
            let user = one(&form, "username").unwrap_or_default();
            let pass = one(&form, "password").unwrap_or_default();
            let principal = state
                .auth
                .login(&*state.accounts, user, pass, remote.as_deref())
                .await?;
            let offline = one(&form, "access_type") == Some("offline");
            answer(state, &principal, &all(&form, "scope"), offline, api).await
        }
        Some("refresh_token") => {
            let refresh = one(&form, "refresh_token")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Error::BadRequest("refresh_token is required with grant_type=refresh_token".into()))?;
            let principal = state.auth.refresh(&*state.accounts, refresh).await?;
            answer(state, &principal, &all(&form, "scope"), false, api).await
        }
        Some(other) => Err(Error::BadRequest(format!(
            "unsupported grant_type {other:?} (password and refresh_token are supported)"
        ))),
        None => Err(Error::BadRequest("grant_type is required".into())),
    }
}
