//! The VIM registry: the clouds and registries images are distributed to. Register, read,
//! update, test and remove VIMs (each change audited); keep their secrets sealed
//! ([`super::secrets`]); check their health; open a client for the distribution engine.
//!
//! Three kinds:
//! * `openstack`: Glance, directly (`glance_url`) or through Keystone v3 (`auth_url`,
//!   `region`, `project`, a password or an application credential);
//! * `oci-registry`: any Distribution-spec registry (`url`, optional credentials);
//! * `onap-multicloud`: ONAP MultiCloud's image API (`url`, `cloud_owner`, `region`,
//!   `tenant`, `api_version` v0 or v1).
//!
//! Rights: reading VIMs needs an authenticated caller (when the server authenticates);
//! changing them is system administration.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::admin::Actor;
use super::secrets::Sealer;
use crate::adapters::glance::{GlanceClient, GlanceConfig, GlanceEndpoint};
use crate::adapters::keystone::{KeystoneAuth, KeystoneCredential};
use crate::adapters::multicloud::{MultiCloudClient, MultiCloudConfig};
use crate::adapters::oci::{RegistryClient, RegistryConfig};
use crate::adapters::AdapterErrorKind;
use crate::auth::{Action, Auth, Principal, Resource};
use crate::config::DistributionConfig;
use crate::error::{Error, Result};
use crate::storage::meta::AuditRecord;
use crate::storage::vims::VimRecord;
use crate::storage::{now_ms, AccountStore, VimStore};

pub const KINDS: [&str; 3] = ["openstack", "oci-registry", "onap-multicloud"];

/// Most labels on one VIM, and their sizes.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 255;
/// Longest text setting (URLs, names), and a CA certificate bundle.
const MAX_TEXT: usize = 2048;
const MAX_CA_PEM: usize = 256 * 1024;
/// Most transfers at once to one VIM (a semaphore of more permits than tokio allows panics).
pub const MAX_CONCURRENCY: usize = 1024;

/// Everything a caller may say about a VIM (register, or update by merging), secrets
/// included. Unknown fields are refused, so a typo never silently drops a setting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VimInput {
    /// Unique among VIMs; 1 to 200 bytes. Required to register.
    pub name: Option<String>,
    /// openstack, oci-registry or onap-multicloud. Required to register; never changes.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Up to 64 labels (keys of a-z, A-Z, 0-9, `._/-`), for `vim_selector`.
    pub labels: Option<BTreeMap<String, String>>,
    // openstack
    pub glance_url: Option<String>,
    pub auth_url: Option<String>,
    pub region: Option<String>,
    /// Keystone catalog interface: public (default), internal or admin.
    pub interface: Option<String>,
    pub project: Option<String>,
    pub project_domain: Option<String>,
    pub user_domain: Option<String>,
    pub username: Option<String>,
    /// Secret: sealed, never shown (`secrets` says it is set).
    pub password: Option<String>,
    pub application_credential_id: Option<String>,
    /// Secret: sealed, never shown.
    pub application_credential_secret: Option<String>,
    /// Visibility of the images distributed there (default private).
    pub image_visibility: Option<String>,
    // oci-registry (and multicloud's base URL)
    pub url: Option<String>,
    /// A prefix for repository names at the registry.
    pub namespace: Option<String>,
    // onap-multicloud
    pub cloud_owner: Option<String>,
    pub tenant: Option<String>,
    pub api_version: Option<String>,
    // every kind
    /// A PEM bundle of extra roots to trust for this VIM's TLS.
    pub ca_pem: Option<String>,
    /// A base URL of this server that the VIM reaches (web-download URLs); overrides
    /// `distribution.public_url`.
    pub download_url: Option<String>,
    /// Transfers at once to this VIM, 1 to 1024 (default `distribution.per_vim_concurrency`).
    #[schema(minimum = 1, maximum = 1024)]
    pub concurrency: Option<usize>,
    /// Bytes per second sent to this VIM (default `distribution.per_vim_bytes_per_sec`).
    pub max_bytes_per_sec: Option<u64>,
    /// A regional relay (another Image Manager serving `--upstream` this one) whose URL the
    /// VIM's web-downloads use instead of ours.
    pub relay_url: Option<String>,
}

