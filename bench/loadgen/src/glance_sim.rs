//! `glance-sim`: many simulated OpenStack Glance endpoints (Image API v2) in one process, on
//! one port, for the distribution engine's scale benchmark (`bench/scale.sh`).
//!
//! Endpoint `i` lives under `http://ADDR/g/<i>` with its own image table. It answers the
//! calls Image Manager's Glance client makes (`src/adapters/glance.rs`): list (filters,
//! `limit`/`marker` pages with a `next` link relative to the endpoint, as Glance writes it),
//! get, create, `PUT /file`, `POST /import` (web-download, fetched by a plain GET in the
//! background), the image's tasks, JSON-patch updates, delete, `/v2/info/import`,
//! `/v2/info/usage` and the file download.
//!
//! No image bytes are kept in memory: uploads and web-downloads are hashed (sha512 and md5)
//! and counted as they stream, so an image becomes `active` with Glance's `size`,
//! `checksum`, `os_hash_algo` and `os_hash_value`. With `--data-dir` the bytes are also
//! written to files there, and only then can `GET /file` send them back.
//!
//! `--slow I` makes endpoint I read uploads and web-downloads, and send downloads, at
//! `--slow-bytes-per-sec` (1 MiB/s) through a token bucket. `GET /stats` answers the
//! counters as JSON (`?reset_peak=1` restarts the peak of transfers at once); SIGTERM or
//! SIGINT prints the totals on stdout and stops.

// Handlers return a ready error response as their Err (a cold path; boxing buys nothing).
#![allow(clippy::result_large_err)]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use md5::Md5;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub struct SimArgs {
    pub listen: String,
    pub endpoints: usize,
    pub slow: Vec<usize>,
    pub slow_bytes_per_sec: u64,
    pub threads: usize,
    pub data_dir: Option<PathBuf>,
    /// `image_size_total` limit of each endpoint (bytes); None: unlimited (-1).
    pub quota_bytes: Option<u64>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

