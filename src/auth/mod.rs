//! Access control: who the caller is (passwords, robot secrets, bearer tokens) and what they
//! may do. [`Auth::allowed`] is the one policy; every surface asks it (directly, or through
//! the `access` claim of a token it issued) and nothing else decides.
//!
//! Identities come from the metadata store (users with argon2 password hashes, robot accounts
//! with sha256-hashed random secrets). Another identity source (LDAP, OIDC) would plug in at
//! [`Auth::login`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::oci::names::RepoName;
use crate::storage::meta::{AuditRecord, RobotRecord, UserRecord};
use crate::storage::{now_ms, AccountStore, StoreError};

/// The `service` of tokens, challenges and the token endpoint; also the tokens' audience.
pub const SERVICE: &str = "image-manager";
/// The service (and `aud`) of tokens for the catalog and admin API under `/api/v1`: a registry
/// token is not an API token, and back.
pub const API_SERVICE: &str = "image-manager-api";
/// The `iss` of tokens this server issues.
pub const ISSUER: &str = "image-manager";
/// Login names of robot accounts start with this.
pub const ROBOT_PREFIX: &str = "robot$";
/// The metadata-store setting holding the token signing key (PKCS#8, base64).
const KEY_SETTING: &str = "token_signing_key_es256";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: everything is allowed (loopback only).
    None,
    /// Docker token authentication and HTTP Basic.
    Token,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(AuthMode::None),
            "token" => Some(AuthMode::Token),
            _ => None,
        }
    }
}

use im_formats::scope::scope_items;
pub use im_formats::scope::{Action, ScopeItem};

/// Parses one `type:name:actions` item ([`im_formats::scope::parse_scope_item`]); a refusal is a
/// [`Error::BadRequest`], or the [`Error::NameInvalid`] of the repository name.
pub fn parse_scope_item(item: &str) -> Result<ScopeItem> {
    Ok(im_formats::scope::parse_scope_item(item)?)
}

/// Parses a whole scope string ([`im_formats::scope::parse_scope`]): every item, or the first one
/// refused.
pub fn parse_scope(scope: &str) -> Result<Vec<ScopeItem>> {
    Ok(im_formats::scope::parse_scope(scope)?)
}

/// A role in a namespace; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Maintainer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "maintainer" => Some(Role::Maintainer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }
    pub fn allows(self, action: Action) -> bool {
        let needed = match action {
            Action::Pull => Role::Reader,
            Action::Push => Role::Writer,
            Action::Delete => Role::Maintainer,
            Action::Admin => Role::Admin,
        };
        self >= needed
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User {
        name: String,
        admin: bool,
    },
    Robot {
        name: String,
        namespaces: Vec<String>,
        actions: Vec<Action>,
        expires_at: Option<i64>,
    },
}

impl Principal {
    /// The name recorded in the audit log and in tokens' `sub`.
    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::User { name, .. } => name.clone(),
            Principal::Robot { name, .. } => format!("{ROBOT_PREFIX}{name}"),
        }
    }
    fn from_user(u: &UserRecord) -> Self {
        Principal::User {
            name: u.name.clone(),
            admin: u.admin,
        }
    }
    fn from_robot(r: &RobotRecord) -> Self {
        Principal::Robot {
            name: r.name.clone(),
            namespaces: r.namespaces.clone(),
            actions: r.actions.iter().filter_map(|a| Action::parse(a)).collect(),
            expires_at: r.expires_at,
        }
    }
}

/// What an action applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A namespace (the first segment of repository names) and everything in it.
    Namespace(&'a str),
    /// The whole system: users, robots, the audit log, every namespace.
    System,
}

/// The caller of one request: a principal, and when it came with a bearer token, the token's
/// grants, which bound what the request may do.
#[derive(Debug, Clone)]
pub struct Identity {
    pub principal: Principal,
    pub token: Option<Arc<Vec<Access>>>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            principal: Principal::Anonymous,
            token: None,
        }
    }
}