/// The secret fields of [`VimInput`], sealed together.
#[derive(Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VimSecrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_credential_secret: Option<String>,
}

impl std::fmt::Debug for VimSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VimSecrets")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field(
                "application_credential_secret",
                &self.application_credential_secret.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

impl VimInput {
    /// The input without its secrets, and the secrets.
    fn split(mut self) -> (VimInput, VimSecrets) {
        let secrets = VimSecrets {
            password: self.password.take(),
            application_credential_secret: self.application_credential_secret.take(),
        };
        (self, secrets)
    }
}

/// A VIM as callers see it: its settings without secrets, whether secrets are set, labels
/// and health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VimView {
    pub id: String,
    pub name: String,
    /// openstack, oci-registry or onap-multicloud.
    #[serde(rename = "type")]
    pub kind: String,
    /// The settings (no secret, no name, type or labels), as registered: the fields of a
    /// registration that were given.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub labels: BTreeMap<String, String>,
    /// Which secrets are set (never their values): `password`, `application_credential_secret`.
    pub secrets: Vec<String>,
    /// The last health check's result.
    #[schema(value_type = VimHealth)]
    pub health: Value,
    /// ms since the epoch.
    pub created_at: i64,
    /// ms since the epoch.
    pub updated_at: i64,
}

/// A VIM's health as its last check found it (documentation only: `health` is written as
/// JSON by [`Vims::check`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VimHealth {
    /// unknown (never checked), ok, unreachable, unauthenticated or error.
    state: String,
    /// Why it is not ok.
    #[schema(required = false)]
    error: String,
    /// Glance: the endpoint used.
    #[schema(required = false)]
    endpoint: String,
    /// Glance: the import methods it offers (web-download, glance-direct...).
    #[schema(required = false)]
    import_methods: Vec<String>,
    /// Glance: free bytes under its quota, `null` when unlimited or not told.
    #[schema(required = false)]
    free_bytes: Option<u64>,
    /// When it was checked (RFC 3339); absent while the state is unknown.
    #[schema(required = false)]
    checked_at: String,
    /// How long the check took.
    #[schema(required = false)]
    latency_ms: u64,
}

/// A client for one VIM, opened with its secrets.
#[derive(Clone)]
pub enum VimClient {
    Glance(GlanceClient),
    Registry(RegistryClient),
    MultiCloud(MultiCloudClient),
}

/// A VIM opened for use: its record, settings and a client.
#[derive(Clone)]
pub struct OpenVim {
    pub record: VimRecord,
    pub settings: VimInput,
    pub client: VimClient,
}

/// The VIM registry service.
pub struct Vims {
    store: Arc<dyn VimStore>,
    accounts: Arc<dyn AccountStore>,
    auth: Arc<Auth>,
    sealer: Arc<Sealer>,
    pub config: DistributionConfig,
    /// Clients by VIM id, with the settings they were made from: every target of a VIM shares
    /// one connection pool (and Keystone token) instead of building a client per attempt.
    clients: std::sync::Mutex<HashMap<String, (ClientKey, VimClient)>>,
}

/// What a cached client was made from: a change of any of it makes a new one.
#[derive(PartialEq, Eq)]
struct ClientKey {
    updated_at: i64,
    config: String,
    secret: Option<String>,
}