const PATCH_TYPES: [&str; 2] = [
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
];
const DISK_FORMATS: [&str; 11] = [
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
const CONTAINER_FORMATS: [&str; 8] = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"];
const VISIBILITIES: [&str; 4] = ["public", "private", "shared", "community"];
/// Fields nobody may set or change (Glance answers 403).
const READ_ONLY: [&str; 14] = [
    "id",
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
];
const OWNER: &str = "5a1d0f6ec1f54b7c8c5d9a3b1e2f4a6b";
/// Largest JSON request body read.
const MAX_JSON: usize = 1 << 20;
const PAGE_DEFAULT: usize = 25;
const PAGE_MAX: usize = 1000;

// ---------------------------------------------------------------- small helpers

fn uuid4() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Now as Glance writes times: `2026-12-04T18:41:27Z`.
fn now_iso() -> String {
    iso(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

fn iso(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_resp(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error as Glance (webob) writes it: a short HTML page.
fn err(status: StatusCode, detail: &str) -> Response<Body> {
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let page = format!(
        "<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n  {}<br /><br />\n\n\n\n </body>\n</html>",
        detail.replace('<', "&lt;")
    );
    let mut r = Response::new(full(page));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=UTF-8"));
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("0");
                out.push(u8::from_str_radix(h, 16).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (pct_decode(k), pct_decode(v)),
            None => (pct_decode(kv), String::new()),
        })
        .collect()
}

/// A token bucket: `take(n)` waits until n more bytes fit the rate (a burst of 1/4 s).
pub struct Bucket {
    rate: f64,
    next: Mutex<Instant>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, n: usize) {
        let delay = {
            let Ok(mut next) = self.next.lock() else { return };
            let now = Instant::now();
            let burst = Duration::from_millis(250);
            let start = (*next).max(now.checked_sub(burst).unwrap_or(now));
            *next = start + Duration::from_secs_f64(n as f64 / self.rate);
            next.saturating_duration_since(now)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A response body fed by a channel (the file download).
struct ChanBody(mpsc::Receiver<std::io::Result<Bytes>>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

// ---------------------------------------------------------------- state

#[derive(Clone)]
struct Task {
    id: String,
    status: &'static str,
    message: String,
    uri: String,
    created_at: String,
    updated_at: String,
    result: Value,
}

impl Task {
    fn json(&self, image_id: &str) -> Value {
        json!({
            "id": self.id, "type": "api_image_import", "status": self.status, "owner": OWNER,
            "image_id": image_id, "user_id": OWNER, "request_id": format!("req-{}", self.id),
            "input": {"image_id": image_id, "import_req": {"method": {"name": "web-download", "uri": self.uri}},
                      "backend": null},
            "result": self.result, "message": self.message,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "expires_at": null, "schema": "/v2/schemas/task",
        })
    }
}

#[derive(Clone)]
struct Image {
    seq: u64,
    id: String,
    name: Option<String>,
    status: &'static str,
    visibility: String,
    protected: bool,
    os_hidden: bool,
    disk_format: Option<String>,
    container_format: Option<String>,
    min_disk: u64,
    min_ram: u64,
    tags: Vec<String>,
    props: BTreeMap<String, String>,
    size: Option<u64>,
    checksum: Option<String>,
    sha512: Option<String>,
    created_at: String,
    updated_at: String,
    tasks: Vec<Task>,
    /// Which transfer (upload or import) may finish this image; a delete or a new transfer
    /// makes an older one's result void.
    transfer: u64,
}

impl Image {
    fn json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.props {
            m.insert(k.clone(), json!(v));
        }
        let fields = [
            ("id", json!(self.id)),
            ("name", json!(self.name)),
            ("status", json!(self.status)),
            ("visibility", json!(self.visibility)),
            ("protected", json!(self.protected)),
            ("os_hidden", json!(self.os_hidden)),
            ("owner", json!(OWNER)),
            ("disk_format", json!(self.disk_format)),
            ("container_format", json!(self.container_format)),
            ("min_disk", json!(self.min_disk)),
            ("min_ram", json!(self.min_ram)),
            ("size", json!(self.size)),
            ("virtual_size", Value::Null),
            ("checksum", json!(self.checksum)),
            ("os_hash_algo", json!(self.sha512.as_ref().map(|_| "sha512"))),
            ("os_hash_value", json!(self.sha512)),
            ("tags", json!(self.tags)),
            ("created_at", json!(self.created_at)),
            ("updated_at", json!(self.updated_at)),
            ("self", json!(format!("/v2/images/{}", self.id))),
            ("file", json!(format!("/v2/images/{}/file", self.id))),
            ("schema", json!("/v2/schemas/image")),
        ];
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    }

    /// The value of a filter key, as Glance compares it (strings).
    fn field(&self, k: &str) -> Option<String> {
        match k {
            "id" => Some(self.id.clone()),
            "name" => self.name.clone(),
            "status" => Some(self.status.to_string()),
            "visibility" => Some(self.visibility.clone()),
            "disk_format" => self.disk_format.clone(),
            "container_format" => self.container_format.clone(),
            "checksum" => self.checksum.clone(),
            "os_hash_value" => self.sha512.clone(),
            "protected" => Some(self.protected.to_string()),
            "owner" => Some(OWNER.to_string()),
            "min_disk" => Some(self.min_disk.to_string()),
            "min_ram" => Some(self.min_ram.to_string()),
            "size" => self.size.map(|s| s.to_string()),
            _ => self.props.get(k).cloned(),
        }
    }
}

#[derive(Default)]
struct Table {
    seq: u64,
    transfers: u64,
    images: HashMap<String, Image>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    uploads_done: AtomicU64,
    uploads_failed: AtomicU64,
    imports_done: AtomicU64,
    imports_failed: AtomicU64,
    deletes: AtomicU64,
}

struct Endpoint {
    slow: Option<Arc<Bucket>>,
    table: Mutex<Table>,
    n: Counters,
}

struct Sim {
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    data_dir: Option<PathBuf>,
    quota_bytes: Option<u64>,
    /// Web-download bytes by the source's `host:port`.
    by_source: Mutex<BTreeMap<String, u64>>,
    transfers_now: AtomicU64,
    transfers_peak: AtomicU64,
    started: Instant,
}

impl Sim {
    fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }

    fn transfer_began(&self) {
        let now = self.transfers_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.transfers_peak.fetch_max(now, Ordering::Relaxed);
    }

    fn transfer_ended(&self) {
        self.transfers_now.fetch_sub(1, Ordering::Relaxed);
    }

    fn data_path(&self, ep: usize, id: &str) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join(ep.to_string()).join(id))
    }

    fn stats(&self) -> Value {
        let mut eps = Vec::with_capacity(self.endpoints.len());
        let mut tot = [0u64; 10];
        for (i, e) in self.endpoints.iter().enumerate() {
            let (images, active) = match e.table.lock() {
                Ok(t) => (
                    t.images.len() as u64,
                    t.images.values().filter(|i| i.status == "active").count() as u64,
                ),
                Err(_) => (0, 0),
            };
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let row = [
                images,
                active,
                l(&e.n.bytes_received),
                l(&e.n.bytes_sent),
                l(&e.n.uploads_done),
                l(&e.n.uploads_failed),
                l(&e.n.imports_done),
                l(&e.n.imports_failed),
                l(&e.n.deletes),
                l(&e.n.requests),
            ];
            for (t, v) in tot.iter_mut().zip(row) {
                *t += v;
            }
            eps.push(
                json!({"endpoint": i, "slow": e.slow.is_some(), "images": row[0], "active": row[1],
                "bytes_received": row[2], "bytes_sent": row[3], "uploads_done": row[4], "uploads_failed": row[5],
                "imports_done": row[6], "imports_failed": row[7], "deletes": row[8], "requests": row[9]}),
            );
        }
        let by_source = self.by_source.lock().map(|m| json!(*m)).unwrap_or(Value::Null);
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "totals": {"images": tot[0], "active": tot[1], "bytes_received": tot[2], "bytes_sent": tot[3],
                "uploads_done": tot[4], "uploads_failed": tot[5], "imports_done": tot[6], "imports_failed": tot[7],
                "deletes": tot[8], "requests": tot[9],
                "transfers_now": self.transfers_now.load(Ordering::Relaxed),
                "transfers_peak": self.transfers_peak.load(Ordering::Relaxed)},
            "web_download_bytes_by_source": by_source,
            "endpoints": eps,
        })
    }
}

/// Hashes and counts bytes as they stream, and writes them to a file when asked.
struct Sink {
    sha: Sha512,
    md5: Md5,
    size: u64,
    file: Option<tokio::fs::File>,
}

impl Sink {
    async fn new(path: Option<PathBuf>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                Some(tokio::fs::File::create(p).await?)
            }
            None => None,
        };
        Ok(Self {
            sha: Sha512::new(),
            md5: Md5::new(),
            size: 0,
            file,
        })
    }

    async fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.sha.update(b);
        self.md5.update(b);
        self.size += b.len() as u64;
        if let Some(f) = &mut self.file {
            f.write_all(b).await?;
        }
        Ok(())
    }

    async fn finish(self) -> std::io::Result<(u64, String, String)> {
        if let Some(mut f) = self.file {
            f.flush().await?;
        }
        Ok((
            self.size,
            hex::encode(self.md5.finalize()),
            hex::encode(self.sha.finalize()),
        ))
    }
}