/// One grant of a token (the `access` claim, as Docker's token servers write it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Access>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The claims of a refresh token: who, until when. Its audience differs from that of access tokens,
/// so neither kind passes for the other.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefreshClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
}

/// The audience of refresh tokens.
const REFRESH_AUDIENCE: &str = "image-manager#refresh";

/// Authentication state of a server: mode, signing key, the failed-login counters, and the
/// tokens whose signature was checked already.
pub struct Auth {
    pub mode: AuthMode,
    pub token_ttl_secs: u64,
    /// 0: no refresh tokens are issued.
    pub refresh_token_ttl_secs: u64,
    /// The token endpoint's URL in challenges; `None`: derived from the request's Host.
    pub realm: Option<String>,
    /// The server speaks TLS (challenges name an https realm).
    pub tls: bool,
    keys: Option<Keys>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    verified: RwLock<HashMap<String, Verified>>,
    /// One login check at a time per name and address, so that parallel guesses each wait
    /// for the failures before them (entries live while a check holds them).
    attempts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Successful password checks of users, by a keyed hash of the credentials, with the
    /// stored password hash they matched, for [`BASIC_CACHE_TTL`]: a client sending Basic on
    /// every request costs one argon2 per TTL plus one account read per request (which sees a
    /// disabled account or a changed password at once).
    logins: RwLock<HashMap<[u8; 32], (String, Instant)>>,
    /// Random per process: cached credential hashes are useless elsewhere.
    login_key: [u8; 32],
}

/// How long a successful password check is reused.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(30);
/// Cached Basic checks kept at most; when full, expired ones are dropped, then all.
const BASIC_CACHE_CAPACITY: usize = 10_000;

/// A token whose signature, issuer and audience were checked: its expiry is still checked on
/// every use. A token that differs in any byte is a different key and is checked in full.
struct Verified {
    exp: u64,
    aud: &'static str,
    sub: String,
    access: Arc<Vec<Access>>,
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    k[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    k
}

/// Tokens kept in [`Auth::verified`]: when full, expired ones are dropped, then all.
const VERIFIED_CAPACITY: usize = 10_000;

/// Failed logins of one name from one address are forgotten after this long.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

impl Auth {
    /// No authentication: every request is allowed.
    pub fn none() -> Self {
        Auth {
            mode: AuthMode::None,
            token_ttl_secs: 300,
            refresh_token_ttl_secs: 0,
            realm: None,
            tls: false,
            keys: None,
            failures: Mutex::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            logins: RwLock::new(HashMap::new()),
            login_key: random_key(),
        }
    }