impl Vims {
    pub fn new(
        store: Arc<dyn VimStore>,
        accounts: Arc<dyn AccountStore>,
        auth: Arc<Auth>,
        sealer: Arc<Sealer>,
        config: DistributionConfig,
    ) -> Self {
        Self {
            store,
            accounts,
            auth,
            sealer,
            config,
            clients: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The id of the key secrets are sealed with now.
    pub fn key_id(&self) -> &str {
        self.sealer.key_id()
    }

    pub fn store(&self) -> &Arc<dyn VimStore> {
        &self.store
    }

    /// Refused unless `who` may read VIMs: anyone authenticated.
    pub async fn may_read(&self, who: &Actor) -> Result<()> {
        match who {
            Actor::Principal {
                principal: Principal::Anonymous,
                ..
            } if self.auth.enabled() => Err(Error::Unauthorized("authentication required to read VIMs".into())),
            _ => Ok(()),
        }
    }

    /// Refused unless `who` may change VIMs: system administrators.
    pub async fn may_change(&self, who: &Actor) -> Result<()> {
        match who {
            Actor::Principal { principal, .. } => {
                self.auth
                    .authorize(&*self.accounts, principal, Action::Admin, Resource::System)
                    .await
            }
            Actor::Operator(_) => Ok(()),
        }
    }

    pub async fn audit(&self, who: &Actor, action: &str, target: &str, outcome: &str, detail: Option<String>) {
        crate::auth::audit(
            &*self.accounts,
            AuditRecord {
                at: now_ms(),
                actor: who.name(),
                action: action.into(),
                target: target.into(),
                namespace: None,
                remote: match who {
                    Actor::Principal { remote, .. } => remote.clone(),
                    Actor::Operator(_) => None,
                },
                outcome: outcome.into(),
                detail,
            },
        )
        .await;
    }

    /// Register a VIM.
    pub async fn register(&self, who: &Actor, input: VimInput) -> Result<VimView> {
        self.may_change(who).await?;
        let (settings, secrets) = input.split();
        let (name, kind, labels) = validate(&settings, &secrets)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let rec = VimRecord {
            secret: self.seal(&id, &secrets)?,
            id,
            name,
            kind,
            config: settings_json(&settings)?,
            labels,
            health: None,
            created_at: now,
            updated_at: now,
        };
        if !self.store.vim_add(&rec).await? {
            return Err(Error::Conflict(format!("a VIM named {:?} exists", rec.name)));
        }
        self.audit(
            who,
            "vim.register",
            &rec.id,
            "ok",
            Some(format!("{} {}", rec.kind, rec.name)),
        )
        .await;
        Ok(self.view(rec))
    }

    pub async fn list(&self, who: &Actor) -> Result<Vec<VimView>> {
        self.may_read(who).await?;
        Ok(self.store.vims().await?.into_iter().map(|r| self.view(r)).collect())
    }

    /// All VIMs (for the engine, no rights checked).
    pub async fn all(&self) -> Result<Vec<VimRecord>> {
        Ok(self.store.vims().await?)
    }

    /// The VIM with this id, or else this name.
    pub async fn find(&self, id_or_name: &str) -> Result<VimRecord> {
        // Ids are UUIDs we mint: other text is a name, compared here (a database's key column
        // may refuse it, e.g. MariaDB's ascii ones).
        if uuid::Uuid::parse_str(id_or_name).is_ok() {
            if let Some(v) = self.store.vim_get(id_or_name).await? {
                return Ok(v);
            }
        }
        self.store
            .vims()
            .await?
            .into_iter()
            .find(|v| v.name == id_or_name)
            .ok_or_else(|| Error::NotFoundWhat(format!("VIM {:?}", id_or_name.chars().take(200).collect::<String>())))
    }

    pub async fn get(&self, who: &Actor, id: &str) -> Result<VimView> {
        self.may_read(who).await?;
        Ok(self.view(self.find(id).await?))
    }

    /// Update by merging `patch` over the registered settings: a field given replaces, a
    /// field given as `null` is removed, `labels` replaces every label. Secrets given
    /// replace the stored ones; `null` removes one.
    pub async fn update(&self, who: &Actor, id: &str, patch: Map<String, Value>) -> Result<VimView> {
        self.may_change(who).await?;
        let old = self.find(id).await?;
        let mut merged = match &old.config {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        merged.insert("name".into(), json!(old.name));
        merged.insert("type".into(), json!(old.kind));
        merged.insert("labels".into(), json!(old.labels));
        let (_, mut secrets) = self.open_secrets(&old)?;
        for (k, v) in patch {
            match (k.as_str(), v) {
                ("type", v) if v != json!(old.kind) => {
                    return Err(Error::BadRequest(
                        "a VIM's type cannot change: remove it and register anew".into(),
                    ))
                }
                ("password", v) => secrets.password = secret_value(v)?,
                ("application_credential_secret", v) => secrets.application_credential_secret = secret_value(v)?,
                (_, Value::Null) => {
                    merged.remove(&k);
                }
                (_, v) => {
                    merged.insert(k, v);
                }
            }
        }
        let settings: VimInput = serde_json::from_value(Value::Object(merged))
            .map_err(|e| Error::BadRequest(format!("VIM settings: {e}")))?;
        let (name, kind, labels) = validate(&settings, &secrets)?;
        let now = now_ms().max(old.updated_at + 1);
        let rec = VimRecord {
            secret: self.seal(&old.id, &secrets)?,
            name,
            kind,
            config: settings_json(&settings)?,
            labels,
            updated_at: now,
            ..old.clone()
        };
        match self.store.vim_update(&rec, old.updated_at).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Conflict(
                    "the VIM changed while this update was made: read it again and retry".into(),
                ))
            }
            Err(e) if e.kind() == crate::storage::StoreErrorKind::Conflict => {
                return Err(Error::Conflict(format!("a VIM named {:?} exists", rec.name)))
            }
            Err(e) => return Err(e.into()),
        }
        self.audit(who, "vim.update", &rec.id, "ok", None).await;
        Ok(self.view(rec))
    }