// ---------------------------------------------------------------- requests

async fn read_json(body: Incoming) -> std::result::Result<Value, Response<Body>> {
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| err(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?;
        if let Some(d) = f.data_ref() {
            buf.extend_from_slice(d);
            if buf.len() > MAX_JSON {
                return Err(err(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"));
            }
        }
    }
    serde_json::from_slice(&buf)
        .map_err(|e| err(StatusCode::BAD_REQUEST, &format!("Malformed JSON in request body: {e}")))
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> std::result::Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/stats" {
        let stats = sim.stats();
        // `?reset_peak=1`: the next answer's transfers_peak counts from now.
        if req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "reset_peak=1"))
        {
            sim.transfers_peak
                .store(sim.transfers_now.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        return Ok(json_resp(StatusCode::OK, &stats));
    }
    if path == "/healthz" {
        return Ok(json_resp(StatusCode::OK, &json!({"ok": true})));
    }
    let Some(rest) = path.strip_prefix("/g/") else {
        return Ok(err(StatusCode::NOT_FOUND, "no such endpoint (paths are /g/<i>/v2/...)"));
    };
    let (num, sub) = rest
        .split_once('/')
        .map(|(a, b)| (a, format!("/{b}")))
        .unwrap_or((rest, "/".into()));
    let Some(ep) = num.parse::<usize>().ok().filter(|i| *i < sim.endpoints.len()) else {
        return Ok(err(StatusCode::NOT_FOUND, &format!("no endpoint {num}")));
    };
    sim.endpoint(ep).n.requests.fetch_add(1, Ordering::Relaxed);
    Ok(route(sim, ep, sub, req).await)
}

async fn route(sim: Arc<Sim>, ep: usize, sub: String, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let segs: Vec<&str> = sub.trim_end_matches('/').split('/').skip(1).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, [] | ["versions"]) => json_resp(
            StatusCode::OK,
            &json!({"versions": [{"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": "/v2/"}]}]}),
        ),
        (&Method::GET, ["v2", "info", "import"]) => json_resp(
            StatusCode::OK,
            &json!({"import-methods": {"description": "Import methods available.", "type": "array",
                "value": ["glance-direct", "web-download"]}}),
        ),
        (&Method::GET, ["v2", "info", "usage"]) => usage(&sim, ep),
        (&Method::GET, ["v2", "images"]) => list(&sim, ep, req.uri().query().unwrap_or("")),
        (&Method::POST, ["v2", "images"]) => match read_json(req.into_body()).await {
            Ok(v) => create(&sim, ep, &v),
            Err(r) => r,
        },
        (&Method::GET, ["v2", "images", id]) => with_image(&sim, ep, id, |i| json_resp(StatusCode::OK, &i.json())),
        (&Method::PATCH, ["v2", "images", id]) => {
            let ct = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !PATCH_TYPES.iter().any(|t| ct.starts_with(t)) {
                return err(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("Unsupported Content-Type {ct:?}: use {}", PATCH_TYPES[0]),
                );
            }
            let id = id.to_string();
            match read_json(req.into_body()).await {
                Ok(v) => patch(&sim, ep, &id, &v),
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["v2", "images", id]) => delete(&sim, ep, id).await,
        (&Method::PUT, ["v2", "images", id, "file"]) => {
            let id = id.to_string();
            upload(sim, ep, id, req).await
        }
        (&Method::GET, ["v2", "images", id, "file"]) => {
            let id = id.to_string();
            download(sim, ep, id).await
        }
        (&Method::POST, ["v2", "images", id, "import"]) => {
            let id = id.to_string();
            match read_json(req.into_body()).await {
                Ok(v) => import(sim, ep, id, &v),
                Err(r) => r,
            }
        }
        (&Method::GET, ["v2", "images", id, "tasks"]) => with_image(&sim, ep, id, |i| {
            json_resp(
                StatusCode::OK,
                &json!({"tasks": i.tasks.iter().map(|t| t.json(&i.id)).collect::<Vec<_>>()}),
            )
        }),
        (_, ["v2", "images", ..]) | (_, ["v2", "info", ..]) => {
            err(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => err(StatusCode::NOT_FOUND, &format!("the simulator does not serve {sub}")),
    }
}

fn with_image(sim: &Sim, ep: usize, id: &str, f: impl FnOnce(&Image) -> Response<Body>) -> Response<Body> {
    let Ok(t) = sim.endpoint(ep).table.lock() else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
    };
    match t.images.get(id) {
        Some(i) => f(i),
        None => err(StatusCode::NOT_FOUND, &format!("No image found with ID {id}")),
    }
}

