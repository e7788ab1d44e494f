//! OpenStack Keystone v3: a token for a Glance VIM, and the Glance endpoint from its catalog.
//!
//! [`KeystoneSession`] authenticates with `POST /v3/auth/tokens` (a password scoped to a project,
//! or an application credential, which carries its own scope), keeps the token (the
//! `X-Subject-Token` header) until 60 s before its `expires_at`, and finds the endpoint of the
//! service of type `image` for the configured region and interface in the token's catalog.
//! Secrets (passwords, application-credential secrets, tokens) never appear in errors, logs or
//! `Debug` output.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::read_capped;
use super::{AdapterError, AdapterErrorKind, AdapterResult};

/// How much of a remote JSON answer is read into memory, at most.
pub use super::MAX_JSON_BYTES;

/// A token is renewed this long before Keystone says it expires.
const EXPIRY_MARGIN: time::Duration = time::Duration::seconds(60);

/// Who authenticates to Keystone.
#[derive(Clone)]
pub enum KeystoneCredential {
    /// A user's password; the token is scoped to [`KeystoneAuth::project`].
    Password {
        username: String,
        password: String,
        /// The user's domain name (e.g. `Default`).
        user_domain: String,
    },
    /// An application credential (its id and secret); its project is the one it was made in.
    ApplicationCredential { id: String, secret: String },
}

impl fmt::Debug for KeystoneCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password {
                username, user_domain, ..
            } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<redacted>")
                .field("user_domain", user_domain)
                .finish(),
            Self::ApplicationCredential { id, .. } => f
                .debug_struct("ApplicationCredential")
                .field("id", id)
                .field("secret", &"<redacted>")
                .finish(),
        }
    }
}

/// Where and how to authenticate to Keystone, and which catalog entry to use.
#[derive(Clone, Debug)]
pub struct KeystoneAuth {
    /// The identity endpoint, with or without the trailing `/v3`
    /// (`http://127.0.0.1:35357/v3` and `http://127.0.0.1:35357` are the same).
    pub auth_url: String,
    pub credential: KeystoneCredential,
    /// The project (name) a password token is scoped to; unused with an application credential.
    pub project: Option<String>,
    /// The domain (name) of `project`; `Default` usually.
    pub project_domain: String,
    /// The catalog region; `None` takes the first `image` endpoint of the interface.
    pub region: Option<String>,
    /// The catalog interface: `public`, `internal` or `admin`.
    pub interface: String,
}

impl KeystoneAuth {
    /// An auth with the usual defaults: project domain `Default`, any region, interface `public`.
    pub fn new(auth_url: impl Into<String>, credential: KeystoneCredential) -> Self {
        Self {
            auth_url: auth_url.into(),
            credential,
            project: None,
            project_domain: "Default".to_string(),
            region: None,
            interface: "public".to_string(),
        }
    }

    /// `auth_url` ending in `/v3`, without a trailing slash.
    pub fn v3_url(&self) -> String {
        let base = self.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            base.to_string()
        } else {
            format!("{base}/v3")
        }
    }
}

/// A token and what came with it.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) expires_at: Option<OffsetDateTime>,
    /// The `image` endpoint of the catalog, without a trailing slash.
    pub(crate) image_endpoint: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("image_endpoint", &self.image_endpoint)
            .finish()
    }
}

impl Token {
    fn fresh(&self) -> bool {
        match self.expires_at {
            Some(at) => OffsetDateTime::now_utc() + EXPIRY_MARGIN < at,
            None => true,
        }
    }
}

/// One Keystone identity, its cached token and the number of times it authenticated.
pub(crate) struct KeystoneSession {
    auth: KeystoneAuth,
    http: reqwest::Client,
    call_timeout: Duration,
    token: Mutex<Option<Token>>,
    authentications: AtomicU64,
}

impl fmt::Debug for KeystoneSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoneSession")
            .field("auth", &self.auth)
            .field("authentications", &self.authentications)
            .finish_non_exhaustive()
    }
}

impl KeystoneSession {
    pub(crate) fn new(auth: KeystoneAuth, http: reqwest::Client, call_timeout: Duration) -> Self {
        Self {
            auth,
            http,
            call_timeout,
            token: Mutex::new(None),
            authentications: AtomicU64::new(0),
        }
    }

    /// How many times this session asked Keystone for a token.
    pub(crate) fn authentications(&self) -> u64 {
        self.authentications.load(Ordering::Relaxed)
    }