    /// Remove a VIM (and what the registry knows it holds; the images stay on the VIM).
    pub async fn remove(&self, who: &Actor, id: &str) -> Result<()> {
        self.may_change(who).await?;
        let rec = self.find(id).await?;
        self.store.vim_delete(&rec.id).await?;
        self.forget_client(&rec.id);
        self.audit(who, "vim.remove", &rec.id, "ok", Some(rec.name)).await;
        Ok(())
    }

    /// Check a VIM now (reachable, authenticated, free quota where it tells) and record it.
    pub async fn test(&self, who: &Actor, id: &str) -> Result<VimView> {
        self.may_change(who).await?;
        let rec = self.find(id).await?;
        let health = self.check(&rec).await;
        self.audit(
            who,
            "vim.test",
            &rec.id,
            "ok",
            health.get("state").and_then(Value::as_str).map(str::to_string),
        )
        .await;
        let rec = self.find(&rec.id).await?;
        Ok(self.view(rec))
    }

    /// Check one VIM's health and store the result.
    pub async fn check(&self, rec: &VimRecord) -> Value {
        let started = std::time::Instant::now();
        let result = match self.open(rec) {
            Ok(open) => match &open.client {
                VimClient::Glance(g) => g.check().await.map(|h| {
                    json!({
                        "endpoint": h.endpoint,
                        "import_methods": h.import_methods,
                        "free_bytes": h.free_bytes,
                    })
                }),
                VimClient::Registry(r) => r.check().await.map(|()| json!({})),
                VimClient::MultiCloud(m) => m.check().await.map(|()| json!({})),
            },
            Err(e) => Err(crate::adapters::AdapterError::new(
                AdapterErrorKind::Other,
                e.to_string(),
            )),
        };
        let mut health = match result {
            Ok(Value::Object(m)) => {
                let mut m = m;
                m.insert("state".into(), json!("ok"));
                Value::Object(m)
            }
            Ok(_) => json!({"state": "ok"}),
            Err(e) => json!({
                "state": match e.kind {
                    AdapterErrorKind::Transient => "unreachable",
                    AdapterErrorKind::Auth => "unauthenticated",
                    _ => "error",
                },
                "error": e.message,
            }),
        };
        if let Value::Object(m) = &mut health {
            m.insert("checked_at".into(), json!(crate::storage::rfc3339(now_ms())));
            m.insert("latency_ms".into(), json!(started.elapsed().as_millis() as u64));
        }
        if let Err(e) = self.store.vim_set_health(&rec.id, &health).await {
            tracing::warn!(vim = %rec.id, error = %e, "recording VIM health failed");
        }
        health
    }

