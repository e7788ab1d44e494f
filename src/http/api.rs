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
use crate::auth::{Action, Principal, Resource, Role};
use crate::core::names::RepoName;
use crate::error::{Error, Problem};
use crate::storage::meta::{AuditFilter, AuditRecord, RobotRecord, UserRecord};
use crate::storage::now_ms;

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
    async fn may(&self, state: &AppState, action: Action, res: Resource<'_>) -> Result<(), Problem> {
        Ok(state
            .auth
            .authorize(&*state.accounts, &self.principal, action, res)
            .await?)
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
        crate::auth::audit(
            &*state.accounts,
            AuditRecord {
                at: now_ms(),
                actor: self.principal.actor(),
                action: action.into(),
                target: target.into(),
                namespace: ns.map(str::to_string),
                remote: self.remote.clone(),
                outcome: outcome.into(),
                detail,
            },
        )
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

fn namespace(ns: &str) -> Result<&str, Problem> {
    let repo = RepoName::parse(ns)?;
    if repo.as_str().contains('/') {
        return Err(Problem(Error::NameInvalid(format!(
            "{ns:?} is not a namespace (one path segment)"
        ))));
    }
    Ok(ns)
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    body.map(|Json(b)| b)
        .map_err(|e| Problem(Error::BadRequest(e.body_text())))
}

async fn usage(state: &AppState, ns: &str) -> Result<NamespaceUsage, Problem> {
    Ok(NamespaceUsage {
        name: ns.to_string(),
        usage_bytes: state.meta.namespace_usage(ns).await?,
        quota_bytes: state.quota_of(ns).await?,
    })
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
    let c = caller(&state, &parts).await?;
    let mut out = Vec::new();
    for ns in state.meta.namespaces().await? {
        if state
            .auth
            .allowed(&*state.accounts, &c.principal, Action::Admin, Resource::Namespace(&ns))
            .await?
        {
            out.push(usage(&state, &ns).await?);
        }
    }
    if out.is_empty() && matches!(c.principal, Principal::Anonymous) && state.auth.enabled() {
        return Err(Problem(Error::Unauthorized("authentication required".into())));
    }
    Ok(Json(out))
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
    caller(&state, &parts)
        .await?
        .may(&state, Action::Admin, Resource::Namespace(ns))
        .await?;
    Ok(Json(usage(&state, ns).await?))
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
    let c = caller(&state, &parts).await?;
    c.may(&state, Action::Admin, Resource::Namespace(ns)).await?;
    let body = json_body(body)?;
    state.meta.set_namespace_quota(ns, body.bytes).await?;
    c.audit(
        &state,
        "quota.set",
        ns,
        Some(ns),
        Some(format!("bytes {:?}", body.bytes)),
    )
    .await;
    Ok(Json(usage(&state, ns).await?))
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
    let c = caller(&state, &parts).await?;
    c.may(&state, Action::Admin, Resource::Namespace(ns)).await?;
    state.meta.set_namespace_quota(ns, None).await?;
    c.audit(&state, "quota.clear", ns, Some(ns), None).await;
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
    let c = caller(&state, &parts).await?;
    c.may(&state, Action::Admin, Resource::Namespace(ns)).await?;
    let body = json_body(body)?;
    state.accounts.set_namespace_public(ns, body.public).await?;
    c.audit(
        &state,
        "namespace.visibility",
        ns,
        Some(ns),
        Some(format!("public {}", body.public)),
    )
    .await;
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
    caller(&state, &parts)
        .await?
        .may(&state, Action::Admin, Resource::Namespace(ns))
        .await?;
    let members: Vec<Value> = state
        .accounts
        .members(ns)
        .await?
        .into_iter()
        .map(|(p, r)| json!({ "principal": p, "role": r }))
        .collect();
    Ok(Json(
        json!({ "namespace": ns, "public": state.accounts.namespace_public(ns).await?, "members": members }),
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
    let c = caller(&state, &parts).await?;
    c.may(&state, Action::Admin, Resource::Namespace(ns)).await?;
    let body = json_body(body)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        Problem(Error::BadRequest(format!(
            "invalid role {:?} (reader, writer, maintainer, admin)",
            body.role
        )))
    })?;
    if !crate::auth::is_account_name(&principal) || state.accounts.user_get(&principal).await?.is_none() {
        return Err(Problem(Error::BadRequest(format!("no user {principal:?}"))));
    }
    state.accounts.set_member(ns, &principal, Some(role.as_str())).await?;
    c.audit(
        &state,
        "member.set",
        &principal,
        Some(ns),
        Some(format!("role {}", role.as_str())),
    )
    .await;
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
    let c = caller(&state, &parts).await?;
    c.may(&state, Action::Admin, Resource::Namespace(ns)).await?;
    let principal = account(&principal)?;
    if !state.accounts.set_member(ns, principal, None).await? {
        return Err(Problem(Error::NotFound));
    }
    c.audit(&state, "member.remove", principal, Some(ns), None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A user or robot name from the path: one that cannot exist is not found.
fn account(name: &str) -> Result<&str, Problem> {
    if crate::auth::is_account_name(name) {
        Ok(name)
    } else {
        Err(Problem(Error::NotFound))
    }
}

async fn system(state: &AppState, parts: &Parts) -> Result<Caller, Problem> {
    let c = caller(state, parts).await?;
    c.may(state, Action::Admin, Resource::System).await?;
    Ok(c)
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
    system(&state, &parts).await?;
    Ok(Json(
        state.accounts.users().await?.into_iter().map(User::from).collect(),
    ))
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
    let c = system(&state, &parts).await?;
    let body = json_body(body)?;
    let user = crate::auth::create_user(&*state.accounts, &body.name, &body.password, body.admin).await?;
    c.audit(
        &state,
        "user.add",
        &user.name,
        None,
        Some(format!("admin {}", user.admin)),
    )
    .await;
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
    let c = system(&state, &parts).await?;
    let changed = state.accounts.user_delete(account(&name)?).await?;
    // Cached Basic checks of this account must not outlive the change.
    state.auth.forget_logins();
    if !changed {
        return Err(Problem(Error::NotFound));
    }
    c.audit(&state, "user.delete", &name, None, None).await;
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
    let c = system(&state, &parts).await?;
    let changed = state.accounts.user_set_disabled(account(&name)?, true).await?;
    // Cached Basic checks of this account must not outlive the change.
    state.auth.forget_logins();
    if !changed {
        return Err(Problem(Error::NotFound));
    }
    c.audit(&state, "user.disable", &name, None, None).await;
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
    system(&state, &parts).await?;
    Ok(Json(
        state.accounts.robots().await?.into_iter().map(Robot::from).collect(),
    ))
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
    let c = system(&state, &parts).await?;
    let b = json_body(body)?;
    let (robot, secret) =
        crate::auth::create_robot(&*state.accounts, &b.name, &b.namespaces, &b.actions, b.expires_days).await?;
    c.audit(&state, "robot.add", &robot.name, None, Some(robot.namespaces.join(",")))
        .await;
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
    let c = system(&state, &parts).await?;
    let changed = state.accounts.robot_delete(account(&name)?).await?;
    // Cached Basic checks of this account must not outlive the change.
    state.auth.forget_logins();
    if !changed {
        return Err(Problem(Error::NotFound));
    }
    c.audit(&state, "robot.delete", &name, None, None).await;
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
    let c = system(&state, &parts).await?;
    let changed = state.accounts.robot_set_disabled(account(&name)?, true).await?;
    // Cached Basic checks of this account must not outlive the change.
    state.auth.forget_logins();
    if !changed {
        return Err(Problem(Error::NotFound));
    }
    c.audit(&state, "robot.disable", &name, None, None).await;
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
    let c = caller(&state, &parts).await?;
    // System admins read everything; a namespace admin reads their namespace's records.
    match &q.namespace {
        Some(ns) => {
            c.may(&state, Action::Admin, Resource::Namespace(namespace(ns)?))
                .await?
        }
        None => c.may(&state, Action::Admin, Resource::System).await?,
    }
    if q.actor.as_deref().is_some_and(|a| !a.is_ascii()) {
        return Ok(Json(Vec::new())); // actors are ASCII: nobody matches
    }
    let filter = AuditFilter {
        namespace: q.namespace,
        actor: q.actor,
        since: q.since,
        until: q.until,
    };
    Ok(Json(
        state
            .accounts
            .audit(&filter, q.limit.unwrap_or(1000).min(10_000))
            .await?
            .into_iter()
            .map(AuditEntry::from)
            .collect(),
    ))
}