fn usage(sim: &Sim, ep: usize) -> Response<Body> {
    let Ok(t) = sim.endpoint(ep).table.lock() else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
    };
    let used: u64 = t.images.values().filter_map(|i| i.size).sum();
    let uploading = t
        .images
        .values()
        .filter(|i| matches!(i.status, "saving" | "importing" | "uploading"))
        .count();
    let limit = sim.quota_bytes.map(|q| json!(q)).unwrap_or(json!(-1));
    json_resp(
        StatusCode::OK,
        &json!({"usage": {
            "image_size_total": {"limit": limit, "usage": used},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": -1, "usage": t.images.len()},
            "image_count_uploading": {"limit": -1, "usage": uploading},
        }}),
    )
}

fn list(sim: &Sim, ep: usize, query: &str) -> Response<Body> {
    let pairs = query_pairs(query);
    let mut limit = PAGE_DEFAULT;
    let mut marker = None;
    let mut filters: Vec<(String, String)> = Vec::new();
    let mut tags = Vec::new();
    let mut visibility = None;
    let mut hidden = false;
    for (k, v) in &pairs {
        match k.as_str() {
            "limit" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => limit = (n as usize).min(PAGE_MAX),
                _ => return err(StatusCode::BAD_REQUEST, "limit param must be an integer"),
            },
            "marker" => marker = Some(v.clone()),
            "sort_key" | "sort_dir" | "sort" | "member_status" => {}
            "tag" => tags.push(v.clone()),
            "visibility" => visibility = Some(v.clone()),
            "os_hidden" => match v.as_str() {
                "true" | "True" => hidden = true,
                "false" | "False" => hidden = false,
                _ => return err(StatusCode::BAD_REQUEST, "os_hidden must be true or false"),
            },
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    let Ok(t) = sim.endpoint(ep).table.lock() else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
    };
    // Newest first (Glance's default: created_at desc, id desc).
    let mut all: Vec<&Image> = t
        .images
        .values()
        .filter(|i| i.os_hidden == hidden)
        .filter(|i| match visibility.as_deref() {
            None => i.visibility != "community",
            Some("all") => true,
            Some(v) => i.visibility == v,
        })
        .filter(|i| tags.iter().all(|tag| i.tags.contains(tag)))
        .filter(|i| filters.iter().all(|(k, v)| i.field(k).as_deref() == Some(v.as_str())))
        .collect();
    all.sort_by_key(|i| std::cmp::Reverse(i.seq));
    let start = match &marker {
        None => 0,
        Some(m) => match t.images.get(m) {
            // The page after the marker, wherever the marker now sorts.
            Some(mi) => all.iter().position(|i| i.seq < mi.seq).unwrap_or(all.len()),
            None => return err(StatusCode::BAD_REQUEST, &format!("marker {m} not found")),
        },
    };
    let page: Vec<&Image> = all.iter().skip(start).take(limit).copied().collect();
    let mut body = json!({
        "images": page.iter().map(|i| i.json()).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if limit > 0 && page.len() == limit {
        if let Some(last) = page.last() {
            let mut q: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k != "marker")
                .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
                .collect();
            q.push(format!("marker={}", last.id));
            body["next"] = json!(format!("/v2/images?{}", q.join("&")));
        }
    }
    json_resp(StatusCode::OK, &body)
}

/// Check and apply one core or custom field of a create or a patch.
fn set_field(img: &mut Image, k: &str, v: &Value, creating: bool) -> std::result::Result<(), Response<Body>> {
    let bad = |what: &str| Err(err(StatusCode::BAD_REQUEST, &format!("Invalid value for {k}: {what}")));
    if READ_ONLY.contains(&k) && !(creating && k == "id") {
        return Err(err(StatusCode::FORBIDDEN, &format!("Attribute '{k}' is read-only.")));
    }
    if k.starts_with("os_glance_") || k == "stores" {
        return Err(err(StatusCode::FORBIDDEN, &format!("Attribute '{k}' is reserved.")));
    }
    let s = v.as_str();
    match k {
        "id" => match s {
            Some(s) if s.len() == 36 => img.id = s.to_string(),
            _ => return bad("not a UUID"),
        },
        "name" => match v {
            Value::Null => img.name = None,
            Value::String(s) if s.chars().count() <= 255 => img.name = Some(s.clone()),
            _ => return bad("a string of at most 255 characters, or null"),
        },
        "visibility" => match s {
            Some(s) if VISIBILITIES.contains(&s) => img.visibility = s.to_string(),
            _ => return bad("public, private, shared or community"),
        },
        "disk_format" | "container_format" => {
            if !creating && img.status != "queued" {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    &format!("Attribute {k} can be only replaced for a queued image."),
                ));
            }
            let allowed: &[&str] = if k == "disk_format" {
                &DISK_FORMATS
            } else {
                &CONTAINER_FORMATS
            };
            let val = match v {
                Value::Null => None,
                Value::String(s) if allowed.contains(&s.as_str()) => Some(s.clone()),
                _ => return bad(&format!("one of {}", allowed.join(", "))),
            };
            if k == "disk_format" {
                img.disk_format = val;
            } else {
                img.container_format = val;
            }
        }
        "min_disk" | "min_ram" => match v.as_u64() {
            Some(n) if n <= i32::MAX as u64 => {
                if k == "min_disk" {
                    img.min_disk = n;
                } else {
                    img.min_ram = n;
                }
            }
            _ => return bad("an integer >= 0"),
        },
        "protected" | "os_hidden" => match v.as_bool() {
            Some(b) if k == "protected" => img.protected = b,
            Some(b) => img.os_hidden = b,
            None => return bad("a boolean"),
        },
        "tags" => match v.as_array() {
            Some(a) if a.iter().all(|t| t.as_str().is_some_and(|t| t.len() <= 255)) => {
                let mut tags: Vec<String> = Vec::new();
                for t in a.iter().filter_map(Value::as_str) {
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_string());
                    }
                }
                img.tags = tags;
            }
            _ => return bad("an array of strings"),
        },
        "owner" => {}
        _ => match s {
            Some(s) if s.chars().count() <= 255 && k.len() <= 255 => {
                img.props.insert(k.to_string(), s.to_string());
            }
            _ => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    &format!("Additional property {k}: the value must be a string of at most 255 characters"),
                ))
            }
        },
    }
    Ok(())
}