    /// Check every VIM (the periodic health check).
    pub async fn check_all(&self) {
        let vims = match self.store.vims().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing VIMs for the health check failed");
                return;
            }
        };
        // At most 16 at once: a thousand VIMs are checked without a thousand sockets.
        use futures::StreamExt;
        futures::stream::iter(vims)
            .map(|v| async move {
                self.check(&v).await;
            })
            .buffer_unordered(16)
            .for_each(|()| async {})
            .await;
    }

    /// Re-seal every VIM's secrets under the current key; returns how many changed.
    pub async fn rotate(&self, who: &Actor) -> Result<usize> {
        self.may_change(who).await?;
        let mut changed = 0;
        for rec in self.store.vims().await? {
            let Some(sealed) = &rec.secret else { continue };
            if self.sealer.is_current(sealed) {
                continue;
            }
            let (_, secrets) = self.open_secrets(&rec)?;
            let new = VimRecord {
                secret: self.seal(&rec.id, &secrets)?,
                updated_at: now_ms().max(rec.updated_at + 1),
                ..rec.clone()
            };
            if self.store.vim_update(&new, rec.updated_at).await? {
                changed += 1;
            }
        }
        self.audit(
            who,
            "vim.secrets.rotate",
            "",
            "ok",
            Some(format!("{changed} re-sealed")),
        )
        .await;
        Ok(changed)
    }

    fn seal(&self, id: &str, secrets: &VimSecrets) -> Result<Option<String>> {
        if secrets.password.is_none() && secrets.application_credential_secret.is_none() {
            return Ok(None);
        }
        let plain = serde_json::to_vec(secrets).map_err(|e| Error::Internal(format!("encoding secrets: {e}")))?;
        self.sealer
            .seal(id, &plain)
            .map(Some)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    fn open_secrets(&self, rec: &VimRecord) -> Result<(bool, VimSecrets)> {
        let Some(sealed) = &rec.secret else {
            return Ok((false, VimSecrets::default()));
        };
        let (plain, old) = self
            .sealer
            .open(&rec.id, sealed)
            .map_err(|e| Error::Internal(format!("VIM {}: {e}", rec.name)))?;
        let secrets =
            serde_json::from_slice(&plain).map_err(|_| Error::Internal("sealed VIM secrets unreadable".into()))?;
        Ok((old, secrets))
    }

    /// The settings and a client of a VIM, its secrets opened.
    pub fn open(&self, rec: &VimRecord) -> Result<OpenVim> {
        let settings: VimInput = serde_json::from_value(rec.config.clone())
            .map_err(|e| Error::Internal(format!("stored VIM settings unreadable: {e}")))?;
        let key = ClientKey {
            updated_at: rec.updated_at,
            config: rec.config.to_string(),
            secret: rec.secret.clone(),
        };
        let cached = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients.get(&rec.id).filter(|(k, _)| *k == key).map(|(_, c)| c.clone())
        };
        if let Some(client) = cached {
            return Ok(OpenVim {
                record: rec.clone(),
                settings,
                client,
            });
        }
        let client = self.new_client(rec, &settings)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(rec.id.clone(), (key, client.clone()));
        Ok(OpenVim {
            record: rec.clone(),
            settings,
            client,
        })
    }

    /// Forget the client of a removed VIM.
    fn forget_client(&self, id: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.remove(id);
    }

    fn new_client(&self, rec: &VimRecord, settings: &VimInput) -> Result<VimClient> {
        let (_, secrets) = self.open_secrets(rec)?;
        let call_timeout = Duration::from_secs(self.config.call_timeout_secs.max(1));
        let connect_timeout = Duration::from_secs(self.config.connect_timeout_secs.max(1));
        let upstream = |e: crate::adapters::AdapterError| Error::Upstream(e.message);
        let client = match rec.kind.as_str() {
            "openstack" => {
                let endpoint = match (&settings.auth_url, &settings.glance_url) {
                    (Some(auth_url), _) => {
                        let credential = match (
                            &settings.application_credential_id,
                            &secrets.application_credential_secret,
                        ) {
                            (Some(id), Some(secret)) => KeystoneCredential::ApplicationCredential {
                                id: id.clone(),
                                secret: secret.clone(),
                            },
                            _ => KeystoneCredential::Password {
                                username: settings.username.clone().unwrap_or_default(),
                                password: secrets.password.clone().unwrap_or_default(),
                                user_domain: settings.user_domain.clone().unwrap_or_else(|| "Default".into()),
                            },
                        };
                        GlanceEndpoint::Keystone(KeystoneAuth {
                            auth_url: auth_url.clone(),
                            credential,
                            project: settings.project.clone(),
                            project_domain: settings.project_domain.clone().unwrap_or_else(|| "Default".into()),
                            region: settings.region.clone(),
                            interface: settings.interface.clone().unwrap_or_else(|| "public".into()),
                        })
                    }
                    (None, Some(url)) => GlanceEndpoint::Direct { url: url.clone() },
                    (None, None) => return Err(Error::Internal("openstack VIM without glance_url or auth_url".into())),
                };
                VimClient::Glance(
                    GlanceClient::new(GlanceConfig {
                        endpoint,
                        call_timeout,
                        connect_timeout,
                        ca_pem: settings.ca_pem.clone(),
                    })
                    .map_err(upstream)?,
                )
            }
            "oci-registry" => VimClient::Registry(
                RegistryClient::new(RegistryConfig {
                    url: settings.url.clone().unwrap_or_default(),
                    username: settings.username.clone(),
                    password: secrets.password.clone(),
                    ca_pem: settings.ca_pem.clone(),
                    call_timeout,
                    connect_timeout,
                    namespace: settings.namespace.clone(),
                })
                .map_err(upstream)?,
            ),
            "onap-multicloud" => VimClient::MultiCloud(
                MultiCloudClient::new(MultiCloudConfig {
                    url: settings.url.clone().unwrap_or_default(),
                    cloud_owner: settings.cloud_owner.clone().unwrap_or_default(),
                    region: settings.region.clone().unwrap_or_default(),
                    tenant: settings.tenant.clone().unwrap_or_default(),
                    api_version: settings.api_version.clone().unwrap_or_else(|| "v1".into()),
                    ca_pem: settings.ca_pem.clone(),
                    call_timeout,
                    connect_timeout,
                })
                .map_err(upstream)?,
            ),
            other => return Err(Error::Internal(format!("unknown VIM type {other:?}"))),
        };
        Ok(client)
    }

    pub fn view(&self, rec: VimRecord) -> VimView {
        let mut secrets = Vec::new();
        if let Some(Ok((_, s))) = rec.secret.as_ref().map(|_| self.open_secrets(&rec)) {
            if s.password.is_some() {
                secrets.push("password".to_string());
            }
            if s.application_credential_secret.is_some() {
                secrets.push("application_credential_secret".to_string());
            }
        }
        VimView {
            id: rec.id,
            name: rec.name,
            kind: rec.kind,
            settings: rec.config,
            labels: rec.labels,
            secrets,
            health: rec.health.unwrap_or_else(|| json!({"state": "unknown"})),
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        }
    }
}

