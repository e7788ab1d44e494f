//! The outbound OCI-registry adapter: a client for any registry that speaks the OCI
//! Distribution spec (CNCF Distribution, another Image Manager, Harbor, a cluster's registry),
//! and the copy of an image graph to it ([`copy_image`], [`verify_image`]) and of a VM disk as
//! a KubeVirt containerDisk ([`containerdisk`]).
//!
//! Authentication follows what the registry asks for in its `WWW-Authenticate` challenge:
//! none, HTTP Basic, or Docker's token protocol (a bearer token from the challenge's realm,
//! fetched with the Basic credentials, cached per scope until shortly before it expires; a
//! `401` with `error="insufficient_scope"` fetches a wider token once). Credentials and tokens
//! are only sent to the registry's own origin (and the token realm), never printed.
//!
//! What is read into memory is bounded: manifests by [`MAX_MANIFEST_BYTES`], error bodies,
//! token answers and catalog pages by their own caps. Blobs are streamed both ways; a blob
//! transfer fails when no byte moves for `call_timeout`, however long it takes in all.

mod auth;
pub mod containerdisk;
mod copy;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::mpsc;

pub use copy::{copy_image, verify_image, CopyReport, ImageSource};

use self::auth::{parse_challenges, AuthState, Scheme, Scopes, Token};
use super::{AdapterError, AdapterErrorKind, AdapterResult};
use crate::oci::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_ARTIFACT_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::oci::names::{parse_tag, Algorithm, Digest, Reference, RepoName};
use crate::storage::ByteStream;

/// Largest manifest read or sent (the same as our own registry's default limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_ERROR_BYTES: usize = 8 * 1024;
const MAX_TOKEN_BYTES: usize = 1024 * 1024;
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
const MAX_PAGES: usize = 10_000;
const PAGE_SIZE: usize = 1000;
/// How long an error answer's body may pause before what came is taken.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(10);
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Every manifest media type we read, for `Accept`.
const MANIFEST_TYPES: [&str; 5] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_ARTIFACT_MANIFEST,
];

/// Where a target registry is and how to reach it.
#[derive(Clone)]
pub struct RegistryConfig {
    /// `https://host[:port]` or `http://host[:port]`; the API is at `/v2/` below it.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Extra CA certificates (PEM, one or more) trusted beside the built-in roots.
    pub ca_pem: Option<String>,
    /// Bound of one call; for blob transfers, the longest time no byte may move.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Prefix prepended to repository names at the target (`onap` makes `app` `onap/app`).
    pub namespace: Option<String>,
}

impl RegistryConfig {
    /// A configuration for `url` without credentials, with 60 s calls and 10 s connects.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            ca_pem: None,
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            namespace: None,
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())))
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// A client of one target registry; cheap to clone (clones share the connection pool and the
/// token cache).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The configured URL without a trailing `/`.
    base: String,
    origin: reqwest::Url,
    namespace: Option<String>,
    username: Option<String>,
    password: Option<String>,
    call_timeout: Duration,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.inner.base)
            .field("username", &self.inner.username)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

fn other(message: impl Into<String>) -> AdapterError {
    AdapterError::new(AdapterErrorKind::Other, message)
}

fn refused(message: impl Into<String>) -> AdapterError {
    AdapterError::new(AdapterErrorKind::Refused, message)
}

/// The body of a request: none, bytes (sent again after an auth challenge), or a stream (sent
/// once; `moved` counts its bytes for the idle timeout).
enum CallBody {
    Empty,
    Bytes(Bytes),
    Stream(Option<reqwest::Body>, Arc<AtomicU64>),
}

struct Call {
    method: Method,
    url: Url,
    scopes: Scopes,
    what: String,
    headers: HeaderMap,
    body: CallBody,
    /// The answer's body is streamed to the caller: the timeout bounds the headers only.
    streamed_answer: bool,
}

impl Call {
    fn new(method: Method, url: Url, scopes: Scopes, what: impl Into<String>) -> Self {
        Self {
            method,
            url,
            scopes,
            what: what.into(),
            headers: HeaderMap::new(),
            body: CallBody::Empty,
            streamed_answer: false,
        }
    }