fn create(sim: &Sim, ep: usize, v: &Value) -> Response<Body> {
    let Some(obj) = v.as_object() else {
        return err(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let now = now_iso();
    let mut img = Image {
        seq: 0,
        id: uuid4(),
        name: None,
        status: "queued",
        visibility: "shared".into(),
        protected: false,
        os_hidden: false,
        disk_format: None,
        container_format: None,
        min_disk: 0,
        min_ram: 0,
        tags: Vec::new(),
        props: BTreeMap::new(),
        size: None,
        checksum: None,
        sha512: None,
        created_at: now.clone(),
        updated_at: now,
        tasks: Vec::new(),
        transfer: 0,
    };
    for (k, v) in obj {
        if let Err(r) = set_field(&mut img, k, v, true) {
            return r;
        }
    }
    let Ok(mut t) = sim.endpoint(ep).table.lock() else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
    };
    if t.images.contains_key(&img.id) {
        return err(
            StatusCode::CONFLICT,
            &format!("Image with identifier {} already exists!", img.id),
        );
    }
    t.seq += 1;
    img.seq = t.seq;
    let mut r = json_resp(StatusCode::CREATED, &img.json());
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", img.id)) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r.headers_mut().insert(
        "OpenStack-image-import-methods",
        HeaderValue::from_static("glance-direct,web-download"),
    );
    t.images.insert(img.id.clone(), img);
    r
}