/// A label selector written `key=value,key2=value2`.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::BadRequest(format!("selector: {pair:?} is not key=value")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// A selector matches a VIM whose labels hold each of its pairs.
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn secret_value(v: Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() && s.len() <= MAX_TEXT => Ok(Some(s)),
        _ => Err(Error::BadRequest(
            "a secret is a non-empty string of at most 2048 bytes".into(),
        )),
    }
}

/// The stored settings: the input without name, type, labels and secrets.
fn settings_json(settings: &VimInput) -> Result<Value> {
    let mut v = serde_json::to_value(settings).map_err(|e| Error::Internal(format!("encoding VIM settings: {e}")))?;
    if let Value::Object(m) = &mut v {
        m.retain(|k, v| {
            !v.is_null()
                && !matches!(
                    k.as_str(),
                    "name" | "type" | "labels" | "password" | "application_credential_secret"
                )
        });
    }
    Ok(v)
}

fn check_url(field: &str, url: &Option<String>, required: bool) -> Result<()> {
    match url {
        None if required => Err(Error::BadRequest(format!("{field} is required"))),
        None => Ok(()),
        Some(u) => {
            let parsed = reqwest::Url::parse(u).map_err(|e| Error::BadRequest(format!("{field}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(Error::BadRequest(format!("{field}: an http or https URL with a host")));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(Error::BadRequest(format!(
                    "{field}: credentials do not go in the URL (username, password fields)"
                )));
            }
            Ok(())
        }
    }
}

