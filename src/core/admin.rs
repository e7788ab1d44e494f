//! Administration: users and robot accounts, namespaces (usage, quotas, visibility, members)
//! and the audit log. One service for both ways in: the `/api/v1/admin` API (an authenticated
//! principal, whose rights [`crate::auth`] decides) and the command line (the operator, who
//! can open the database anyway and may do everything). It validates names, checks rights and
//! writes the audit record of every change; callers only translate to and from their formats.
//!
//! Rights are checked once, when a caller asks for a handle: [`Admin::namespace`] gives a
//! [`NamespaceAdmin`] to a namespace admin, [`Admin::system`] a [`SystemAdmin`] to a system
//! admin. A caller may thus refuse a request before it even reads the request's body.

use std::sync::Arc;

use crate::auth::{Action, Auth, Principal, Resource, Role};
use crate::error::{Error, Result};
use crate::oci::names::RepoName;
use crate::storage::meta::{AuditFilter, AuditRecord, RobotRecord, UserRecord};
use crate::storage::{now_ms, AccountStore, RegistryStore};

/// Largest page of the audit log, and the page when none is asked for.
pub const AUDIT_MAX: u32 = 10_000;
pub const AUDIT_DEFAULT: u32 = 1000;

/// Who asks.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An authenticated principal (possibly anonymous), from `remote`.
    Principal {
        principal: Principal,
        remote: Option<String>,
    },
    /// The operator at the command line, named in the audit log as given (`cli:USER`).
    Operator(String),
}

impl Actor {
    /// The operator running this process: `cli:$USER` (`cli` without `USER`).
    pub fn operator() -> Actor {
        Actor::Operator(
            std::env::var("USER")
                .map(|u| format!("cli:{u}"))
                .unwrap_or_else(|_| "cli".into()),
        )
    }

    /// The name the audit log records.
    pub fn name(&self) -> String {
        match self {
            Actor::Principal { principal, .. } => principal.actor(),
            Actor::Operator(name) => name.clone(),
        }
    }

    fn remote(&self) -> Option<String> {
        match self {
            Actor::Principal { remote, .. } => remote.clone(),
            Actor::Operator(_) => None,
        }
    }
}

/// A namespace as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    /// Bytes of the distinct blobs its repositories hold.
    pub usage_bytes: u64,
    /// The quota that applies: its own, else the configured default; `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// Its own quota, if one is set.
    pub own_quota_bytes: Option<u64>,
    pub public: bool,
}

/// `ns` if it names a namespace (one valid path segment).
pub fn namespace_name(ns: &str) -> Result<&str> {
    let repo = RepoName::parse(ns)?;
    if repo.as_str().contains('/') {
        return Err(Error::NameInvalid(format!(
            "{ns:?} is not a namespace (one path segment)"
        )));
    }
    Ok(ns)
}

/// The administration service (cheap to build: it holds shared handles).
#[derive(Clone)]
pub struct Admin {
    accounts: Arc<dyn AccountStore>,
    registry: Arc<dyn RegistryStore>,
    auth: Arc<Auth>,
    default_quota_bytes: u64,
}

impl Admin {
    /// `default_quota_bytes`: the quota of namespaces without one of their own (0: none).
    pub fn new(
        accounts: Arc<dyn AccountStore>,
        registry: Arc<dyn RegistryStore>,
        auth: Arc<Auth>,
        default_quota_bytes: u64,
    ) -> Self {
        Self {
            accounts,
            registry,
            auth,
            default_quota_bytes,
        }
    }

    async fn may(&self, who: &Actor, res: Resource<'_>) -> Result<()> {
        match who {
            Actor::Principal { principal, .. } => {
                self.auth
                    .authorize(&*self.accounts, principal, Action::Admin, res)
                    .await
            }
            Actor::Operator(_) => Ok(()),
        }
    }

    async fn allowed(&self, who: &Actor, res: Resource<'_>) -> Result<bool> {
        match who {
            Actor::Principal { principal, .. } => {
                self.auth.allowed(&*self.accounts, principal, Action::Admin, res).await
            }
            Actor::Operator(_) => Ok(true),
        }
    }

    /// Append to the audit log on behalf of `who` (a failure is logged, never returned).
    pub async fn record(
        &self,
        who: &Actor,
        action: &str,
        target: &str,
        ns: Option<&str>,
        outcome: &str,
        detail: Option<String>,
    ) {
        crate::auth::audit(
            &*self.accounts,
            AuditRecord {
                at: now_ms(),
                actor: who.name(),
                action: action.into(),
                target: target.into(),
                namespace: ns.map(str::to_string),
                remote: who.remote(),
                outcome: outcome.into(),
                detail,
            },
        )
        .await;
    }