    /// The cached token while it is fresh, else a new one.
    pub(crate) async fn token(&self) -> AdapterResult<Token> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        let t = self.authenticate().await?;
        *slot = Some(t.clone());
        Ok(t)
    }

    /// Forget `refused` (a token the service answered 401 to), unless another caller already
    /// replaced it, so that the next [`Self::token`] authenticates again.
    pub(crate) async fn invalidate(&self, refused: &Token) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == refused.value) {
            *slot = None;
        }
    }

    fn request_body(&self) -> Value {
        match &self.auth.credential {
            KeystoneCredential::Password {
                username,
                password,
                user_domain,
            } => {
                let mut auth = json!({
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {
                            "name": username,
                            "domain": {"name": user_domain},
                            "password": password,
                        }},
                    }
                });
                if let Some(project) = &self.auth.project {
                    auth["scope"] = json!({"project": {
                        "name": project,
                        "domain": {"name": self.auth.project_domain},
                    }});
                }
                json!({ "auth": auth })
            }
            KeystoneCredential::ApplicationCredential { id, secret } => json!({"auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": id, "secret": secret},
                }
            }}),
        }
    }

    async fn authenticate(&self) -> AdapterResult<Token> {
        const WHAT: &str = "keystone: POST /v3/auth/tokens";
        self.authentications.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/auth/tokens", self.auth.v3_url());
        let resp = self
            .http
            .post(&url)
            .timeout(self.call_timeout)
            .json(&self.request_body())
            .send()
            .await
            .map_err(|e| AdapterError::transport(WHAT, &e))?;
        let status = resp.status().as_u16();
        let subject = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, MAX_JSON_BYTES, WHAT).await?;
        if status != 201 && status != 200 {
            return Err(AdapterError::from_status(status, WHAT, &String::from_utf8_lossy(&body)));
        }
        let value = subject.ok_or_else(|| {
            AdapterError::new(
                AdapterErrorKind::Other,
                format!("{WHAT}: the answer has no X-Subject-Token header"),
            )
        })?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| AdapterError::new(AdapterErrorKind::Other, format!("{WHAT}: the answer is not JSON: {e}")))?;
        let token = &doc["token"];
        let expires_at = token["expires_at"]
            .as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
        let image_endpoint = find_endpoint(token, "image", self.auth.region.as_deref(), &self.auth.interface)?;
        Ok(Token {
            value,
            expires_at,
            image_endpoint,
        })
    }
}

/// The URL of the catalog entry of service `kind` for `region` (any when `None`) and `interface`.
fn find_endpoint(token: &Value, kind: &str, region: Option<&str>, interface: &str) -> AdapterResult<String> {
    let missing = |what: String| {
        AdapterError::new(
            AdapterErrorKind::Other,
            format!("keystone: the token's catalog has {what}"),
        )
    };
    let catalog = token["catalog"]
        .as_array()
        .ok_or_else(|| missing("no entries (is the token scoped to a project? set the project)".to_string()))?;
    let services: Vec<&Value> = catalog.iter().filter(|s| s["type"].as_str() == Some(kind)).collect();
    if services.is_empty() {
        return Err(missing(format!("no service of type \"{kind}\"")));
    }
    for service in &services {
        let endpoints = service["endpoints"].as_array().into_iter().flatten();
        for e in endpoints {
            let region_ok = match region {
                None => true,
                Some(r) => e["region_id"].as_str() == Some(r) || e["region"].as_str() == Some(r),
            };
            if region_ok && e["interface"].as_str() == Some(interface) {
                if let Some(url) = e["url"].as_str() {
                    return Ok(url.trim_end_matches('/').to_string());
                }
            }
        }
    }
    Err(missing(format!(
        "no \"{kind}\" endpoint for interface \"{interface}\" in region \"{}\"",
        region.unwrap_or("(any)")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_url_with_or_without_v3() {
        let cred = KeystoneCredential::ApplicationCredential {
            id: "i".into(),
            secret: "s".into(),
        };
        for u in [
            "http://k:5000",
            "http://k:5000/",
            "http://k:5000/v3",
            "http://k:5000/v3/",
        ] {
            assert_eq!(KeystoneAuth::new(u, cred.clone()).v3_url(), "http://k:5000/v3");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let p = KeystoneCredential::Password {
            username: "demo".into(),
            password: "hunter2-secret".into(),
            user_domain: "Default".into(),
        };
        let a = KeystoneCredential::ApplicationCredential {
            id: "abc".into(),
            secret: "s3cr3t-value".into(),
        };
        let text = format!("{:?} {:?}", KeystoneAuth::new("http://k", p), a);
        assert!(!text.contains("hunter2-secret") && !text.contains("s3cr3t-value"));
        assert!(text.contains("demo") && text.contains("abc"));
        let t = Token {
            value: "gAAAAtokenvalue".into(),
            expires_at: None,
            image_endpoint: "http://g".into(),
        };
        assert!(!format!("{t:?}").contains("gAAAAtokenvalue"));
    }

    #[test]
    fn endpoint_by_region_and_interface() {
        let token = json!({"catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k"}]},
            {"type": "image", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "http://g1/"},
                {"interface": "internal", "region_id": "R1", "url": "http://g1i"},
                {"interface": "public", "region_id": "R2", "url": "http://g2"},
            ]},
        ]});
        assert_eq!(
            find_endpoint(&token, "image", Some("R2"), "public").ok(),
            Some("http://g2".to_string())
        );
        assert_eq!(
            find_endpoint(&token, "image", None, "internal").ok(),
            Some("http://g1i".to_string())
        );
        let e = find_endpoint(&token, "image", Some("R3"), "public").err();
        assert!(e.is_some_and(|e| e.kind == AdapterErrorKind::Other && e.message.contains("R3")));
        let e = find_endpoint(&json!({}), "image", None, "public").err();
        assert!(e.is_some_and(|e| e.message.contains("scoped")));
    }
}