fn patch(sim: &Sim, ep: usize, id: &str, v: &Value) -> Response<Body> {
    let Some(ops) = v.as_array() else {
        return err(StatusCode::BAD_REQUEST, "a JSON-patch body is an array of operations");
    };
    let Ok(mut t) = sim.endpoint(ep).table.lock() else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
    };
    let Some(cur) = t.images.get(id) else {
        return err(StatusCode::NOT_FOUND, &format!("No image found with ID {id}"));
    };
    let mut img = cur.clone();
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("");
        let Some(key) = op["path"].as_str().and_then(|p| p.strip_prefix('/')) else {
            return err(StatusCode::BAD_REQUEST, "each operation needs a path /<attribute>");
        };
        if key.contains('/') {
            return err(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON pointer for this resource: '/{key}'"),
            );
        }
        let core = img.json().as_object().is_some_and(|o| o.contains_key(key)) && !img.props.contains_key(key);
        match kind {
            "add" | "replace" => {
                let Some(value) = op.get("value") else {
                    return err(StatusCode::BAD_REQUEST, &format!("Operation {kind} needs a value"));
                };
                if kind == "replace" && !core && !img.props.contains_key(key) && !is_core_name(key) {
                    return err(StatusCode::CONFLICT, &format!("Property {key} does not exist."));
                }
                if let Err(r) = set_field(&mut img, key, value, false) {
                    return r;
                }
            }
            "remove" => {
                if is_core_name(key) {
                    return err(StatusCode::FORBIDDEN, &format!("Attribute '{key}' cannot be removed."));
                }
                if img.props.remove(key).is_none() && !key.starts_with("os_glance_") {
                    return err(StatusCode::CONFLICT, &format!("Property {key} does not exist."));
                }
            }
            other => return err(StatusCode::BAD_REQUEST, &format!("Unsupported operation {other:?}")),
        }
    }
    img.updated_at = now_iso();
    let r = json_resp(StatusCode::OK, &img.json());
    t.images.insert(img.id.clone(), img);
    r
}

fn is_core_name(k: &str) -> bool {
    READ_ONLY.contains(&k)
        || [
            "name",
            "visibility",
            "protected",
            "os_hidden",
            "disk_format",
            "container_format",
            "min_disk",
            "min_ram",
            "tags",
            "owner",
        ]
        .contains(&k)
}

async fn delete(sim: &Sim, ep: usize, id: &str) -> Response<Body> {
    let e = sim.endpoint(ep);
    {
        let Ok(mut t) = e.table.lock() else {
            return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
        };
        match t.images.get(id) {
            None => return err(StatusCode::NOT_FOUND, &format!("Failed to find image {id} to delete")),
            Some(i) if i.protected => {
                return err(
                    StatusCode::FORBIDDEN,
                    &format!("Image {id} is protected and cannot be deleted."),
                )
            }
            Some(_) => {}
        }
        // A transfer still running finds its image gone and stops.
        t.images.remove(id);
    }
    e.n.deletes.fetch_add(1, Ordering::Relaxed);
    if let Some(p) = sim.data_path(ep, id) {
        let _ = tokio::fs::remove_file(p).await;
    }
    empty(StatusCode::NO_CONTENT)
}