    /// Token mode, with the signing key from the metadata store (generated and stored by the
    /// first server to start, so replicas share it).
    pub async fn token(
        meta: &dyn AccountStore,
        token_ttl_secs: u64,
        refresh_token_ttl_secs: u64,
    ) -> Result<Self, StoreError> {
        let key = match meta.setting(KEY_SETTING).await? {
            Some(k) => k,
            None => {
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| StoreError::Other("generating the token signing key failed".into()))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
                meta.setting_init(KEY_SETTING, &b64).await?
            }
        };
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| StoreError::Other(format!("stored token signing key: {e}")))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &SystemRandom::new())
            .map_err(|e| StoreError::Other(format!("stored token signing key: {e}")))?;
        Ok(Auth {
            mode: AuthMode::Token,
            token_ttl_secs: token_ttl_secs.max(1),
            refresh_token_ttl_secs,
            realm: None,
            tls: false,
            keys: Some(Keys {
                encoding: EncodingKey::from_ec_der(&pkcs8),
                decoding: DecodingKey::from_ec_der(pair.public_key().as_ref()),
            }),
            failures: Mutex::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            logins: RwLock::new(HashMap::new()),
            login_key: random_key(),
        })
    }

    /// Where challenges send clients for tokens: an explicit realm URL, and whether the
    /// server speaks TLS (for realms derived from the request's Host).
    pub fn with_realm(mut self, realm: Option<String>, tls: bool) -> Self {
        self.realm = realm.filter(|r| !r.is_empty());
        self.tls = tls;
        self
    }

    pub fn enabled(&self) -> bool {
        self.mode == AuthMode::Token
    }

    // ----- the policy -------------------------------------------------------------------

    /// Whether `p` may do `action` on `res`. The one access rule of the service.
    pub async fn allowed(
        &self,
        meta: &dyn AccountStore,
        p: &Principal,
        action: Action,
        res: Resource<'_>,
    ) -> Result<bool> {
        if !self.enabled() {
            return Ok(true);
        }
        let ns = match (p, res) {
            (Principal::User { admin: true, .. }, _) => return Ok(true),
            (_, Resource::System) => return Ok(false),
            (_, Resource::Namespace(ns)) => ns,
        };
        Ok(match p {
            Principal::Robot {
                namespaces,
                actions,
                expires_at,
                ..
            } => {
                expires_at.is_none_or(|e| e > now_ms())
                    && action != Action::Admin
                    && actions.contains(&action)
                    && namespaces.iter().any(|n| n == ns)
            }
            Principal::Anonymous => action == Action::Pull && meta.namespace_public(ns).await?,
            Principal::User { name, .. } => {
                let role = meta.member_role(ns, name).await?.and_then(|r| Role::parse(&r));
                role.is_some_and(|r| r.allows(action)) || (action == Action::Pull && meta.namespace_public(ns).await?)
            }
        })
    }

    /// [`Self::allowed`] as an error: 401 for the anonymous (they may log in), 403 for others.
    pub async fn authorize(
        &self,
        meta: &dyn AccountStore,
        p: &Principal,
        action: Action,
        res: Resource<'_>,
    ) -> Result<()> {
        if self.allowed(meta, p, action, res).await? {
            return Ok(());
        }
        let what = match res {
            Resource::Namespace(ns) => format!("{} on namespace {ns:?}", action.as_str()),
            Resource::System => "system administration".to_string(),
        };
        match p {
            Principal::Anonymous => Err(Error::Unauthorized(format!("authentication required for {what}"))),
            other => Err(Error::Denied(format!("{} may not {what}", other.actor()))),
        }
    }

    /// A request on repository `repo` (`None`: the registry itself, e.g. `/v2/`) by `id`.
    /// A bearer token allows only what it grants; other callers are asked of the policy.
    pub async fn authorize_repo(
        &self,
        meta: &dyn AccountStore,
        id: &Identity,
        repo: Option<&RepoName>,
        action: Action,
    ) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(repo) = repo else {
            return match id.principal {
                Principal::Anonymous => Err(Error::Unauthorized("authentication required".into())),
                _ => Ok(()),
            };
        };
        match &id.token {
            Some(access) => {
                let granted = access.iter().any(|a| {
                    a.kind == "repository" && a.name == repo.as_str() && a.actions.iter().any(|x| x == action.as_str())
                });
                if granted {
                    Ok(())
                } else if matches!(id.principal, Principal::Anonymous) {
                    // An anonymous token: logging in may help, so challenge (as for no token).
                    Err(Error::Unauthorized(format!(
                        "authentication required for {} on {repo}",
                        action.as_str()
                    )))
                } else if self
                    .allowed(meta, &id.principal, action, Resource::Namespace(repo.namespace()))
                    .await?
                {
                    // The account holds the right: the client asks the token service again,
                    // for the scope the challenge names.
                    Err(Error::InsufficientScope(format!(
                        "the token does not grant {} on {repo}; get one for the scope in the challenge",
                        action.as_str()
                    )))
                } else {
                    Err(Error::Denied(format!(
                        "{} may not {} on {repo}",
                        id.principal.actor(),
                        action.as_str()
                    )))
                }
            }
            None => {
                self.authorize(meta, &id.principal, action, Resource::Namespace(repo.namespace()))
                    .await
            }
        }
    }

    /// The namespaces `p` may pull from; `None`: all of them.
    pub async fn readable(&self, meta: &dyn AccountStore, p: &Principal) -> Result<Option<HashSet<String>>> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut out: HashSet<String> = meta.public_namespaces().await?.into_iter().collect();
        match p {
            Principal::User { admin: true, .. } => return Ok(None),
            Principal::User { name, .. } => {
                out.extend(meta.memberships_of(name).await?.into_iter().map(|(ns, _)| ns));
            }
            Principal::Robot { namespaces, .. } => {
                for ns in namespaces {
                    if self.allowed(meta, p, Action::Pull, Resource::Namespace(ns)).await? {
                        out.insert(ns.clone());
                    }
                }
            }
            Principal::Anonymous => {}
        }
        Ok(Some(out))
    }

    // ----- authentication ---------------------------------------------------------------

    /// Check a name and password (or robot secret). Failures are slowed down per name and
    /// address, counted, and audited.
    pub async fn login(
        &self,
        meta: &dyn AccountStore,
        name: &str,
        secret: &str,
        remote: Option<&str>,
    ) -> Result<Principal> {
        let cache_key = self.credential_hash(name, secret);
        if let Some(matched) = self.cached_login(&cache_key) {
            if let Some(u) = meta.user_get(name).await? {
                if !u.disabled && u.password_hash == matched {
                    return Ok(Principal::from_user(&u));
                }
            }
        }
        let key = format!("{name}|{}", remote.unwrap_or(""));
        let gate = self.attempt_gate(&key);
        let result = {
            let _turn = gate.lock().await;
            self.login_checked(meta, name, secret, remote, &key).await
        };
        drop(gate);
        self.forget_gate(&key);
        let (p, matched) = result?;
        if let (Some(matched), Ok(mut cache)) = (matched, self.logins.write()) {
            if cache.len() >= BASIC_CACHE_CAPACITY {
                cache.retain(|_, (_, at)| at.elapsed() < BASIC_CACHE_TTL);
                if cache.len() >= BASIC_CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(cache_key, (matched, Instant::now()));
        }
        Ok(p)
    }

    /// Forget cached logins (an account changed: disabled, deleted, new password).
    pub fn forget_logins(&self) {
        if let Ok(mut cache) = self.logins.write() {
            cache.clear();
        }
    }

    fn credential_hash(&self, name: &str, secret: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.login_key);
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(secret.as_bytes());
        h.finalize().into()
    }

    /// The stored password hash a recent successful check of these credentials matched.
    fn cached_login(&self, key: &[u8; 32]) -> Option<String> {
        let cache = self.logins.read().ok()?;
        let (matched, at) = cache.get(key)?;
        (at.elapsed() < BASIC_CACHE_TTL).then(|| matched.clone())
    }

    fn attempt_gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.attempts.lock() {
            Ok(mut m) => m.entry(key.to_string()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Drop the gate of `key` once no check holds or waits for it.
    fn forget_gate(&self, key: &str) {
        if let Ok(mut m) = self.attempts.lock() {
            if m.get(key).is_some_and(|g| Arc::strong_count(g) == 1) {
                m.remove(key);
            }
        }
    }

    /// One login check, after the delay the earlier failures of `key` earned.
    async fn login_checked(
        &self,
        meta: &dyn AccountStore,
        name: &str,
        secret: &str,
        remote: Option<&str>,
        key: &str,
    ) -> Result<(Principal, Option<String>)> {
        let delay = self.failure_delay(key);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let found = self.check_secret(meta, name, secret).await?;
        match found {
            Some(p) => {
                if let Ok(mut f) = self.failures.lock() {
                    f.remove(key);
                }
                Ok(p)
            }
            None => {
                let count = self.record_failure(key);
                audit(
                    meta,
                    AuditRecord {
                        at: now_ms(),
                        actor: name.chars().take(255).collect(),
                        action: "login".into(),
                        target: SERVICE.into(),
                        namespace: None,
                        remote: remote.map(str::to_string),
                        outcome: "failed".into(),
                        detail: Some(format!("invalid credentials (failure {count})")),
                    },
                )
                .await;
                Err(Error::Unauthorized("invalid username or password".into()))
            }
        }
    }

    /// The account `name` and `secret` log in as, with the stored password hash the secret
    /// matched (users; robots' secrets are cheap to check and not cached).
    async fn check_secret(
        &self,
        meta: &dyn AccountStore,
        name: &str,
        secret: &str,
    ) -> Result<Option<(Principal, Option<String>)>> {
        if !is_account_name(name.strip_prefix(ROBOT_PREFIX).unwrap_or(name)) {
            return Ok(None);
        }
        if let Some(robot) = name.strip_prefix(ROBOT_PREFIX) {
            let Some(r) = meta.robot_get(robot).await? else {
                return Ok(None);
            };
            let ok = !r.disabled
                && r.expires_at.is_none_or(|e| e > now_ms())
                && same(r.secret_hash.as_bytes(), secret_hash(secret).as_bytes());
            return Ok(ok.then(|| (Principal::from_robot(&r), None)));
        }
        let Some(u) = meta.user_get(name).await? else {
            return Ok(None);
        };
        if u.disabled {
            return Ok(None);
        }
        let hash = u.password_hash.clone();
        let pw = secret.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        Ok(ok.then(|| (Principal::from_user(&u), Some(u.password_hash.clone()))))
    }

    fn failure_delay(&self, key: &str) -> Duration {
        let Ok(f) = self.failures.lock() else {
            return Duration::ZERO;
        };
        match f.get(key) {
            Some((n, at)) if at.elapsed() < FAILURE_MEMORY && *n > 0 => {
                // 200 ms after the first failure, doubling, at most 5 s.
                Duration::from_millis((200u64 << (n - 1).min(5)).min(5000))
            }
            _ => Duration::ZERO,
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let Ok(mut f) = self.failures.lock() else {
            return 0;
        };
        if f.len() > 100_000 {
            f.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
        }
        let e = f.entry(key.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_MEMORY {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
        e.0
    }

    /// Who made a request: from `Authorization: Basic` (a login) or `Bearer` (a token this
    /// server issued); anonymous without either. Bad credentials are an error, not anonymous.
    pub async fn identify(
        &self,
        meta: &dyn AccountStore,
        headers: &HeaderMap,
        remote: Option<&str>,
    ) -> Result<Identity> {
        if !self.enabled() {
            return Ok(Identity::anonymous());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::anonymous());
        };
        let value = value
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed Authorization header".into()))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (name, secret) = basic_credentials(rest)?;
            let principal = self.login(meta, &name, &secret, remote).await?;
            return Ok(Identity { principal, token: None });
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let (sub, access) = self.verify_cached(rest, SERVICE)?;
            return Ok(Identity {
                principal: principal_of_sub(&sub),
                token: Some(access),
            });
        }
        Err(Error::Unauthorized(format!(
            "unsupported authorization scheme {scheme:?}"
        )))
    }

    // ----- tokens -----------------------------------------------------------------------

    /// The grants of `scope` (Docker's `type:name:actions` items) that `p` is allowed.
    /// Items this server does not understand are refused, not ignored.
    pub async fn grant(&self, meta: &dyn AccountStore, p: &Principal, scopes: &[String]) -> Result<Vec<Access>> {
        let mut out: Vec<Access> = Vec::new();
        // Item by item, so that an invalid item is reported only after the ones before it.
        for item in scopes.iter().flat_map(|s| scope_items(s)) {
            match parse_scope_item(item)? {
                ScopeItem::Repository { repo, actions } => {
                    let mut granted = Vec::new();
                    for w in actions {
                        if w != Action::Admin
                            && self.allowed(meta, p, w, Resource::Namespace(repo.namespace())).await?
                            && !granted.contains(&w.as_str().to_string())
                        {
                            granted.push(w.as_str().to_string());
                        }
                    }
                    out.push(Access {
                        kind: "repository".into(),
                        name: repo.as_str().to_string(),
                        actions: granted,
                    });
                }
                ScopeItem::Catalog => out.push(Access {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: if matches!(p, Principal::Anonymous) {
                        Vec::new()
                    } else {
                        vec!["*".into()]
                    },
                }),
            }
        }
        Ok(out)
    }

    /// A signed registry token for `p` carrying `access`.
    pub fn issue(&self, p: &Principal, access: Vec<Access>) -> Result<String> {
        self.issue_with(p, access, SERVICE)
    }

    fn issue_with(&self, p: &Principal, access: Vec<Access>, aud: &str) -> Result<String> {
        let keys = self.keys.as_ref().ok_or(Error::NotFound)?;
        let now = (now_ms() / 1000).max(0) as u64;
        let claims = Claims {
            iss: ISSUER.into(),
            sub: p.actor(),
            aud: aud.into(),
            exp: now + self.token_ttl_secs,
            nbf: now,
            iat: now,
            jti: random_id()?,
            access,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &keys.encoding)
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))
    }

    /// [`Self::verify`], remembering tokens that passed so that a client sending the same token
    /// on every request pays for the signature check once. Expiry is checked on every call.
    fn verify_cached(&self, token: &str, aud: &'static str) -> Result<(String, Arc<Vec<Access>>)> {
        let now = (now_ms() / 1000).max(0) as u64;
        if let Ok(cache) = self.verified.read() {
            if let Some(v) = cache.get(token) {
                if v.aud != aud {
                    return Err(Error::Unauthorized("invalid token: InvalidAudience".into()));
                }
                if now < v.exp {
                    return Ok((v.sub.clone(), v.access.clone()));
                }
                return Err(Error::Unauthorized("invalid token: ExpiredSignature".into()));
            }
        }
        let claims = self.verify_for(token, aud)?;
        let access = Arc::new(claims.access);
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= VERIFIED_CAPACITY {
                cache.retain(|_, v| now < v.exp);
                if cache.len() >= VERIFIED_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(
                token.to_string(),
                Verified {
                    exp: claims.exp,
                    aud,
                    sub: claims.sub.clone(),
                    access: access.clone(),
                },
            );
        }
        Ok((claims.sub, access))
    }

    /// A token for the API under `/api/v1` (audience [`API_SERVICE`]): it names the account
    /// only; each request is decided by what the account may do then.
    pub fn issue_api(&self, p: &Principal) -> Result<String> {
        self.issue_with(p, Vec::new(), API_SERVICE)
    }

    /// Who calls the API under `/api/v1`: HTTP Basic (a login, cached briefly) or a bearer
    /// token of the API's own audience (a registry token is refused), as the account is now.
    pub async fn identify_api(
        &self,
        meta: &dyn AccountStore,
        headers: &HeaderMap,
        remote: Option<&str>,
    ) -> Result<Principal> {
        if !self.enabled() {
            return Ok(Principal::Anonymous);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, rest)| rest.trim().to_string());
        match bearer {
            None => Ok(self.identify(meta, headers, remote).await?.principal),
            Some(token) => {
                let (sub, _) = self
                    .verify_cached(&token, API_SERVICE)
                    .map_err(|_| Error::Unauthorized("invalid API token (get one from /token?service=image-manager-api; registry tokens are not API tokens)".into()))?;
                match principal_by_actor(meta, &sub).await? {
                    Principal::Anonymous if sub != "anonymous" => {
                        Err(Error::Unauthorized("the token's account is disabled or gone".into()))
                    }
                    p => Ok(p),
                }
            }
        }
    }

    /// A refresh token for `p` (`None` when refresh tokens are turned off).
    pub fn issue_refresh(&self, p: &Principal) -> Result<Option<String>> {
        let keys = self.keys.as_ref().ok_or(Error::NotFound)?;
        if self.refresh_token_ttl_secs == 0 || matches!(p, Principal::Anonymous) {
            return Ok(None);
        }
        let now = (now_ms() / 1000).max(0) as u64;
        let claims = RefreshClaims {
            iss: ISSUER.into(),
            sub: p.actor(),
            aud: REFRESH_AUDIENCE.into(),
            exp: now + self.refresh_token_ttl_secs,
            iat: now,
            jti: random_id()?,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &keys.encoding)
            .map(Some)
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))
    }

    /// The account a refresh token stands for, as it is now: a disabled, deleted or expired
    /// account gets nothing more, whatever its refresh token says.
    pub async fn refresh(&self, meta: &dyn AccountStore, token: &str) -> Result<Principal> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| Error::Unauthorized("tokens are not enabled".into()))?;
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 0;
        v.set_audience(&[REFRESH_AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<RefreshClaims>(token, &keys.decoding, &v)
            .map_err(|e| Error::Unauthorized(format!("invalid refresh token: {e}")))?
            .claims;
        let principal = principal_by_actor(meta, &claims.sub).await?;
        let live = match &principal {
            Principal::Anonymous => false,
            Principal::Robot { expires_at, .. } => expires_at.is_none_or(|e| e > now_ms()),
            Principal::User { .. } => true,
        };
        if !live {
            return Err(Error::Unauthorized(format!(
                "the account {:?} of this refresh token is disabled, deleted or expired",
                claims.sub
            )));
        }
        Ok(principal)
    }

    /// Check a token's signature (ES256 only), expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        self.verify_for(token, SERVICE)
    }

    fn verify_for(&self, token: &str, aud: &str) -> Result<Claims> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| Error::Unauthorized("tokens are not enabled".into()))?;
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 0;
        v.set_audience(&[aud]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &keys.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| Error::Unauthorized(format!("invalid token: {e}")))
    }
}

