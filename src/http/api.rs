//! The `/api/v1` JSON API. For now its admin part: namespaces with their storage usage,
//! quotas, members and visibility; users and robot accounts; the audit log. Errors are
//! RFC 9457 problem+json ([`Problem`]). Callers authenticate with HTTP Basic; what they may
//! do is [`crate::auth`]'s decision.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppState;
use crate::auth::Principal;
use crate::core::admin::{Actor, NamespaceInfo};
use crate::error::{Error, Problem};
use crate::storage::meta::{AuditFilter, AuditRecord, RobotRecord, UserRecord};

/// A user account as the API shows it (never its password hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct User {
    name: String,
    admin: bool,
    disabled: bool,
    /// ms since the epoch.
    created_at: i64,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> Self {
        User {
            name: u.name,
            admin: u.admin,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// A robot account as the API shows it (never its secret's hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Robot {
    name: String,
    namespaces: Vec<String>,
    actions: Vec<String>,
    /// ms since the epoch; `None`: never.
    expires_at: Option<i64>,
    disabled: bool,
    created_at: i64,
}

impl From<RobotRecord> for Robot {
    fn from(r: RobotRecord) -> Self {
        Robot {
            name: r.name,
            namespaces: r.namespaces,
            actions: r.actions,
            expires_at: r.expires_at,
            disabled: r.disabled,
            created_at: r.created_at,
        }
    }
}

/// One audit log entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AuditEntry {
    /// ms since the epoch.
    at: i64,
    actor: String,
    action: String,
    target: String,
    namespace: Option<String>,
    remote: Option<String>,
    /// `ok`, `denied` or `failed`.
    outcome: String,
    detail: Option<String>,
}

impl From<AuditRecord> for AuditEntry {
    fn from(a: AuditRecord) -> Self {
        AuditEntry {
            at: a.at,
            actor: a.actor,
            action: a.action,
            target: a.target,
            namespace: a.namespace,
            remote: a.remote,
            outcome: a.outcome,
            detail: a.detail,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/namespaces", get(list_namespaces))
        .route("/api/v1/admin/namespaces/{ns}", get(get_namespace))
        .route(
            "/api/v1/admin/namespaces/{ns}/quota",
            put(set_quota).delete(clear_quota),
        )
        .route("/api/v1/admin/namespaces/{ns}/visibility", put(set_visibility))
        .route("/api/v1/admin/namespaces/{ns}/members", get(list_members))
        .route(
            "/api/v1/admin/namespaces/{ns}/members/{principal}",
            put(set_member).delete(remove_member),
        )
        .route("/api/v1/admin/users", get(list_users).post(add_user))
        .route("/api/v1/admin/users/{name}", axum::routing::delete(delete_user))
        .route("/api/v1/admin/users/{name}/disable", post(disable_user))
        .route("/api/v1/admin/robots", get(list_robots).post(add_robot))
        .route("/api/v1/admin/robots/{name}", axum::routing::delete(delete_robot))
        .route("/api/v1/admin/robots/{name}/disable", post(disable_robot))
        .route("/api/v1/admin/audit", get(list_audit))
        .fallback(|| async { Problem(Error::NotFound) })
}

/// The authenticated caller of an API request, and where from.
pub(super) struct Caller {
    pub principal: Principal,
    pub remote: Option<String>,
}

pub(super) async fn caller(state: &AppState, parts: &Parts) -> Result<Caller, Problem> {
    let remote = super::remote_addr(&parts.extensions);
    let principal = state
        .auth
        .identify_api(&*state.accounts, &parts.headers, remote.as_deref())
        .await?;
    Ok(Caller { principal, remote })
}

impl Caller {
    /// The caller as the admin service sees it.
    pub(super) fn actor(&self) -> Actor {
        Actor::Principal {
            principal: self.principal.clone(),
            remote: self.remote.clone(),
        }
    }

    pub(super) async fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        ns: Option<&str>,
        detail: Option<String>,
    ) {
        self.record(state, action, target, ns, "ok", detail).await;
    }

    /// Record a refused or failed action.
    pub(super) async fn audit_outcome(&self, state: &AppState, action: &str, outcome: &str, detail: Option<String>) {
        self.record(state, action, "", None, outcome, detail).await;
    }

    async fn record(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        ns: Option<&str>,
        outcome: &str,
        detail: Option<String>,
    ) {
        state
            .admin()
            .record(&self.actor(), action, target, ns, outcome, detail)
            .await;
    }
}

/// A namespace's storage: bytes of the distinct blobs its repositories hold, and its quota.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamespaceUsage {
    pub name: String,
    pub usage_bytes: u64,
    /// `null`: unlimited.
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Bytes; `null` removes the namespace's own quota (the configured default applies).
    pub bytes: Option<u64>,
}