/// Start a transfer into `id`: the image must be queued; it moves to `status` and the
/// transfer's number is returned.
fn begin_transfer(
    sim: &Sim,
    ep: usize,
    id: &str,
    status: &'static str,
    task: Option<Task>,
) -> std::result::Result<u64, Response<Body>> {
    let Ok(mut t) = sim.endpoint(ep).table.lock() else {
        return Err(err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned"));
    };
    t.transfers += 1;
    let n = t.transfers;
    let Some(img) = t.images.get_mut(id) else {
        return Err(err(StatusCode::NOT_FOUND, &format!("No image found with ID {id}")));
    };
    if img.status != "queued" {
        return Err(err(
            StatusCode::CONFLICT,
            &format!("Image status transition from {} to {status} is not allowed", img.status),
        ));
    }
    if task.is_some() && (img.disk_format.is_none() || img.container_format.is_none()) {
        return Err(err(
            StatusCode::CONFLICT,
            "The image needs a disk_format and a container_format before its import",
        ));
    }
    img.status = status;
    img.transfer = n;
    img.updated_at = now_iso();
    if let Some(task) = task {
        img.props.insert("os_glance_import_task".into(), task.id.clone());
        img.props.insert("os_glance_importing_to_stores".into(), "file".into());
        img.props.insert("os_glance_failed_import".into(), String::new());
        img.tasks.push(task);
    }
    Ok(n)
}

/// End transfer `n` of `id`: active with these hashes, or back to queued (the import's
/// task marked failed with `msg`). False when the image is gone or another transfer owns it.
fn end_transfer(
    sim: &Sim,
    ep: usize,
    id: &str,
    n: u64,
    outcome: std::result::Result<(u64, String, String), String>,
) -> bool {
    let Ok(mut t) = sim.endpoint(ep).table.lock() else {
        return false;
    };
    let Some(img) = t.images.get_mut(id).filter(|i| i.transfer == n) else {
        return false;
    };
    let now = now_iso();
    img.updated_at = now.clone();
    let importing = img.props.contains_key("os_glance_import_task");
    let task = img.tasks.last_mut().filter(|_| importing);
    match outcome {
        Ok((size, md5, sha512)) => {
            img.status = "active";
            img.size = Some(size);
            img.checksum = Some(md5);
            img.sha512 = Some(sha512);
            if let Some(task) = task {
                task.status = "success";
                task.updated_at = now;
                task.result = json!({"image_id": id});
            }
            img.props.remove("os_glance_import_task");
            if importing {
                img.props.insert("os_glance_importing_to_stores".into(), String::new());
            }
        }
        Err(msg) => {
            img.status = "queued";
            if let Some(task) = task {
                task.status = "failure";
                task.message = msg;
                task.updated_at = now;
            }
            if importing {
                img.props.remove("os_glance_import_task");
                img.props.insert("os_glance_importing_to_stores".into(), String::new());
                img.props.insert("os_glance_failed_import".into(), "file".into());
            }
        }
    }
    true
}

async fn upload(sim: Arc<Sim>, ep: usize, id: String, req: Request<Incoming>) -> Response<Body> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/octet-stream") {
        return err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Type {ct:?} is not supported; use application/octet-stream"),
        );
    }
    let n = match begin_transfer(&sim, ep, &id, "saving", None) {
        Ok(n) => n,
        Err(r) => return r,
    };
    sim.transfer_began();
    let e = sim.endpoint(ep);
    let mut body = req.into_body();
    let result: std::result::Result<(u64, String, String), String> = async {
        let mut sink = Sink::new(sim.data_path(ep, &id))
            .await
            .map_err(|e| format!("data file: {e}"))?;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("reading the upload: {e}"))?;
            if let Some(d) = f.data_ref() {
                if let Some(b) = &e.slow {
                    b.take(d.len()).await;
                }
                sink.put(d).await.map_err(|e| format!("data file: {e}"))?;
                e.n.bytes_received.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        sink.finish().await.map_err(|e| format!("data file: {e}"))
    }
    .await;
    sim.transfer_ended();
    let ok = result.is_ok();
    let failure = result.as_ref().err().cloned();
    if !end_transfer(&sim, ep, &id, n, result) {
        e.n.uploads_failed.fetch_add(1, Ordering::Relaxed);
        return err(StatusCode::GONE, &format!("Image {id} was deleted during its upload"));
    }
    if ok {
        e.n.uploads_done.fetch_add(1, Ordering::Relaxed);
        empty(StatusCode::NO_CONTENT)
    } else {
        e.n.uploads_failed.fetch_add(1, Ordering::Relaxed);
        err(StatusCode::BAD_REQUEST, &failure.unwrap_or_default())
    }
}

fn import(sim: Arc<Sim>, ep: usize, id: String, v: &Value) -> Response<Body> {
    let method = v["method"]["name"].as_str().unwrap_or("");
    if method != "web-download" {
        return err(
            StatusCode::BAD_REQUEST,
            &format!("Import method {method:?} is not supported by the simulator (web-download only)"),
        );
    }
    let Some(uri) = v["method"]["uri"].as_str().map(str::to_string) else {
        return err(StatusCode::BAD_REQUEST, "web-download needs method.uri");
    };
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return err(StatusCode::BAD_REQUEST, "URI must be an http or https URL");
    }
    let now = now_iso();
    let task = Task {
        id: uuid4(),
        status: "processing",
        message: String::new(),
        uri: uri.clone(),
        created_at: now.clone(),
        updated_at: now,
        result: Value::Null,
    };
    let n = match begin_transfer(&sim, ep, &id, "importing", Some(task)) {
        Ok(n) => n,
        Err(r) => return r,
    };
    tokio::spawn(async move {
        sim.transfer_began();
        let result = web_download(&sim, ep, &id, &uri).await;
        sim.transfer_ended();
        let ok = result.is_ok();
        let e = sim.endpoint(ep);
        if end_transfer(&sim, ep, &id, n, result) && ok {
            e.n.imports_done.fetch_add(1, Ordering::Relaxed);
        } else {
            e.n.imports_failed.fetch_add(1, Ordering::Relaxed);
        }
    });
    empty(StatusCode::ACCEPTED)
}

/// An error with its causes (reqwest's own message hides the connect error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn authority(uri: &str) -> String {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    rest.split(['/', '?']).next().unwrap_or("").to_string()
}