    /// Administer namespace `ns` (validated first): refused unless `who` may.
    pub async fn namespace<'a>(&'a self, who: &'a Actor, ns: &'a str) -> Result<NamespaceAdmin<'a>> {
        let ns = namespace_name(ns)?;
        self.may(who, Resource::Namespace(ns)).await?;
        Ok(NamespaceAdmin { admin: self, who, ns })
    }

    /// Administer the system (accounts, the whole audit log): refused unless `who` may.
    pub async fn system<'a>(&'a self, who: &'a Actor) -> Result<SystemAdmin<'a>> {
        self.may(who, Resource::System).await?;
        Ok(SystemAdmin { admin: self, who })
    }

    /// The namespaces `who` administers, in name order: those with repositories or a quota,
    /// and, for the operator, also those only made public. An anonymous caller of a server
    /// that authenticates, who administers none, is asked to authenticate.
    pub async fn namespaces(&self, who: &Actor) -> Result<Vec<NamespaceInfo>> {
        let mut names = self.registry.namespaces().await?;
        if matches!(who, Actor::Operator(_)) {
            for ns in self.accounts.public_namespaces().await? {
                if !names.contains(&ns) {
                    names.push(ns);
                }
            }
            names.sort();
        }
        let mut out = Vec::new();
        for ns in names {
            if self.allowed(who, Resource::Namespace(&ns)).await? {
                out.push(self.info(&ns).await?);
            }
        }
        if out.is_empty()
            && matches!(
                who,
                Actor::Principal {
                    principal: Principal::Anonymous,
                    ..
                }
            )
            && self.auth.enabled()
        {
            return Err(Error::Unauthorized("authentication required".into()));
        }
        Ok(out)
    }

    async fn info(&self, ns: &str) -> Result<NamespaceInfo> {
        let own = self.registry.namespace_quota(ns).await?;
        Ok(NamespaceInfo {
            name: ns.to_string(),
            usage_bytes: self.registry.namespace_usage(ns).await?,
            quota_bytes: own.or(Some(self.default_quota_bytes).filter(|q| *q > 0)),
            own_quota_bytes: own,
            public: self.accounts.namespace_public(ns).await?,
        })
    }

    /// Audit records matching `filter`, oldest first, at most `limit` (default 1000, at most
    /// 10 000). A system admin reads everything; a namespace admin the records of a namespace
    /// the filter names.
    pub async fn audit(&self, who: &Actor, filter: AuditFilter, limit: Option<u32>) -> Result<Vec<AuditRecord>> {
        match &filter.namespace {
            Some(ns) => self.may(who, Resource::Namespace(namespace_name(ns)?)).await?,
            None => self.may(who, Resource::System).await?,
        }
        if filter.actor.as_deref().is_some_and(|a| !a.is_ascii()) {
            return Ok(Vec::new()); // actors are ASCII: nobody matches
        }
        let limit = limit.unwrap_or(AUDIT_DEFAULT).min(AUDIT_MAX);
        Ok(self.accounts.audit(&filter, limit).await?)
    }
}

/// What an admin of one namespace may do there.
pub struct NamespaceAdmin<'a> {
    admin: &'a Admin,
    who: &'a Actor,
    ns: &'a str,
}