/// 128 random bits in hex (token ids).
fn random_id() -> Result<String> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| Error::Internal("random number generator failed".into()))?;
    Ok(hex::encode(id))
}

/// The principal a token's `sub` names. Tokens carry their grants, so only the name matters.
fn principal_of_sub(sub: &str) -> Principal {
    match sub.strip_prefix(ROBOT_PREFIX) {
        Some(name) => Principal::Robot {
            name: name.to_string(),
            namespaces: Vec::new(),
            actions: Vec::new(),
            expires_at: None,
        },
        None if sub == "anonymous" => Principal::Anonymous,
        None => Principal::User {
            name: sub.to_string(),
            admin: false,
        },
    }
}

/// Load the principal `actor` names from the store, as it is now (for listings by token).
pub async fn principal_by_actor(meta: &dyn AccountStore, actor: &str) -> Result<Principal> {
    if let Some(name) = actor.strip_prefix(ROBOT_PREFIX) {
        if let Some(r) = meta.robot_get(name).await?.filter(|r| !r.disabled) {
            return Ok(Principal::from_robot(&r));
        }
    } else if let Some(u) = meta.user_get(actor).await?.filter(|u| !u.disabled) {
        return Ok(Principal::from_user(&u));
    }
    Ok(Principal::Anonymous)
}

