//! OpenStack Glance, Image API v2: the calls the distribution engine makes to a VIM.
//!
//! A [`GlanceClient`] talks to one Glance, either at a fixed URL ([`GlanceEndpoint::Direct`],
//! e.g. a Glance without auth, or behind a proxy that adds it) or through Keystone v3
//! ([`GlanceEndpoint::Keystone`]): the endpoint then comes from the token's catalog, the token is
//! reused until shortly before it expires, and a 401 from Glance re-authenticates once.
//!
//! Metadata calls have a deadline each ([`GlanceConfig::call_timeout`]); uploads and downloads
//! have none beyond the connect timeout (a large image may take hours). JSON answers are read
//! with a cap ([`MAX_JSON_BYTES`]) and listings follow at most [`MAX_PAGES`] pages.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use super::keystone::MAX_JSON_BYTES;
use super::keystone::{KeystoneAuth, KeystoneSession, Token};
use super::read_capped;
use super::{AdapterError, AdapterErrorKind, AdapterResult};

/// The most pages [`GlanceClient::list_images`] follows before giving up.
pub const MAX_PAGES: usize = 10_000;

/// The page size of [`GlanceClient::list_images`] unless [`GlanceClient::with_page_size`].
pub const DEFAULT_PAGE_SIZE: u32 = 200;

const PATCH_CONTENT_TYPE: &str = "application/openstack-images-v2.1-json-patch";

/// Where Glance is.
#[derive(Clone, Debug)]
pub enum GlanceEndpoint {
    /// This URL (`http://glance:9292`, with or without a path prefix), no token.
    Direct { url: String },
    /// The `image` endpoint of the Keystone catalog, with a token.
    Keystone(KeystoneAuth),
}

/// How to reach one Glance.
#[derive(Clone, Debug)]
pub struct GlanceConfig {
    pub endpoint: GlanceEndpoint,
    /// The deadline of each metadata call (and of a Keystone authentication).
    pub call_timeout: Duration,
    /// The deadline of a TCP (and TLS) connect; the only deadline of uploads and downloads.
    pub connect_timeout: Duration,
    /// An extra trusted root certificate (PEM), for a Glance or Keystone with a private CA.
    pub ca_pem: Option<String>,
}

impl GlanceConfig {
    /// A config with 30 s per call and 10 s per connect, no extra CA.
    pub fn new(endpoint: GlanceEndpoint) -> Self {
        Self {
            endpoint,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ca_pem: None,
        }
    }
}

/// What [`GlanceClient::check`] found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GlanceHealth {
    /// The Glance URL used (from the catalog with Keystone).
    pub endpoint: String,
    /// `GET /v2/info/import`: e.g. `glance-direct`, `web-download`.
    pub import_methods: Vec<String>,
    /// `image_size_total` limit minus usage, when Glance reports a finite limit.
    pub free_bytes: Option<u64>,
    pub image_size_limit: Option<u64>,
    pub image_size_used: Option<u64>,
    pub image_count_limit: Option<u64>,
    pub image_count_used: Option<u64>,
}

/// An image as Glance shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GlanceImage {
    pub id: String,
    pub name: Option<String>,
    /// `queued`, `saving`, `uploading`, `importing`, `active`, `killed`, `deleted`,
    /// `pending_delete`, `deactivated`.
    pub status: String,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// MD5 of the data (hex).
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub visibility: String,
    /// GiB.
    pub min_disk: u64,
    /// MiB.
    pub min_ram: u64,
    pub protected: bool,
    pub tags: Vec<String>,
    pub owner: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Every other top-level field whose value is a string: the custom properties (and
    /// Glance's own `os_glance_*` and `stores`). Links (`self`, `file`, `schema`) and
    /// `direct_url` are left out.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Top-level fields of a Glance image that are not custom properties.
const CORE_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "disk_format",
    "container_format",
    "visibility",
    "min_disk",
    "min_ram",
    "protected",
    "tags",
    "owner",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "os_hidden",
];