impl NamespaceAdmin<'_> {
    pub fn name(&self) -> &str {
        self.ns
    }

    pub async fn info(&self) -> Result<NamespaceInfo> {
        self.admin.info(self.ns).await
    }

    async fn audit(&self, action: &str, target: &str, detail: Option<String>) {
        self.admin
            .record(self.who, action, target, Some(self.ns), "ok", detail)
            .await;
    }

    /// Set the namespace's own quota (`None`: remove it, the default applies).
    pub async fn set_quota(&self, bytes: Option<u64>) -> Result<NamespaceInfo> {
        self.admin.registry.set_namespace_quota(self.ns, bytes).await?;
        self.audit("quota.set", self.ns, Some(format!("bytes {bytes:?}"))).await;
        self.info().await
    }

    /// Remove the namespace's own quota.
    pub async fn clear_quota(&self) -> Result<()> {
        self.admin.registry.set_namespace_quota(self.ns, None).await?;
        self.audit("quota.clear", self.ns, None).await;
        Ok(())
    }

    /// Allow (`true`) or stop anonymous pulls.
    pub async fn set_public(&self, public: bool) -> Result<()> {
        self.admin.accounts.set_namespace_public(self.ns, public).await?;
        self.audit("namespace.visibility", self.ns, Some(format!("public {public}")))
            .await;
        Ok(())
    }

    pub async fn public(&self) -> Result<bool> {
        Ok(self.admin.accounts.namespace_public(self.ns).await?)
    }

    /// Members with their roles.
    pub async fn members(&self) -> Result<Vec<(String, String)>> {
        Ok(self.admin.accounts.members(self.ns).await?)
    }

    /// Give user `principal` role `role` (reader, writer, maintainer, admin).
    pub async fn set_member(&self, principal: &str, role: &str) -> Result<Role> {
        let role = Role::parse(role)
            .ok_or_else(|| Error::BadRequest(format!("invalid role {role:?} (reader, writer, maintainer, admin)")))?;
        if !crate::auth::is_account_name(principal) || self.admin.accounts.user_get(principal).await?.is_none() {
            return Err(Error::BadRequest(format!("no user {principal:?}")));
        }
        self.admin
            .accounts
            .set_member(self.ns, principal, Some(role.as_str()))
            .await?;
        self.audit("member.set", principal, Some(format!("role {}", role.as_str())))
            .await;
        Ok(role)
    }

    /// Take `principal`'s role away; false when it had none.
    pub async fn remove_member(&self, principal: &str) -> Result<bool> {
        if !crate::auth::is_account_name(principal) || !self.admin.accounts.set_member(self.ns, principal, None).await?
        {
            return Ok(false);
        }
        self.audit("member.remove", principal, None).await;
        Ok(true)
    }
}

/// What a system admin may do: manage accounts.
pub struct SystemAdmin<'a> {
    admin: &'a Admin,
    who: &'a Actor,
}

impl SystemAdmin<'_> {
    async fn audit(&self, action: &str, target: &str, detail: Option<String>) {
        self.admin.record(self.who, action, target, None, "ok", detail).await;
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        Ok(self.admin.accounts.users().await?)
    }

    /// Create a user (passwords of at least 8 characters).
    pub async fn add_user(&self, name: &str, password: &str, admin: bool) -> Result<UserRecord> {
        let user = crate::auth::create_user(&*self.admin.accounts, name, password, admin).await?;
        self.audit("user.add", &user.name, Some(format!("admin {}", user.admin)))
            .await;
        Ok(user)
    }

    /// Delete a user and their memberships; false when there is no such user.
    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        let changed = crate::auth::is_account_name(name) && self.admin.accounts.user_delete(name).await?;
        self.changed(changed, "user.delete", name).await
    }

    /// Disable a user; false when there is no such user.
    pub async fn disable_user(&self, name: &str) -> Result<bool> {
        let changed = crate::auth::is_account_name(name) && self.admin.accounts.user_set_disabled(name, true).await?;
        self.changed(changed, "user.disable", name).await
    }

    pub async fn robots(&self) -> Result<Vec<RobotRecord>> {
        Ok(self.admin.accounts.robots().await?)
    }

    /// Create a robot account limited to `namespaces` and `actions` (pull, push, delete),
    /// valid for `expires_days` days (`None`: until disabled); returns it with its secret,
    /// which is not stored and cannot be shown again.
    pub async fn add_robot(
        &self,
        name: &str,
        namespaces: &[String],
        actions: &[String],
        expires_days: Option<u64>,
    ) -> Result<(RobotRecord, String)> {
        let (robot, secret) =
            crate::auth::create_robot(&*self.admin.accounts, name, namespaces, actions, expires_days).await?;
        self.audit("robot.add", &robot.name, Some(robot.namespaces.join(",")))
            .await;
        Ok((robot, secret))
    }

    /// Delete a robot account; false when there is no such robot.
    pub async fn delete_robot(&self, name: &str) -> Result<bool> {
        let changed = crate::auth::is_account_name(name) && self.admin.accounts.robot_delete(name).await?;
        self.changed(changed, "robot.delete", name).await
    }

    /// Disable a robot account; false when there is no such robot.
    pub async fn disable_robot(&self, name: &str) -> Result<bool> {
        let changed = crate::auth::is_account_name(name) && self.admin.accounts.robot_set_disabled(name, true).await?;
        self.changed(changed, "robot.disable", name).await
    }

    /// After a change to an account: cached logins must not outlive it; audit it if it was made.
    async fn changed(&self, changed: bool, action: &str, name: &str) -> Result<bool> {
        self.admin.auth.forget_logins();
        if changed {
            self.audit(action, name, None).await;
        }
        Ok(changed)
    }
}