    fn header(mut self, name: reqwest::header::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// Run `fut` while `moved` keeps changing: `None` once it stood still for a whole `idle`.
async fn idle_bounded<F: std::future::Future>(fut: F, moved: &AtomicU64, idle: Duration) -> Option<F::Output> {
    tokio::pin!(fut);
    let mut last = moved.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep(idle) => {
                let now = moved.load(Ordering::Relaxed);
                if now == last {
                    return None;
                }
                last = now;
            }
        }
    }
}

/// The body of an outgoing blob: the source's stream, held to its declared size, counting what
/// goes out.
struct Outgoing {
    inner: ByteStream,
    expected: u64,
    sent: u64,
    moved: Arc<AtomicU64>,
    progress: Option<mpsc::UnboundedSender<u64>>,
    /// Set when the source broke its promise (more or fewer bytes than declared).
    broken: Arc<Mutex<Option<String>>>,
    done: bool,
}

impl Outgoing {
    fn fail(&mut self, why: String) -> Poll<Option<std::io::Result<Bytes>>> {
        self.done = true;
        if let Ok(mut b) = self.broken.lock() {
            *b = Some(why.clone());
        }
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Stream for Outgoing {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                this.sent += n;
                if this.sent > this.expected {
                    return this.fail(format!(
                        "the source blob is longer than its declared {} bytes",
                        this.expected
                    ));
                }
                this.moved.fetch_add(n, Ordering::Relaxed);
                if let Some(p) = &this.progress {
                    let _ = p.send(n);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if this.sent != this.expected {
                    return this.fail(format!(
                        "the source blob ended after {} of its declared {} bytes",
                        this.sent, this.expected
                    ));
                }
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The first `cap` bytes of a body (the rest is not read), as far as they come with no pause
/// longer than `idle`.
async fn read_prefix(mut resp: reqwest::Response, cap: usize, idle: Duration) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < cap {
        match tokio::time::timeout(idle, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk[..chunk.len().min(cap - buf.len())]),
            _ => break,
        }
    }
    buf.freeze()
}

/// The error for an unexpected answer: its status and a bounded excerpt of its body (the OCI
/// error codes and messages when it is an OCI error document).
async fn error_of(resp: reqwest::Response, what: &str) -> AdapterError {
    let status = resp.status().as_u16();
    let body = read_prefix(resp, MAX_ERROR_BYTES, ERROR_BODY_WAIT).await;
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.get("errors").and_then(|e| e.as_array()).is_some() => v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e.get("code").and_then(|c| c.as_str()).unwrap_or(""),
                    e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).into_owned(),
    };
    AdapterError::from_status(status, what, &text)
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The digest of `bytes` with `algo`.
fn digest_with(algo: Algorithm, bytes: &[u8]) -> AdapterResult<Digest> {
    match algo {
        Algorithm::Sha256 => Ok(Digest::sha256(bytes)),
        Algorithm::Sha512 => {
            use sha2::Digest as _;
            let hex = hex::encode(sha2::Sha512::digest(bytes));
            Digest::parse(&format!("sha512:{hex}")).map_err(|e| other(e.to_string()))
        }
    }
}

/// The `rel="next"` target of a `Link` header, resolved against `base`.
fn next_link(resp: &reqwest::Response, base: &Url) -> Option<Url> {
    for value in resp.headers().get_all(LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let target = target.strip_prefix('<')?.strip_suffix('>')?;
                return base.join(target).ok();
            }
        }
    }
    None
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