impl GlanceImage {
    /// The image of a Glance JSON object.
    pub fn from_json(v: &Value) -> AdapterResult<Self> {
        let obj = v.as_object().ok_or_else(|| bad_answer("an image is not an object"))?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| obj.get(k).and_then(Value::as_u64);
        let id = s("id").ok_or_else(|| bad_answer("an image has no id"))?;
        let properties = obj
            .iter()
            .filter(|(k, _)| !CORE_FIELDS.contains(&k.as_str()))
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        Ok(Self {
            id,
            name: s("name"),
            status: s("status").unwrap_or_default(),
            size: n("size"),
            virtual_size: n("virtual_size"),
            checksum: s("checksum"),
            os_hash_algo: s("os_hash_algo"),
            os_hash_value: s("os_hash_value"),
            disk_format: s("disk_format"),
            container_format: s("container_format"),
            visibility: s("visibility").unwrap_or_default(),
            min_disk: n("min_disk").unwrap_or(0),
            min_ram: n("min_ram").unwrap_or(0),
            protected: obj.get("protected").and_then(Value::as_bool).unwrap_or(false),
            tags: obj
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            owner: s("owner"),
            created_at: s("created_at"),
            updated_at: s("updated_at"),
            properties,
        })
    }
}

/// An image to create (`POST /v2/images`); the data follows with
/// [`GlanceClient::upload`] or [`GlanceClient::import_web_download`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewGlanceImage {
    pub name: String,
    /// `qcow2`, `raw`, `vmdk`, `iso`, ...
    pub disk_format: String,
    /// `bare` usually.
    pub container_format: String,
    /// `private`, `shared`, `community` or `public`.
    pub visibility: String,
    /// GiB.
    pub min_disk: u64,
    /// MiB.
    pub min_ram: u64,
    pub tags: Vec<String>,
    /// Custom properties (Glance takes strings only). Keys starting `os_glance_` (reserved by
    /// Glance) and the names of core fields are refused before anything is sent.
    pub properties: BTreeMap<String, String>,
}

impl Default for NewGlanceImage {
    fn default() -> Self {
        Self {
            name: String::new(),
            disk_format: "qcow2".to_string(),
            container_format: "bare".to_string(),
            visibility: "private".to_string(),
            min_disk: 0,
            min_ram: 0,
            tags: Vec::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl NewGlanceImage {
    fn body(&self) -> AdapterResult<Value> {
        let mut obj = Map::new();
        obj.insert("name".into(), json!(self.name));
        obj.insert("disk_format".into(), json!(self.disk_format));
        obj.insert("container_format".into(), json!(self.container_format));
        obj.insert("visibility".into(), json!(self.visibility));
        obj.insert("min_disk".into(), json!(self.min_disk));
        obj.insert("min_ram".into(), json!(self.min_ram));
        obj.insert("tags".into(), json!(self.tags));
        for (k, v) in &self.properties {
            check_property_key(k)?;
            obj.insert(k.clone(), json!(v));
        }
        Ok(Value::Object(obj))
    }
}

fn check_property_key(k: &str) -> AdapterResult<()> {
    if k.starts_with("os_glance_") {
        return Err(AdapterError::new(
            AdapterErrorKind::Refused,
            format!("glance: property \"{k}\": the prefix os_glance_ is reserved by Glance"),
        ));
    }
    if k.is_empty() || CORE_FIELDS.contains(&k) || k == "stores" {
        return Err(AdapterError::new(
            AdapterErrorKind::Refused,
            format!("glance: property \"{k}\" is not a custom property name"),
        ));
    }
    Ok(())
}

/// One JSON-patch operation of [`GlanceClient::update`]; `path` is e.g. `/name`, `/tags`,
/// `/my_property`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
}

impl PatchOp {
    fn path(&self) -> &str {
        match self {
            Self::Add { path, .. } | Self::Replace { path, .. } | Self::Remove { path } => path,
        }
    }
}

/// A byte stream of an image's data.
pub type ImageStream = BoxStream<'static, std::io::Result<Bytes>>;

enum Target {
    Direct(String),
    Keystone(Box<KeystoneSession>),
}

struct Inner {
    http: reqwest::Client,
    call_timeout: Duration,
    target: Target,
}

/// A client of one Glance; cheap to clone (the connection pool and token are shared).
#[derive(Clone)]
pub struct GlanceClient {
    inner: Arc<Inner>,
    page_size: u32,
}

impl fmt::Debug for GlanceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("GlanceClient");
        match &self.inner.target {
            Target::Direct(url) => d.field("endpoint", url),
            Target::Keystone(s) => d.field("keystone", s),
        };
        d.field("page_size", &self.page_size).finish()
    }
}