fn check_text(field: &str, v: &Option<String>) -> Result<()> {
    match v {
        Some(s) if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) => Err(Error::BadRequest(
            format!("{field}: 1 to {MAX_TEXT} bytes without control characters"),
        )),
        _ => Ok(()),
    }
}

/// Check a VIM's settings; returns its name, kind and labels.
fn validate(s: &VimInput, secrets: &VimSecrets) -> Result<(String, String, BTreeMap<String, String>)> {
    let name = s
        .name
        .clone()
        .ok_or_else(|| Error::BadRequest("name is required".into()))?;
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "name: 1 to 200 bytes without control characters".into(),
        ));
    }
    let kind = s
        .kind
        .clone()
        .ok_or_else(|| Error::BadRequest(format!("type is required: one of {}", KINDS.join(", "))))?;
    for (field, v) in [
        ("region", &s.region),
        ("project", &s.project),
        ("project_domain", &s.project_domain),
        ("user_domain", &s.user_domain),
        ("username", &s.username),
        ("application_credential_id", &s.application_credential_id),
        ("namespace", &s.namespace),
        ("cloud_owner", &s.cloud_owner),
        ("tenant", &s.tenant),
    ] {
        check_text(field, v)?;
    }
    check_url("download_url", &s.download_url, false)?;
    check_url("relay_url", &s.relay_url, false)?;
    if s.ca_pem
        .as_ref()
        .is_some_and(|p| p.len() > MAX_CA_PEM || !p.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(Error::BadRequest("ca_pem: PEM certificates, at most 256 KiB".into()));
    }
    if s.concurrency.is_some_and(|n| n == 0 || n > MAX_CONCURRENCY) {
        return Err(Error::BadRequest(format!("concurrency: 1 to {MAX_CONCURRENCY}")));
    }
    let openstack_only = s.glance_url.is_some()
        || s.auth_url.is_some()
        || s.interface.is_some()
        || s.project.is_some()
        || s.project_domain.is_some()
        || s.user_domain.is_some()
        || s.application_credential_id.is_some()
        || secrets.application_credential_secret.is_some()
        || s.image_visibility.is_some();
    match kind.as_str() {
        "openstack" => {
            check_url("glance_url", &s.glance_url, false)?;
            check_url("auth_url", &s.auth_url, false)?;
            if s.glance_url.is_none() && s.auth_url.is_none() {
                return Err(Error::BadRequest(
                    "an openstack VIM needs glance_url (a Glance without Keystone) or auth_url (Keystone v3)".into(),
                ));
            }
            if s.auth_url.is_some() {
                let app = s.application_credential_id.is_some() || secrets.application_credential_secret.is_some();
                if app {
                    if s.application_credential_id.is_none() || secrets.application_credential_secret.is_none() {
                        return Err(Error::BadRequest(
                            "application_credential_id and application_credential_secret go together".into(),
                        ));
                    }
                } else if s.username.is_none() || secrets.password.is_none() || s.project.is_none() {
                    return Err(Error::BadRequest(
                        "Keystone needs username, password and project, or application_credential_id and \
                         application_credential_secret"
                            .into(),
                    ));
                }
            }
            if let Some(i) = &s.interface {
                if !matches!(i.as_str(), "public" | "internal" | "admin") {
                    return Err(Error::BadRequest("interface: public, internal or admin".into()));
                }
            }
            if let Some(v) = &s.image_visibility {
                if !matches!(v.as_str(), "private" | "shared" | "community" | "public") {
                    return Err(Error::BadRequest(
                        "image_visibility: private, shared, community or public".into(),
                    ));
                }
            }
            if s.url.is_some() || s.cloud_owner.is_some() || s.tenant.is_some() || s.api_version.is_some() {
                return Err(Error::BadRequest(
                    "url, cloud_owner, tenant and api_version are not openstack settings (glance_url, auth_url)".into(),
                ));
            }
        }
        "oci-registry" => {
            check_url("url", &s.url, true)?;
            if openstack_only || s.cloud_owner.is_some() || s.tenant.is_some() || s.api_version.is_some() {
                return Err(Error::BadRequest(
                    "an oci-registry VIM takes url, username, password and namespace".into(),
                ));
            }
            if secrets.password.is_some() && s.username.is_none() {
                return Err(Error::BadRequest("password without username".into()));
            }
        }
        "onap-multicloud" => {
            check_url("url", &s.url, true)?;
            if openstack_only && s.image_visibility.is_none() {
                return Err(Error::BadRequest(
                    "an onap-multicloud VIM takes url, cloud_owner, region, tenant and api_version".into(),
                ));
            }
            for (field, v) in [
                ("cloud_owner", &s.cloud_owner),
                ("region", &s.region),
                ("tenant", &s.tenant),
            ] {
                if v.is_none() {
                    return Err(Error::BadRequest(format!("{field} is required for onap-multicloud")));
                }
            }
            if let Some(v) = &s.api_version {
                if !matches!(v.as_str(), "v0" | "v1") {
                    return Err(Error::BadRequest("api_version: v0 or v1".into()));
                }
            }
        }
        other => {
            return Err(Error::BadRequest(format!(
                "type {other:?}: one of {}",
                KINDS.join(", ")
            )))
        }
    }
    let labels = s.labels.clone().unwrap_or_default();
    if labels.len() > MAX_LABELS {
        return Err(Error::BadRequest(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in &labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !key_ok {
            return Err(Error::BadRequest(format!(
                "label {k:?}: 1 to {MAX_LABEL_KEY} of a-z, A-Z, 0-9, '.', '_', '/', '-'"
            )));
        }
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "label {k:?}: a value of at most {MAX_LABEL_VALUE} bytes without control characters"
            )));
        }
    }
    Ok((name, kind, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> (VimInput, VimSecrets) {
        serde_json::from_value::<VimInput>(v).unwrap().split()
    }

    #[test]
    fn validates_each_kind() {
        let (s, k) = input(json!({"name": "g", "type": "openstack", "glance_url": "http://127.0.0.1:9292"}));
        assert!(validate(&s, &k).is_ok());
        let (s, k) = input(json!({"name": "g", "type": "openstack"}));
        assert!(validate(&s, &k).is_err());
        let (s, k) = input(
            json!({"name": "k", "type": "openstack", "auth_url": "http://k/v3", "username": "u", "project": "p"}),
        );
        assert!(validate(&s, &k).is_err(), "a password is needed");
        let (s, k) = input(json!({"name": "k", "type": "openstack", "auth_url": "http://k/v3",
            "application_credential_id": "i", "application_credential_secret": "s"}));
        assert!(validate(&s, &k).is_ok());
        let (s, k) = input(json!({"name": "r", "type": "oci-registry", "url": "https://u:p@reg"}));
        assert!(validate(&s, &k).is_err(), "credentials in the URL are refused");
        let (s, k) = input(
            json!({"name": "m", "type": "onap-multicloud", "url": "http://msb/api/multicloud",
            "cloud_owner": "o", "region": "r", "tenant": "t", "api_version": "v0"}),
        );
        assert!(validate(&s, &k).is_ok());
        let (s, k) = input(json!({"name": "x", "type": "vmware"}));
        assert!(validate(&s, &k).is_err());
        // More transfers at once than a semaphore holds panicked the distribution worker.
        for n in [0u64, 1025, 1 << 62] {
            let (s, k) = input(json!({"name": "r", "type": "oci-registry", "url": "http://reg", "concurrency": n}));
            assert!(validate(&s, &k).is_err(), "{n}");
        }
        let (s, k) = input(json!({"name": "r", "type": "oci-registry", "url": "http://reg", "concurrency": 1024}));
        assert!(validate(&s, &k).is_ok());
        assert!(serde_json::from_value::<VimInput>(json!({"name": "x", "passwrd": "typo"})).is_err());
    }

    #[test]
    fn settings_never_hold_secrets() {
        let (s, _) = input(
            json!({"name": "k", "type": "openstack", "auth_url": "http://k/v3", "username": "u",
            "password": "hunter2", "project": "p"}),
        );
        let stored = settings_json(&s).unwrap().to_string();
        assert!(!stored.contains("hunter2") && !stored.contains("password"), "{stored}");
        assert!(stored.contains("\"username\":\"u\""));
        let secrets = VimSecrets {
            password: Some("hunter2".into()),
            application_credential_secret: None,
        };
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