/// The web-download: a plain GET of `uri`, hashed as it streams; stops when the image is gone.
async fn web_download(sim: &Sim, ep: usize, id: &str, uri: &str) -> std::result::Result<(u64, String, String), String> {
    let e = sim.endpoint(ep);
    let mut resp = sim
        .http
        .get(uri)
        .send()
        .await
        .map_err(|e| format!("GET {}: {}", authority(uri), chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {} answered {}", authority(uri), resp.status()));
    }
    let mut sink = Sink::new(sim.data_path(ep, id))
        .await
        .map_err(|e| format!("data file: {e}"))?;
    let source = authority(uri);
    let mut unflushed = 0u64;
    let flush = |n: &mut u64| {
        if *n > 0 {
            if let Ok(mut m) = sim.by_source.lock() {
                *m.entry(source.clone()).or_insert(0) += *n;
            }
            *n = 0;
        }
    };
    let mut checked = Instant::now();
    let res = loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break Ok(()),
            Err(err) => break Err(format!("reading {source}: {}", chain(&err))),
        };
        if let Some(b) = &e.slow {
            b.take(chunk.len()).await;
        }
        if let Err(err) = sink.put(&chunk).await {
            break Err(format!("data file: {err}"));
        }
        e.n.bytes_received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        unflushed += chunk.len() as u64;
        if unflushed >= 8 << 20 {
            flush(&mut unflushed);
        }
        // A deleted image's import stops (checked now and then, not per chunk).
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = Instant::now();
            let gone = e.table.lock().map(|t| !t.images.contains_key(id)).unwrap_or(true);
            if gone {
                break Err("the image was deleted during its import".into());
            }
        }
    };
    flush(&mut unflushed);
    res?;
    sink.finish().await.map_err(|e| format!("data file: {e}"))
}

async fn download(sim: Arc<Sim>, ep: usize, id: String) -> Response<Body> {
    let (status, size, md5) = {
        let Ok(t) = sim.endpoint(ep).table.lock() else {
            return err(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned");
        };
        match t.images.get(&id) {
            None => return err(StatusCode::NOT_FOUND, &format!("No image found with ID {id}")),
            Some(i) => (i.status, i.size, i.checksum.clone()),
        }
    };
    if status != "active" {
        return empty(StatusCode::NO_CONTENT);
    }
    let Some(path) = sim.data_path(ep, &id) else {
        return err(
            StatusCode::NOT_IMPLEMENTED,
            "the simulator keeps no image data (start it with --data-dir to download images)",
        );
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("data file: {e}")),
    };
    let (tx, rx) = mpsc::channel(4);
    let sim2 = sim.clone();
    tokio::spawn(async move {
        let e = sim2.endpoint(ep);
        sim2.transfer_began();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(b) = &e.slow {
                        b.take(n).await;
                    }
                    if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                    e.n.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    break;
                }
            }
        }
        sim2.transfer_ended();
    });
    let mut r = Response::new(ChanBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(n) = size {
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(m) = md5.and_then(|m| HeaderValue::from_str(&m).ok()) {
        h.insert("Content-MD5", m);
    }
    r
}

// ---------------------------------------------------------------- server

pub fn glance_sim(a: SimArgs) -> Result<()> {
    if a.endpoints == 0 {
        bail!("--endpoints must be at least 1");
    }
    if let Some(bad) = a.slow.iter().find(|i| **i >= a.endpoints) {
        bail!("--slow {bad}: there are only {} endpoints", a.endpoints);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .context("http client")?;
        let endpoints = (0..a.endpoints)
            .map(|i| Endpoint {
                slow: a.slow.contains(&i).then(|| Arc::new(Bucket::new(a.slow_bytes_per_sec))),
                table: Mutex::new(Table::default()),
                n: Counters::default(),
            })
            .collect();
        let sim = Arc::new(Sim {
            endpoints,
            http,
            data_dir: a.data_dir.clone(),
            quota_bytes: a.quota_bytes,
            by_source: Mutex::new(BTreeMap::new()),
            transfers_now: AtomicU64::new(0),
            transfers_peak: AtomicU64::new(0),
            started: Instant::now(),
        });
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        // The first line of stdout: where the endpoints are.
        println!("{addr}");
        eprintln!(
            "glance-sim: {} endpoints at http://{addr}/g/<0..{}>, slow {:?} at {} B/s, stats at /stats",
            a.endpoints,
            a.endpoints - 1,
            a.slow,
            a.slow_bytes_per_sec
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                acc = listener.accept() => {
                    let (sock, _) = match acc {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors, e.g.: go on with the open connections.
                            eprintln!("glance-sim: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = sock.set_nodelay(true);
                    let sim = sim.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(sim.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                            .await;
                    });
                }
            }
        }
        let mut s = sim.stats();
        if let Some(o) = s.as_object_mut() {
            o.remove("endpoints");
        }
        println!("{s}");
        Ok::<(), anyhow::Error>(())
    })?;
    // Transfers still running are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ids() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1796409687), "2026-12-04T18:41:27Z");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00Z");
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_pairs("name=a%20b&os_hash_value=ab+c&limit=2&x"),
            vec![
                ("name".to_string(), "a b".to_string()),
                ("os_hash_value".to_string(), "ab c".to_string()),
                ("limit".to_string(), "2".to_string()),
                ("x".to_string(), String::new())
            ]
        );
        assert_eq!(pct_decode("%zz%4"), "%zz%4");
        assert_eq!(pct_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(authority("http://127.0.0.1:5000/dl/x?y"), "127.0.0.1:5000");
    }
}