/// What one request sends, rebuilt for a retry after re-authentication.
type Build<'a> = &'a (dyn Fn(&reqwest::Client, &str) -> RequestBuilder + Send + Sync);

impl GlanceClient {
    pub fn new(cfg: GlanceConfig) -> AdapterResult<Self> {
        let http = super::http_client("glance", cfg.connect_timeout, cfg.ca_pem.as_deref())?;
        let target = match cfg.endpoint {
            GlanceEndpoint::Direct { url } => {
                let url = url.trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(AdapterError::new(
                        AdapterErrorKind::Other,
                        format!("glance: endpoint {url:?} is not an http(s) URL"),
                    ));
                }
                Target::Direct(url)
            }
            GlanceEndpoint::Keystone(auth) => {
                Target::Keystone(Box::new(KeystoneSession::new(auth, http.clone(), cfg.call_timeout)))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                call_timeout: cfg.call_timeout,
                target,
            }),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// The same client listing `n` images per page (1..=1000; Glance's own cap is usually 1000).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 1000);
        self
    }

    /// How many times this client (and its clones) asked Keystone for a token; 0 when direct.
    pub fn keystone_authentications(&self) -> u64 {
        match &self.inner.target {
            Target::Direct(_) => 0,
            Target::Keystone(s) => s.authentications(),
        }
    }

    /// The Glance URL (authenticating first with Keystone), without a trailing slash.
    pub async fn endpoint(&self) -> AdapterResult<String> {
        Ok(self.base().await?.0)
    }

    async fn base(&self) -> AdapterResult<(String, Option<Token>)> {
        match &self.inner.target {
            Target::Direct(url) => Ok((url.clone(), None)),
            Target::Keystone(s) => {
                let t = s.token().await?;
                Ok((t.image_endpoint.clone(), Some(t)))
            }
        }
    }

    /// Send the request `build` makes for the endpoint (`build(client, base_url)`), with the
    /// token; on a 401 with Keystone, authenticate again and send it once more.
    async fn send(&self, what: &str, build: Build<'_>, timeout: bool) -> AdapterResult<Response> {
        let mut retried = false;
        loop {
            let (base, token) = self.base().await?;
            let mut req = build(&self.inner.http, &base);
            if timeout {
                req = req.timeout(self.inner.call_timeout);
            }
            if let Some(t) = &token {
                req = req.header("X-Auth-Token", auth_header(t)?);
            }
            let resp = req.send().await.map_err(|e| AdapterError::transport(what, &e))?;
            if resp.status().as_u16() == 401 && !retried {
                if let (Target::Keystone(s), Some(t)) = (&self.inner.target, &token) {
                    s.invalidate(t).await;
                    retried = true;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// A metadata call expecting one of `ok` and a JSON body (or none when `ok` is 204).
    async fn call_json(&self, what: &str, ok: &[u16], build: Build<'_>) -> AdapterResult<Value> {
        let resp = self.send(what, build, true).await?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_JSON_BYTES, what).await?;
        if !ok.contains(&status) {
            return Err(AdapterError::from_status(status, what, &String::from_utf8_lossy(&body)));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| bad_answer(&format!("{what}: the answer is not JSON: {e}")))
    }

    /// Authenticate (with Keystone), find the endpoint, list one image, read the import methods
    /// and, when Glance answers it, the quota usage.
    pub async fn check(&self) -> AdapterResult<GlanceHealth> {
        let endpoint = self.endpoint().await?;
        self.call_json("glance: GET /v2/images?limit=1", &[200], &|c, b| {
            c.get(format!("{b}/v2/images?limit=1"))
        })
        .await?;
        let info = self
            .call_json("glance: GET /v2/info/import", &[200], &|c, b| {
                c.get(format!("{b}/v2/info/import"))
            })
            .await?;
        let import_methods = info["import-methods"]["value"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        // /v2/info/usage is newer than the rest (Image API 2.15); a Glance without it is fine.
        let usage = match self
            .call_json("glance: GET /v2/info/usage", &[200], &|c, b| {
                c.get(format!("{b}/v2/info/usage"))
            })
            .await
        {
            Ok(u) => u["usage"].clone(),
            Err(e) if matches!(e.status, Some(404) | Some(403) | Some(501)) => Value::Null,
            Err(e) => return Err(e),
        };
        // A negative limit means unlimited.
        let limit = |k: &str| usage[k]["limit"].as_u64();
        let used = |k: &str| usage[k]["usage"].as_u64();
        let image_size_limit = limit("image_size_total");
        let image_size_used = used("image_size_total");
        Ok(GlanceHealth {
            endpoint,
            import_methods,
            free_bytes: image_size_limit.map(|l| l.saturating_sub(image_size_used.unwrap_or(0))),
            image_size_limit,
            image_size_used,
            image_count_limit: limit("image_count_total"),
            image_count_used: used("image_count_total"),
        })
    }

    /// `GET /v2/images` with `query` as filters (`name`, `status`, `tag`, `os_hash_value`, any
    /// custom property, ...), following `next` links; a `limit` in `query` is ignored (the page
    /// size is [`DEFAULT_PAGE_SIZE`] or [`Self::with_page_size`]).
    pub async fn list_images(&self, query: &[(&str, &str)]) -> AdapterResult<Vec<GlanceImage>> {
        const WHAT: &str = "glance: GET /v2/images";
        // The serializer is not Send: it must not live across an await.
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in query.iter().filter(|(k, _)| *k != "limit" && *k != "marker") {
                q.append_pair(k, v);
            }
            q.append_pair("limit", &self.page_size.to_string());
            q.finish()
        };
        // The path and query of the page, relative to the endpoint.
        let mut next = format!("/v2/images?{query}");
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .call_json(WHAT, &[200], &|c, b| c.get(format!("{b}{next}")))
                .await?;
            let images = page["images"]
                .as_array()
                .ok_or_else(|| bad_answer(&format!("{WHAT}: the answer has no \"images\"")))?;
            for i in images {
                out.push(GlanceImage::from_json(i)?);
            }
            match page["next"].as_str() {
                Some(n) if !images.is_empty() => next = relative_next(n)?,
                _ => return Ok(out),
            }
        }
        Err(AdapterError::new(
            AdapterErrorKind::Other,
            format!("{WHAT}: more than {MAX_PAGES} pages of {} images", self.page_size),
        ))
    }

    pub async fn get_image(&self, id: &str) -> AdapterResult<Option<GlanceImage>> {
        let id = seg(id)?;
        let what = format!("glance: GET /v2/images/{id}");
        match self
            .call_json(&what, &[200], &|c, b| c.get(format!("{b}/v2/images/{id}")))
            .await
        {
            Ok(v) => Ok(Some(GlanceImage::from_json(&v)?)),
            Err(e) if e.kind == AdapterErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_image(&self, req: &NewGlanceImage) -> AdapterResult<GlanceImage> {
        let body = req.body()?;
        let v = self
            .call_json("glance: POST /v2/images", &[201], &|c, b| {
                c.post(format!("{b}/v2/images")).json(&body)
            })
            .await?;
        GlanceImage::from_json(&v)
    }

    /// `PUT /v2/images/{id}/file` (`application/octet-stream`), streamed; `size` becomes the
    /// `Content-Length` (chunked without it). No deadline but the connect timeout.
    ///
    /// The body cannot be sent twice: when Keystone's token is refused (401), the token is
    /// dropped and the error is [`AdapterErrorKind::Transient`] if a fresh token could be had
    /// (the image is untouched: Glance refuses before reading the data), so a retry succeeds.
    pub async fn upload(&self, id: &str, body: reqwest::Body, size: Option<u64>) -> AdapterResult<()> {
        let id = seg(id)?;
        let what = format!("glance: PUT /v2/images/{id}/file");
        let (base, token) = self.base().await?;
        let mut req = self
            .inner
            .http
            .put(format!("{base}/v2/images/{id}/file"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(n) = size {
            req = req.header(CONTENT_LENGTH, n);
        }
        if let Some(t) = &token {
            req = req.header("X-Auth-Token", auth_header(t)?);
        }
        let resp = req.send().await.map_err(|e| AdapterError::transport(&what, &e))?;
        let status = resp.status().as_u16();
        let text = read_capped(resp, MAX_JSON_BYTES, &what).await?;
        if status == 204 || status == 200 {
            return Ok(());
        }
        let mut err = AdapterError::from_status(status, &what, &String::from_utf8_lossy(&text));
        if let (401, Target::Keystone(s), Some(t)) = (status, &self.inner.target, &token) {
            s.invalidate(t).await;
            if s.token().await.is_ok() {
                err.kind = AdapterErrorKind::Transient;
                err.message.push_str(" (the token expired; a new one is ready, retry)");
            }
        }
        Err(err)
    }

    /// `POST /v2/images/{id}/import` with the method `web-download` from `url`: Glance fetches
    /// it in the background (poll [`Self::get_image`]; on failure see [`Self::import_failure`]).
    pub async fn import_web_download(&self, id: &str, url: &str) -> AdapterResult<()> {
        let id = seg(id)?;
        let what = format!("glance: POST /v2/images/{id}/import");
        let body = json!({"method": {"name": "web-download", "uri": url}});
        self.call_json(&what, &[202], &|c, b| {
            c.post(format!("{b}/v2/images/{id}/import")).json(&body)
        })
        .await?;
        Ok(())
    }

    /// Why the image's last import failed: its newest import task (`GET /v2/images/{id}/tasks`)
    /// when that task failed, described with its method, source, message and result; `None`
    /// when the newest task did not fail (or there is none). Glance's message is often only
    /// "Task failed due to Internal Error" (the cause, e.g. the source's 404, is in its log).
    pub async fn import_failure(&self, id: &str) -> AdapterResult<Option<String>> {
        let id = seg(id)?;
        let what = format!("glance: GET /v2/images/{id}/tasks");
        let v = self
            .call_json(&what, &[200], &|c, b| c.get(format!("{b}/v2/images/{id}/tasks")))
            .await?;
        let tasks = v["tasks"]
            .as_array()
            .ok_or_else(|| bad_answer(&format!("{what}: the answer has no \"tasks\"")))?;
        let newest = tasks.iter().max_by(|a, b| {
            let key = |t: &Value| t["created_at"].as_str().unwrap_or("").to_string();
            key(a).cmp(&key(b))
        });
        Ok(newest.filter(|t| t["status"] == "failure").map(describe_failed_task))
    }

    /// `PATCH /v2/images/{id}` (`application/openstack-images-v2.1-json-patch`). Adding or
    /// replacing an `/os_glance_*` path is refused locally.
    pub async fn update(&self, id: &str, ops: &[PatchOp]) -> AdapterResult<GlanceImage> {
        let id = seg(id)?;
        for op in ops {
            if let Some(k) = op.path().strip_prefix('/') {
                if k.starts_with("os_glance_") && !matches!(op, PatchOp::Remove { .. }) {
                    check_property_key(k)?;
                }
            }
        }
        let what = format!("glance: PATCH /v2/images/{id}");
        let body = serde_json::to_vec(ops).map_err(|e| bad_answer(&format!("{what}: cannot encode the patch: {e}")))?;
        let v = self
            .call_json(&what, &[200], &|c, b| {
                c.request(Method::PATCH, format!("{b}/v2/images/{id}"))
                    .header(CONTENT_TYPE, PATCH_CONTENT_TYPE)
                    .body(body.clone())
            })
            .await?;
        GlanceImage::from_json(&v)
    }

    /// `DELETE /v2/images/{id}`; an image already gone is fine.
    pub async fn delete_image(&self, id: &str) -> AdapterResult<()> {
        let id = seg(id)?;
        let what = format!("glance: DELETE /v2/images/{id}");
        match self
            .call_json(&what, &[204, 200], &|c, b| c.delete(format!("{b}/v2/images/{id}")))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == AdapterErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v2/images/{id}/file`: the size when Glance says it, and the data as it streams (no
    /// deadline but the connect timeout). An image without data (queued) is
    /// [`AdapterErrorKind::Conflict`].
    pub async fn download(&self, id: &str) -> AdapterResult<(Option<u64>, ImageStream)> {
        let id = seg(id)?;
        let what = format!("glance: GET /v2/images/{id}/file");
        let resp = self
            .send(&what, &|c, b| c.get(format!("{b}/v2/images/{id}/file")), false)
            .await?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                let size = resp.content_length();
                let stream = resp.bytes_stream().map_err(std::io::Error::other).boxed();
                Ok((size, stream))
            }
            204 => Err(AdapterError {
                kind: AdapterErrorKind::Conflict,
                message: format!("{what}: the image has no data yet"),
                status: Some(204),
            }),
            _ => {
                let text = read_capped(resp, 64 << 10, &what).await.unwrap_or_default();
                Err(AdapterError::from_status(
                    status,
                    &what,
                    &String::from_utf8_lossy(&text),
                ))
            }
        }
    }
}

/// A failed import task in a sentence: its id, method and source, Glance's message (often only
/// "Task failed due to Internal Error"; the cause is in Glance's log) and result.
fn describe_failed_task(t: &Value) -> String {
    let mut out = format!("import task {}", t["id"].as_str().unwrap_or("?"));
    let method = &t["input"]["import_req"]["method"];
    if let Some(name) = method["name"].as_str() {
        out.push_str(&format!(" ({name}"));
        if let Some(uri) = method["uri"].as_str() {
            out.push_str(&format!(" of {uri}"));
        }
        out.push(')');
    }
    out.push_str(" failed");
    match t["message"].as_str().map(str::trim) {
        Some(m) if !m.is_empty() => out.push_str(&format!(": {m}")),
        _ => out.push_str(" without a message"),
    }
    match &t["result"] {
        Value::Null => {}
        r => out.push_str(&format!("; result: {r}")),
    }
    out.chars().take(1000).collect()
}

fn auth_header(t: &Token) -> AdapterResult<HeaderValue> {
    let mut v = HeaderValue::from_str(&t.value).map_err(|_| {
        AdapterError::new(
            AdapterErrorKind::Other,
            "keystone: the token is not a valid header value",
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn bad_answer(what: &str) -> AdapterError {
    AdapterError::new(AdapterErrorKind::Other, what.to_string())
}

/// An image id as one path segment: Glance ids are UUIDs; anything that could change the path
/// is refused.
fn seg(id: &str) -> AdapterResult<&str> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || id == "."
        || id == ".."
    {
        return Err(AdapterError::new(
            AdapterErrorKind::Refused,
            format!("glance: {id:?} is not an image id"),
        ));
    }
    Ok(id)
}

/// A `next` link as the path and query after the endpoint: Glance answers `/v2/images?...`
/// (relative to its root, without a proxy's path prefix) or, behind some proxies, a full URL.
fn relative_next(next: &str) -> AdapterResult<String> {
    let at = next
        .find("/v2/images")
        .ok_or_else(|| bad_answer(&format!("glance: unexpected next link {next:?}")))?;
    Ok(next[at..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_properties_are_the_other_strings() {
        let v = json!({"id": "i1", "name": "n", "status": "active", "size": 5, "visibility": "private",
            "min_disk": 1, "min_ram": 0, "protected": false, "tags": ["a"], "self": "/v2/images/i1",
            "file": "/v2/images/i1/file", "schema": "/v2/schemas/image", "onap_id": "42",
            "stores": "fs", "os_hidden": false, "checksum": null, "locations": []});
        let i = GlanceImage::from_json(&v).ok();
        let i = i.as_ref();
        assert_eq!(i.map(|i| i.size), Some(Some(5)));
        assert_eq!(i.map(|i| i.tags.clone()), Some(vec!["a".to_string()]));
        let props: Vec<(String, String)> = i
            .map(|i| i.properties.clone().into_iter().collect())
            .unwrap_or_default();
        assert_eq!(
            props,
            vec![("onap_id".into(), "42".into()), ("stores".into(), "fs".into())]
        );
    }

    #[test]
    fn reserved_properties_are_refused() {
        let mut req = NewGlanceImage {
            name: "x".into(),
            ..Default::default()
        };
        req.properties.insert("os_glance_import_task".into(), "x".into());
        assert_eq!(req.body().err().map(|e| e.kind), Some(AdapterErrorKind::Refused));
        req.properties.clear();
        req.properties.insert("status".into(), "active".into());
        assert_eq!(req.body().err().map(|e| e.kind), Some(AdapterErrorKind::Refused));
        req.properties.clear();
        req.properties.insert("onap_image_id".into(), "1".into());
        assert_eq!(req.body().ok().map(|b| b["onap_image_id"].clone()), Some(json!("1")));
    }

    #[test]
    fn patch_ops_encode_as_json_patch() {
        let ops = vec![
            PatchOp::Replace {
                path: "/name".into(),
                value: json!("n"),
            },
            PatchOp::Remove { path: "/x".into() },
        ];
        assert_eq!(
            serde_json::to_value(&ops).ok(),
            Some(json!([{"op": "replace", "path": "/name", "value": "n"}, {"op": "remove", "path": "/x"}]))
        );
    }

    #[test]
    fn failed_tasks_are_described() {
        let t = json!({"id": "t1", "status": "failure", "result": null,
            "message": "Task failed due to Internal Error",
            "input": {"import_req": {"method": {"name": "web-download", "uri": "http://h/x"}}}});
        assert_eq!(
            describe_failed_task(&t),
            "import task t1 (web-download of http://h/x) failed: Task failed due to Internal Error"
        );
        assert_eq!(
            describe_failed_task(&json!({"id": "t2"})),
            "import task t2 failed without a message"
        );
    }

    #[test]
    fn ids_and_next_links() {
        assert!(seg("0b1c-uuid").is_ok());
        assert!(seg("../x").is_err() && seg("a/b").is_err() && seg("").is_err() && seg("..").is_err());
        assert_eq!(
            relative_next("/v2/images?marker=a&limit=2").ok().as_deref(),
            Some("/v2/images?marker=a&limit=2")
        );
        assert_eq!(
            relative_next("https://h/image/v2/images?marker=a").ok().as_deref(),
            Some("/v2/images?marker=a")
        );
        assert!(relative_next("/elsewhere").is_err());
    }
}