impl From<NamespaceInfo> for NamespaceUsage {
    fn from(n: NamespaceInfo) -> Self {
        NamespaceUsage {
            name: n.name,
            usage_bytes: n.usage_bytes,
            quota_bytes: n.quota_bytes,
        }
    }
}

fn namespace(ns: &str) -> Result<&str, Problem> {
    Ok(crate::core::admin::namespace_name(ns)?)
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    body.map(|Json(b)| b)
        .map_err(|e| Problem(Error::BadRequest(e.body_text())))
}

#[utoipa::path(
    get, path = "/api/v1/admin/namespaces", tag = "admin",
    responses(
        (status = 200, description = "Namespaces the caller administers, with usage and quota", body = Vec<NamespaceUsage>),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_namespaces(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Json<Vec<NamespaceUsage>>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let list = state.admin().namespaces(&who).await?;
    Ok(Json(list.into_iter().map(NamespaceUsage::from).collect()))
}

#[utoipa::path(
    get, path = "/api/v1/admin/namespaces/{ns}", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)")),
    responses(
        (status = 200, description = "Usage and quota", body = NamespaceUsage),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn get_namespace(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    parts: Parts,
) -> Result<Json<NamespaceUsage>, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let info = admin.namespace(&who, ns).await?.info().await?;
    Ok(Json(info.into()))
}

#[utoipa::path(
    put, path = "/api/v1/admin/namespaces/{ns}/quota", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)")),
    request_body = QuotaBody,
    responses(
        (status = 200, description = "Usage and the new quota", body = NamespaceUsage),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn set_quota(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    parts: Parts,
    body: Result<Json<QuotaBody>, JsonRejection>,
) -> Result<Json<NamespaceUsage>, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.namespace(&who, ns).await?;
    let body = json_body(body)?;
    Ok(Json(scope.set_quota(body.bytes).await?.into()))
}