/// Decode the base64 `user:password` of HTTP Basic.
pub fn basic_credentials(b64: &str) -> Result<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Error::Unauthorized("malformed basic credentials".into()))?;
    let text = String::from_utf8(raw).map_err(|_| Error::Unauthorized("malformed basic credentials".into()))?;
    let (name, secret) = text
        .split_once(':')
        .ok_or_else(|| Error::Unauthorized("malformed basic credentials".into()))?;
    Ok((name.to_string(), secret.to_string()))
}

/// `s` with anything but printable ASCII replaced by `?` (actors and namespaces are ASCII
/// columns; a login attempt may carry any name).
fn printable_ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// Append to the audit log; a failure to do so is logged, never fails the request.
pub async fn audit(meta: &dyn AccountStore, mut rec: AuditRecord) {
    rec.actor = printable_ascii(&rec.actor);
    rec.namespace = rec.namespace.as_deref().map(printable_ascii);
    if let Err(e) = meta.audit_add(&rec).await {
        tracing::warn!(error = %e, action = %rec.action, "writing the audit log failed");
    }
}

// ----- identities ---------------------------------------------------------------------------

/// Whether `name` could name a user or robot: 1-64 of a-z, 0-9, `.`, `_`, `-`, starting with a
/// letter or digit. Anything else names nobody (and is never sent to the database).
pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn check_account_name(name: &str) -> Result<()> {
    if is_account_name(name) {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "invalid account name {name:?}: 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// Hash a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::Internal("random number generator failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
}

/// Byte equality in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Create a user. Passwords must be at least 8 characters.
pub async fn create_user(meta: &dyn AccountStore, name: &str, password: &str, admin: bool) -> Result<UserRecord> {
    check_account_name(name)?;
    if password.chars().count() < 8 {
        return Err(Error::BadRequest("passwords must be at least 8 characters".into()));
    }
    let user = UserRecord {
        name: name.to_string(),
        password_hash: hash_password(password)?,
        admin,
        disabled: false,
        created_at: now_ms(),
    };
    if !meta.user_add(&user).await? {
        return Err(Error::Conflict(format!("user {name:?} exists")));
    }
    Ok(user)
}

/// Create a robot account limited to `namespaces` and `actions` (pull, push, delete), valid
/// for `expires_days` days (`None`: until disabled). Returns it with its secret, which is not
/// stored and cannot be shown again.
pub async fn create_robot(
    meta: &dyn AccountStore,
    name: &str,
    namespaces: &[String],
    actions: &[String],
    expires_days: Option<u64>,
) -> Result<(RobotRecord, String)> {
    check_account_name(name)?;
    if namespaces.is_empty() || actions.is_empty() {
        return Err(Error::BadRequest(
            "a robot needs at least one namespace and one action".into(),
        ));
    }
    for ns in namespaces {
        if RepoName::parse(ns)?.as_str().contains('/') {
            return Err(Error::NameInvalid(format!("{ns:?} is not a namespace")));
        }
    }
    for a in actions {
        if !matches!(Action::parse(a), Some(Action::Pull | Action::Push | Action::Delete)) {
            return Err(Error::BadRequest(format!(
                "invalid robot action {a:?} (pull, push, delete)"
            )));
        }
    }
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| Error::Internal("random number generator failed".into()))?;
    let secret = hex::encode(raw);
    let now = now_ms();
    let robot = RobotRecord {
        name: name.to_string(),
        secret_hash: secret_hash(&secret),
        namespaces: namespaces.to_vec(),
        actions: actions.to_vec(),
        expires_at: expires_days.map(|d| now.saturating_add((d as i64).saturating_mul(86_400_000))),
        disabled: false,
        created_at: now,
    };
    if !meta.robot_add(&robot).await? {
        return Err(Error::Conflict(format!("robot {name:?} exists")));
    }
    Ok((robot, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_lower_ones() {
        assert!(Role::Reader.allows(Action::Pull));
        assert!(!Role::Reader.allows(Action::Push));
        assert!(Role::Writer.allows(Action::Push) && !Role::Writer.allows(Action::Delete));
        assert!(Role::Maintainer.allows(Action::Delete) && !Role::Maintainer.allows(Action::Admin));
        assert!(Role::Admin.allows(Action::Admin));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        let parsed = PasswordHash::new(&h).expect("parse");
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let b = base64::engine::general_purpose::STANDARD.encode("robot$ci:a:b");
        assert_eq!(basic_credentials(&b).ok(), Some(("robot$ci".into(), "a:b".into())));
        assert!(basic_credentials("!!").is_err());
    }

    #[test]
    fn scope_refusals_are_registry_errors() {
        assert!(
            matches!(parse_scope("repository:a"), Err(Error::BadRequest(m)) if m == "invalid scope \"repository:a\"")
        );
        assert!(
            matches!(parse_scope_item("user:a:pull"), Err(Error::BadRequest(m)) if m.starts_with("unsupported scope"))
        );
        assert!(matches!(parse_scope("repository:A:pull"), Err(Error::NameInvalid(_))));
        assert_eq!(parse_scope(" ").ok(), Some(vec![]));
    }
}