impl RegistryClient {
    pub fn new(cfg: RegistryConfig) -> AdapterResult<Self> {
        let base = cfg.url.trim_end_matches('/').to_string();
        let origin = Url::parse(&base).map_err(|e| other(format!("registry URL {base:?}: {e}")))?;
        if !matches!(origin.scheme(), "http" | "https") || origin.host_str().is_none() {
            return Err(other(format!("registry URL {base:?} is not http(s)://host")));
        }
        if !origin.username().is_empty() || origin.password().is_some() {
            return Err(other(
                "the registry URL must not carry credentials: use username and password",
            ));
        }
        if origin.query().is_some() || origin.fragment().is_some() {
            return Err(other(format!("registry URL {base:?} has a query or fragment")));
        }
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err(other("a registry password needs a username"));
        }
        let namespace = match cfg.namespace.as_deref().map(|n| n.trim_matches('/')) {
            None | Some("") => None,
            Some(ns) => {
                RepoName::parse(ns).map_err(|e| other(format!("registry namespace: {e}")))?;
                Some(ns.to_string())
            }
        };
        let http = super::http_client("registry", cfg.connect_timeout, cfg.ca_pem.as_deref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                origin,
                namespace,
                username: cfg.username,
                password: cfg.password,
                call_timeout: cfg.call_timeout,
                auth: Mutex::new(AuthState::new()),
            }),
        })
    }

    /// The repository name at the target: the namespace prefix, then `repo`, validated.
    pub fn target_name(&self, repo: &str) -> AdapterResult<String> {
        let full = match &self.inner.namespace {
            Some(ns) => format!("{ns}/{repo}"),
            None => repo.to_string(),
        };
        RepoName::parse(&full)
            .map(|n| n.as_str().to_string())
            .map_err(|e| refused(e.to_string()))
    }

    fn endpoint(&self, path: &str) -> AdapterResult<Url> {
        Url::parse(&format!("{}{path}", self.inner.base)).map_err(|e| other(format!("{path}: {e}")))
    }

    fn scheme(&self) -> Scheme {
        self.inner
            .auth
            .lock()
            .map(|a| a.scheme.clone())
            .unwrap_or(Scheme::Unknown)
    }

    fn set_scheme(&self, scheme: Scheme) {
        if let Ok(mut a) = self.inner.auth.lock() {
            a.scheme = scheme;
        }
    }

    fn basic(&self) -> Option<String> {
        let user = self.inner.username.as_ref()?;
        let pass = self.inner.password.as_deref().unwrap_or("");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// The `Authorization` value for a call to `url` that is keyed by `key` and needs `want`
    /// (fetching a token when the registry uses tokens and none fresh covers `want`).
    async fn authorization(&self, key: &Scopes, want: &Scopes, url: &Url) -> AdapterResult<Option<String>> {
        if !same_origin(url, &self.inner.origin) {
            return Ok(None);
        }
        match self.scheme() {
            Scheme::Unknown | Scheme::Anonymous => Ok(None),
            Scheme::Basic => Ok(self.basic()),
            Scheme::Bearer { realm, service } => {
                let cached = self.inner.auth.lock().ok().and_then(|a| a.token(key, Instant::now()));
                if let Some(t) = cached {
                    if t.scopes.union(want) == t.scopes {
                        return Ok(Some(format!("Bearer {}", t.secret)));
                    }
                }
                let token = self.fetch_token(&realm, service.as_deref(), want).await?;
                let value = format!("Bearer {}", token.secret);
                if let Ok(mut a) = self.inner.auth.lock() {
                    a.store(key, token);
                }
                Ok(Some(value))
            }
        }
    }

    /// `GET realm?service=&scope=…` with the Basic credentials (anonymous without them).
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &Scopes) -> AdapterResult<Token> {
        let what = "token request";
        let mut url = Url::parse(realm).map_err(|e| other(format!("the registry's token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(other(format!("the registry's token realm {realm:?} is not http(s)")));
        }
        if self.inner.origin.scheme() == "https" && url.scheme() == "http" {
            return Err(other(format!(
                "the registry's token realm {realm:?} is plain HTTP: credentials are not sent there"
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes.strings() {
                q.append_pair("scope", &s);
            }
        }
        let mut req = self.inner.http.get(url).timeout(self.inner.call_timeout);
        if let Some(b) = self.basic() {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| AdapterError::transport(what, &e))?;
        if !resp.status().is_success() {
            let mut e = error_of(resp, what).await;
            if e.kind == AdapterErrorKind::Auth {
                e.message = format!("the token service refused the credentials: {}", e.message);
            }
            return Err(e);
        }
        let body = super::read_capped(resp, MAX_TOKEN_BYTES, what).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let a: Answer = serde_json::from_slice(&body).map_err(|e| other(format!("{what}: not a token answer: {e}")))?;
        let secret = a
            .token
            .filter(|t| !t.is_empty())
            .or(a.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| other(format!("{what}: the answer holds no token")))?;
        if secret.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(other(format!("{what}: the token is not printable ASCII")));
        }
        Ok(Token::new(secret, a.expires_in, scopes.clone(), Instant::now()))
    }

    /// `GET /v2/` without credentials, to learn from its challenge how the registry wants to
    /// be authenticated.
    async fn learn_scheme(&self) -> AdapterResult<()> {
        let what = "GET /v2/";
        let resp = self
            .inner
            .http
            .get(self.endpoint("/v2/")?)
            .timeout(self.inner.call_timeout)
            .send()
            .await
            .map_err(|e| AdapterError::transport(what, &e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            self.set_scheme(Scheme::Anonymous);
            return Ok(());
        }
        let challenges: Vec<_> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(realm) = b.param("realm").filter(|r| !r.is_empty()) {
                self.set_scheme(Scheme::Bearer {
                    realm: realm.to_string(),
                    service: b.param("service").map(str::to_string),
                });
                return Ok(());
            }
        }
        if challenges.iter().any(|c| c.scheme == "basic") && self.inner.username.is_some() {
            self.set_scheme(Scheme::Basic);
            return Ok(());
        }
        Err(error_of(resp, what).await)
    }

    /// Send `call`, answering the registry's auth challenges: any answer but a 401 is returned
    /// as it is, for the caller to judge.
    async fn send(&self, mut call: Call) -> AdapterResult<reqwest::Response> {
        if matches!(call.body, CallBody::Stream(..)) && self.scheme() == Scheme::Unknown {
            // Learn the scheme first: a streamed body cannot be sent twice.
            self.learn_scheme().await?;
        }
        let timeout = self.inner.call_timeout;
        let mut want = call.scopes.clone();
        let mut challenged = 0;
        loop {
            let authz = self.authorization(&call.scopes, &want, &call.url).await?;
            let mut rb = self
                .inner
                .http
                .request(call.method.clone(), call.url.clone())
                .headers(call.headers.clone());
            if let Some(a) = authz {
                let mut v = HeaderValue::from_str(&a).map_err(|_| other("an unusable Authorization value"))?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
            let timed_out = || {
                AdapterError::new(
                    AdapterErrorKind::Transient,
                    format!("{}: no answer within {} s", call.what, timeout.as_secs()),
                )
            };
            let resp = match &mut call.body {
                CallBody::Empty if call.streamed_answer => tokio::time::timeout(timeout, rb.send())
                    .await
                    .map_err(|_| timed_out())?,
                CallBody::Empty => rb.timeout(timeout).send().await,
                CallBody::Bytes(b) => rb.body(b.clone()).timeout(timeout).send().await,
                CallBody::Stream(body, moved) => {
                    let Some(body) = body.take() else {
                        return Err(AdapterError::new(
                            AdapterErrorKind::Auth,
                            format!(
                                "{}: the registry refused the credentials after the upload began",
                                call.what
                            ),
                        ));
                    };
                    let moved = moved.clone();
                    idle_bounded(rb.body(body).send(), &moved, timeout)
                        .await
                        .ok_or_else(|| {
                            AdapterError::new(
                                AdapterErrorKind::Transient,
                                format!("{}: no byte moved for {} s", call.what, timeout.as_secs()),
                            )
                        })?
                }
            }
            .map_err(|e| AdapterError::transport(&call.what, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                if self.scheme() == Scheme::Unknown {
                    self.set_scheme(Scheme::Anonymous);
                }
                return Ok(resp);
            }
            challenged += 1;
            let challenges: Vec<_> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            let bearer = challenges.iter().find(|c| c.scheme == "bearer");
            let basic = challenges.iter().any(|c| c.scheme == "basic");
            if let Some(b) = bearer {
                let realm = b
                    .param("realm")
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| other(format!("{}: a Bearer challenge without a realm", call.what)))?;
                let mut wider = want.clone();
                if let Some(s) = b.param("scope") {
                    wider.add_all(s);
                }
                let insufficient = b.param("error") == Some("insufficient_scope");
                // The first 401 is learnt from (scheme, scope; the token we sent, if any, is
                // dropped); a second one only when it asks for scope we did not ask for.
                let again = challenged == 1 || (challenged == 2 && insufficient && wider != want);
                if again {
                    self.set_scheme(Scheme::Bearer {
                        realm: realm.to_string(),
                        service: b.param("service").map(str::to_string),
                    });
                    if let Ok(mut a) = self.inner.auth.lock() {
                        a.forget(&call.scopes);
                    }
                    want = wider;
                    continue;
                }
            } else if basic && challenged == 1 && self.inner.username.is_some() && self.scheme() != Scheme::Basic {
                self.set_scheme(Scheme::Basic);
                continue;
            }
            let mut e = error_of(resp, &call.what).await;
            if self.inner.username.is_none() {
                e.message = format!("{} (no credentials are configured)", e.message);
            }
            return Err(e);
        }
    }

    /// `GET /v2/`: reachable, a registry, and the credentials work (a token service is asked
    /// for a token without scope).
    pub async fn check(&self) -> AdapterResult<()> {
        let url = self.endpoint("/v2/")?;
        let resp = self
            .send(Call::new(Method::GET, url, Scopes::none(), "GET /v2/"))
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(other("GET /v2/: HTTP 404: not an OCI registry"));
        }
        Err(error_of(resp, "GET /v2/").await)
    }

    /// Size of blob `digest` in `repo` (HEAD), `None` when it is not there.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> AdapterResult<Option<u64>> {
        let name = self.target_name(repo)?;
        let what = format!("HEAD blob {digest} in {name}");
        let url = self.endpoint(&format!("/v2/{name}/blobs/{digest}"))?;
        let resp = self
            .send(Call::new(
                Method::HEAD,
                url,
                Scopes::repository(&name, &["pull"]),
                &*what,
            ))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => header_str(&resp, CONTENT_LENGTH.as_str())
                .and_then(|l| l.parse().ok())
                .map(Some)
                .ok_or_else(|| other(format!("{what}: no Content-Length"))),
            _ => Err(error_of(resp, &what).await),
        }
    }

    /// Stream blob `digest` of `repo`, `None` when it is not there. A transfer where no byte
    /// moves for `call_timeout` ends with an error.
    pub async fn blob(&self, repo: &str, digest: &Digest) -> AdapterResult<Option<ByteStream>> {
        let Some(resp) = self.blob_get(repo, digest, None).await? else {
            return Ok(None);
        };
        let idle = self.inner.call_timeout;
        let stream = tokio_stream::StreamExt::timeout(resp.bytes_stream(), idle).map(|item| match item {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no byte moved")),
        });
        Ok(Some(Box::pin(stream)))
    }

    /// The first `len` bytes of blob `digest` (a Range request; a registry that ignores the
    /// range is read no further), `None` when it is not there.
    pub async fn blob_prefix(&self, repo: &str, digest: &Digest, len: usize) -> AdapterResult<Option<Bytes>> {
        if len == 0 {
            return Ok(self.blob_size(repo, digest).await?.map(|_| Bytes::new()));
        }
        let Some(resp) = self.blob_get(repo, digest, Some(len)).await? else {
            return Ok(None);
        };
        Ok(Some(read_prefix(resp, len, self.inner.call_timeout).await))
    }

    async fn blob_get(
        &self,
        repo: &str,
        digest: &Digest,
        prefix: Option<usize>,
    ) -> AdapterResult<Option<reqwest::Response>> {
        let name = self.target_name(repo)?;
        let what = format!("GET blob {digest} in {name}");
        let url = self.endpoint(&format!("/v2/{name}/blobs/{digest}"))?;
        let mut call = Call::new(Method::GET, url, Scopes::repository(&name, &["pull"]), &*what);
        if let Some(len) = prefix {
            let v = HeaderValue::from_str(&format!("bytes=0-{}", len - 1)).map_err(|e| other(e.to_string()))?;
            call = call.header(RANGE, v);
        }
        // The call timeout bounds the wait for the headers only: a large blob takes as long
        // as it takes (the stream has its own idle bound).
        call.streamed_answer = true;
        let resp = self.send(call).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            _ => Err(error_of(resp, &what).await),
        }
    }

    /// Upload blob `digest` of `size` bytes to `repo`: `POST` an upload, then one streamed
    /// `PUT ?digest=` (monolithic). The stream must yield exactly `size` bytes.
    pub async fn push_blob(&self, repo: &str, digest: &Digest, size: u64, body: ByteStream) -> AdapterResult<()> {
        self.push_blob_counted(repo, digest, size, body, None).await
    }

    pub(crate) async fn push_blob_counted(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: ByteStream,
        progress: Option<mpsc::UnboundedSender<u64>>,
    ) -> AdapterResult<()> {
        let name = self.target_name(repo)?;
        let location = self.start_upload(&name).await?;
        let mut put_url = location.clone();
        put_url.query_pairs_mut().append_pair("digest", digest.as_str());
        let what = format!("PUT blob {digest} to {name}");
        let moved = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(Mutex::new(None));
        let outgoing = Outgoing {
            inner: body,
            expected: size,
            sent: 0,
            moved: moved.clone(),
            progress,
            broken: broken.clone(),
            done: false,
        };
        let mut call = Call::new(
            Method::PUT,
            put_url,
            Scopes::repository(&name, &["pull", "push"]),
            &*what,
        )
        .header(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
        .header(CONTENT_LENGTH, HeaderValue::from(size));
        call.body = CallBody::Stream(Some(reqwest::Body::wrap_stream(outgoing)), moved);
        let result = self.send(call).await;
        let source_fault = broken.lock().ok().and_then(|b| b.clone());
        let resp = match (result, source_fault) {
            (_, Some(why)) => {
                self.cancel_upload(&name, location).await;
                return Err(other(format!("{what}: {why}")));
            }
            (Err(e), None) => {
                self.cancel_upload(&name, location).await;
                return Err(e);
            }
            (Ok(resp), None) => resp,
        };
        if !resp.status().is_success() {
            let e = error_of(resp, &what).await;
            self.cancel_upload(&name, location).await;
            return Err(e);
        }
        match header_str(&resp, DOCKER_CONTENT_DIGEST) {
            Some(d) if d != digest.as_str() => Err(other(format!("{what}: the registry stored it as {d}"))),
            _ => Ok(()),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`: the upload's URL (a relative `Location` resolved).
    async fn start_upload(&self, name: &str) -> AdapterResult<Url> {
        let what = format!("POST blob upload to {name}");
        let url = self.endpoint(&format!("/v2/{name}/blobs/uploads/"))?;
        let resp = self
            .send(
                Call::new(
                    Method::POST,
                    url.clone(),
                    Scopes::repository(name, &["pull", "push"]),
                    &*what,
                )
                .header(CONTENT_LENGTH, HeaderValue::from(0u64)),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(match resp.status() {
                s if s.is_success() => other(format!("{what}: HTTP {s} where 202 was expected")),
                _ => error_of(resp, &what).await,
            });
        }
        let location =
            header_str(&resp, LOCATION.as_str()).ok_or_else(|| other(format!("{what}: 202 without Location")))?;
        url.join(location)
            .map_err(|e| other(format!("{what}: Location {location:?}: {e}")))
    }

    /// Best effort: drop an upload session we will not finish (the registry expires it anyway).
    async fn cancel_upload(&self, name: &str, location: Url) {
        let call = Call::new(
            Method::DELETE,
            location,
            Scopes::repository(name, &["pull", "push"]),
            format!("DELETE blob upload in {name}"),
        );
        if let Err(e) = self.send(call).await {
            tracing::debug!(error = %e, "cancelling a blob upload");
        }
    }

    /// Cross-repository mount of blob `digest` from repository `from` (both under the
    /// namespace): `true` when mounted, `false` when the registry would not (then nothing was
    /// changed; push the blob instead).
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> AdapterResult<bool> {
        let name = self.target_name(repo)?;
        let from = self.target_name(from)?;
        let what = format!("mount blob {digest} from {from} to {name}");
        let mut url = self.endpoint(&format!("/v2/{name}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", &from);
        let scopes = Scopes::repository(&name, &["pull", "push"]).union(&Scopes::repository(&from, &["pull"]));
        let resp = self
            .send(Call::new(Method::POST, url.clone(), scopes, &*what).header(CONTENT_LENGTH, HeaderValue::from(0u64)))
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(loc) = header_str(&resp, LOCATION.as_str()).and_then(|l| url.join(l).ok()) {
                    self.cancel_upload(&name, loc).await;
                }
                Ok(false)
            }
            _ => Err(error_of(resp, &what).await),
        }
    }

    /// Manifest `reference` (tag or digest) of `repo`: its media type, the digest of the bytes
    /// received (with the reference's algorithm when it is a digest; the caller compares) and
    /// the bytes; `None` when it is not there.
    pub async fn manifest(&self, repo: &str, reference: &str) -> AdapterResult<Option<(String, Digest, Bytes)>> {
        let name = self.target_name(repo)?;
        let algo = Self::reference_algorithm(reference)?;
        let what = format!("GET manifest {name}:{reference}");
        let url = self.endpoint(&format!("/v2/{name}/manifests/{reference}"))?;
        let call = Call::new(Method::GET, url, Scopes::repository(&name, &["pull"]), &*what).header(ACCEPT, accept());
        let resp = self.send(call).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            _ => return Err(error_of(resp, &what).await),
        }
        let header_type = header_str(&resp, CONTENT_TYPE.as_str())
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| !c.is_empty());
        let body = super::read_capped(resp, MAX_MANIFEST_BYTES, &what).await?;
        let media_type = match header_type {
            Some(t) if MANIFEST_TYPES.contains(&t.as_str()) => t,
            other_type => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
                .or(other_type)
                .unwrap_or_default(),
        };
        let digest = digest_with(algo, &body)?;
        Ok(Some((media_type, digest, body)))
    }

    fn reference_algorithm(reference: &str) -> AdapterResult<Algorithm> {
        match Reference::parse(reference).map_err(|e| refused(e.to_string()))? {
            Reference::Digest(d) => Ok(d.algorithm()),
            Reference::Tag(_) => Ok(Algorithm::Sha256),
        }
    }

    /// Digest and size of manifest `reference` (HEAD), `None` when it is not there. A registry
    /// that does not say the digest is asked with GET.
    pub async fn manifest_head(&self, repo: &str, reference: &str) -> AdapterResult<Option<(Digest, u64)>> {
        let name = self.target_name(repo)?;
        Self::reference_algorithm(reference)?;
        let what = format!("HEAD manifest {name}:{reference}");
        let url = self.endpoint(&format!("/v2/{name}/manifests/{reference}"))?;
        let call = Call::new(Method::HEAD, url, Scopes::repository(&name, &["pull"]), &*what).header(ACCEPT, accept());
        let resp = self.send(call).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            _ => return Err(error_of(resp, &what).await),
        }
        let digest = header_str(&resp, DOCKER_CONTENT_DIGEST).and_then(|d| Digest::parse(d).ok());
        let size = header_str(&resp, CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<u64>().ok());
        match (digest, size) {
            (Some(d), Some(s)) => Ok(Some((d, s))),
            _ => Ok(self
                .manifest(repo, reference)
                .await?
                .map(|(_, d, body)| (d, body.len() as u64))),
        }
    }

    /// Put manifest `body` of `media_type` as `reference` (tag or digest) in `repo`; returns
    /// its digest (refused before sending when a digest reference does not match the bytes).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> AdapterResult<Digest> {
        let name = self.target_name(repo)?;
        let what = format!("PUT manifest {name}:{reference}");
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(refused(format!("{what}: larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let digest = match Reference::parse(reference).map_err(|e| refused(e.to_string()))? {
            Reference::Digest(d) => {
                let ours = digest_with(d.algorithm(), &body)?;
                if ours != d {
                    return Err(refused(format!("{what}: the bytes have digest {ours}")));
                }
                d
            }
            Reference::Tag(t) => {
                parse_tag(&t).map_err(|e| refused(e.to_string()))?;
                Digest::sha256(&body)
            }
        };
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| refused(format!("{what}: media type {media_type:?}")))?;
        let url = self.endpoint(&format!("/v2/{name}/manifests/{reference}"))?;
        let mut call = Call::new(Method::PUT, url, Scopes::repository(&name, &["pull", "push"]), &*what)
            .header(CONTENT_TYPE, content_type);
        call.body = CallBody::Bytes(body);
        let resp = self.send(call).await?;
        if !resp.status().is_success() {
            return Err(error_of(resp, &what).await);
        }
        if let Some(theirs) = header_str(&resp, DOCKER_CONTENT_DIGEST).and_then(|d| Digest::parse(d).ok()) {
            if theirs.algorithm() == digest.algorithm() && theirs != digest {
                return Err(other(format!(
                    "{what}: the registry stored it as {theirs}, not {digest}"
                )));
            }
        }
        Ok(digest)
    }

    /// Delete manifest `digest` of `repo` (and so every tag on it).
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> AdapterResult<()> {
        let name = self.target_name(repo)?;
        let what = format!("DELETE manifest {name}@{digest}");
        let url = self.endpoint(&format!("/v2/{name}/manifests/{digest}"))?;
        let resp = self
            .send(Call::new(
                Method::DELETE,
                url,
                Scopes::repository(&name, &["delete"]),
                &*what,
            ))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(error_of(resp, &what).await)
        }
    }

    /// Every repository at the target (`_catalog`, following `Link` pages); with a namespace,
    /// those below it, without the prefix.
    pub async fn repositories(&self) -> AdapterResult<Vec<String>> {
        let mut first = self.endpoint("/v2/_catalog")?;
        first.query_pairs_mut().append_pair("n", &PAGE_SIZE.to_string());
        let all = self
            .pages(first, Scopes::catalog(), "GET /v2/_catalog", "repositories")
            .await?
            .unwrap_or_default();
        Ok(match &self.inner.namespace {
            None => all,
            Some(ns) => {
                let prefix = format!("{ns}/");
                all.into_iter()
                    .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
                    .collect()
            }
        })
    }

    /// The tags of `repo` (following `Link` pages); none when the repository is unknown.
    pub async fn tags(&self, repo: &str) -> AdapterResult<Vec<String>> {
        let name = self.target_name(repo)?;
        let mut first = self.endpoint(&format!("/v2/{name}/tags/list"))?;
        first.query_pairs_mut().append_pair("n", &PAGE_SIZE.to_string());
        Ok(self
            .pages(
                first,
                Scopes::repository(&name, &["pull"]),
                &format!("GET tags of {name}"),
                "tags",
            )
            .await?
            .unwrap_or_default())
    }

    /// The string lists `field` of every page from `first` on; `None` when the first is 404.
    async fn pages(&self, first: Url, scopes: Scopes, what: &str, field: &str) -> AdapterResult<Option<Vec<String>>> {
        let mut out = Vec::new();
        let mut url = first;
        let mut seen = std::collections::HashSet::new();
        for page in 0..MAX_PAGES {
            seen.insert(url.to_string());
            let resp = self
                .send(Call::new(Method::GET, url.clone(), scopes.clone(), what))
                .await?;
            if page == 0 && resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(error_of(resp, what).await);
            }
            let next = next_link(&resp, &url);
            let body = super::read_capped(resp, MAX_PAGE_BYTES, what).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| other(format!("{what}: not JSON: {e}")))?;
            match v.get(field) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(items)) => {
                    for item in items {
                        let s = item
                            .as_str()
                            .ok_or_else(|| other(format!("{what}: {field} holds a non-string")))?;
                        out.push(s.to_string());
                    }
                }
                Some(_) => return Err(other(format!("{what}: {field} is not a list"))),
            }
            match next {
                Some(n) if !seen.contains(n.as_str()) => url = n,
                _ => return Ok(Some(out)),
            }
        }
        Err(other(format!("{what}: more than {MAX_PAGES} pages")))
    }
}

fn accept() -> HeaderValue {
    HeaderValue::from_static(
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.artifact.manifest.v1+json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_redacts() {
        let mut cfg = RegistryConfig::new("https://r.example");
        cfg.username = Some("bob".into());
        cfg.password = Some("hunter2-secret".into());
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("bob"));
        let client = RegistryClient::new(cfg).expect("client");
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn bad_configs() {
        for url in ["ftp://x", "not a url", "https://u:p@host", "http://h/?q=1"] {
            let e = RegistryClient::new(RegistryConfig::new(url)).expect_err(url);
            assert_eq!(e.kind, AdapterErrorKind::Other, "{url}");
            assert!(!e.message.contains(":p@"), "{}", e.message);
        }
        let mut cfg = RegistryConfig::new("http://h:5000/");
        cfg.namespace = Some("/onap/vims/".into());
        let c = RegistryClient::new(cfg).expect("client");
        assert_eq!(c.target_name("app").expect("name"), "onap/vims/app");
        assert_eq!(
            c.target_name("Bad").expect_err("upper case").kind,
            AdapterErrorKind::Refused
        );
        let mut cfg = RegistryConfig::new("http://h");
        cfg.ca_pem = Some("no pem here".into());
        assert!(RegistryClient::new(cfg).is_err());
    }

    #[test]
    fn digests() {
        let d = digest_with(Algorithm::Sha512, b"abc").expect("sha512");
        assert!(d.as_str().starts_with("sha512:ddaf35a1"), "{d}");
        assert_eq!(
            digest_with(Algorithm::Sha256, b"").expect("sha256"),
            Digest::sha256(b"")
        );
    }
}