#[utoipa::path(
    delete, path = "/api/v1/admin/namespaces/{ns}/quota", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)")),
    responses(
        (status = 204, description = "The namespace's own quota is removed"),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn clear_quota(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    admin.namespace(&who, ns).await?.clear_quota().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VisibilityBody {
    public: bool,
}

#[utoipa::path(
    put, path = "/api/v1/admin/namespaces/{ns}/visibility", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)")),
    request_body = VisibilityBody,
    responses(
        (status = 200, description = "The visibility", body = Object),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn set_visibility(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    parts: Parts,
    body: Result<Json<VisibilityBody>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.namespace(&who, ns).await?;
    let body = json_body(body)?;
    scope.set_public(body.public).await?;
    Ok(Json(json!({ "name": ns, "public": body.public })))
}

#[utoipa::path(
    get, path = "/api/v1/admin/namespaces/{ns}/members", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)")),
    responses(
        (status = 200, description = "Members and their roles", body = Object),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_members(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    parts: Parts,
) -> Result<Json<Value>, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.namespace(&who, ns).await?;
    let members: Vec<Value> = scope
        .members()
        .await?
        .into_iter()
        .map(|(p, r)| json!({ "principal": p, "role": r }))
        .collect();
    Ok(Json(
        json!({ "namespace": ns, "public": scope.public().await?, "members": members }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberBody {
    role: String,
}

#[utoipa::path(
    put, path = "/api/v1/admin/namespaces/{ns}/members/{principal}", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)"), ("principal" = String, Path, description = "User name")),
    request_body = MemberBody,
    responses(
        (status = 200, description = "The membership", body = Object),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn set_member(
    State(state): State<AppState>,
    Path((ns, principal)): Path<(String, String)>,
    parts: Parts,
    body: Result<Json<MemberBody>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.namespace(&who, ns).await?;
    let body = json_body(body)?;
    let role = scope.set_member(&principal, &body.role).await?;
    Ok(Json(
        json!({ "namespace": ns, "principal": principal, "role": role.as_str() }),
    ))
}

#[utoipa::path(
    delete, path = "/api/v1/admin/namespaces/{ns}/members/{principal}", tag = "admin",
    params(("ns" = String, Path, description = "Namespace (first path segment of repository names)"), ("principal" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn remove_member(
    State(state): State<AppState>,
    Path((ns, principal)): Path<(String, String)>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let ns = namespace(&ns)?;
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.namespace(&who, ns).await?;
    found(scope.remove_member(&principal).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Not found when the admin service found nothing to change.
fn found(changed: bool) -> Result<(), Problem> {
    if changed {
        Ok(())
    } else {
        Err(Problem(Error::NotFound))
    }
}

#[utoipa::path(
    get, path = "/api/v1/admin/users", tag = "admin",
    responses(
        (status = 200, description = "Users", body = Vec<User>),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_users(State(state): State<AppState>, parts: Parts) -> Result<Json<Vec<User>>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let users = admin.system(&who).await?.users().await?;
    Ok(Json(users.into_iter().map(User::from).collect()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserBody {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

#[utoipa::path(
    post, path = "/api/v1/admin/users", tag = "admin",
    request_body = UserBody,
    responses(
        (status = 201, description = "The user", body = User, links(("DeleteUser" = (operation_id = "delete_user", parameters(("name" = "$response.body#/name")))), ("DisableUser" = (operation_id = "disable_user", parameters(("name" = "$response.body#/name")))))),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The user exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn add_user(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.system(&who).await?;
    let body = json_body(body)?;
    let user = scope.add_user(&body.name, &body.password, body.admin).await?;
    Ok((StatusCode::CREATED, Json(User::from(user))))
}

#[utoipa::path(
    delete, path = "/api/v1/admin/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    found(admin.system(&who).await?.delete_user(&name).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/admin/users/{name}/disable", tag = "admin",
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Disabled"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn disable_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    found(admin.system(&who).await?.disable_user(&name).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/admin/robots", tag = "admin",
    responses(
        (status = 200, description = "Robot accounts", body = Vec<Robot>),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_robots(State(state): State<AppState>, parts: Parts) -> Result<Json<Vec<Robot>>, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let robots = admin.system(&who).await?.robots().await?;
    Ok(Json(robots.into_iter().map(Robot::from).collect()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RobotBody {
    name: String,
    namespaces: Vec<String>,
    actions: Vec<String>,
    expires_days: Option<u64>,
}

#[utoipa::path(
    post, path = "/api/v1/admin/robots", tag = "admin",
    request_body = RobotBody,
    responses(
        (status = 201, description = "The robot with its login and secret (shown once)", body = Object, links(("DeleteRobot" = (operation_id = "delete_robot", parameters(("name" = "$response.body#/name")))), ("DisableRobot" = (operation_id = "disable_robot", parameters(("name" = "$response.body#/name")))))),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The robot exists", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn add_robot(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<RobotBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    let scope = admin.system(&who).await?;
    let b = json_body(body)?;
    let (robot, secret) = scope
        .add_robot(&b.name, &b.namespaces, &b.actions, b.expires_days)
        .await?;
    let mut v = serde_json::to_value(Robot::from(robot.clone())).unwrap_or_else(|_| json!({}));
    v["login"] = json!(format!("{}{}", crate::auth::ROBOT_PREFIX, robot.name));
    v["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(
    delete, path = "/api/v1/admin/robots/{name}", tag = "admin",
    params(("name" = String, Path, description = "Robot name (without robot$)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn delete_robot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    found(admin.system(&who).await?.delete_robot(&name).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/admin/robots/{name}/disable", tag = "admin",
    params(("name" = String, Path, description = "Robot name (without robot$)")),
    responses(
        (status = 204, description = "Disabled"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn disable_robot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    parts: Parts,
) -> Result<StatusCode, Problem> {
    let who = caller(&state, &parts).await?.actor();
    let admin = state.admin();
    found(admin.system(&who).await?.disable_robot(&name).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    namespace: Option<String>,
    actor: Option<String>,
    /// ms since the epoch.
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/v1/admin/audit", tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit records, oldest first", body = Vec<AuditEntry>),
        (status = 400, description = "Invalid request", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Authentication required or bad credentials", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = crate::http::openapi::ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("basic" = []))
)]
pub(super) async fn list_audit(
    State(state): State<AppState>,
    parts: Parts,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    let Query(q) = q.map_err(|e| Problem(Error::BadRequest(e.body_text())))?;
    let who = caller(&state, &parts).await?.actor();
    let filter = AuditFilter {
        namespace: q.namespace,
        actor: q.actor,
        since: q.since,
        until: q.until,
    };
    let records = state.admin().audit(&who, filter, q.limit).await?;
    Ok(Json(records.into_iter().map(AuditEntry::from).collect()))
}
