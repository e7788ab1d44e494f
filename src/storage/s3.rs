//! S3 blob store (Amazon S3 or any S3-compatible service).
//!
//! URL: `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=true&buffer_dir=DIR]`; region
//! defaults to `us-east-1`, path-style addressing is off unless asked for, the endpoint defaults
//! to AWS's, and `buffer_dir` (where part data is staged on local disk) to the system temp dir.
//! Credentials come from the standard environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`), never from the URL. (The SDK's
//! full provider chain, aws-config, is not linked: it would pull in three more SDK crates.)
//!
//! Layout under PREFIX: `blobs/<algorithm>/<first two hex>/<hex>` for committed blobs,
//! `trash/<algorithm>-<hex>.<uuid>` for blobs garbage collection set aside, and
//! `uploads/<uuid>/` for the data of an upload session:
//!
//! * `state.json`: the upload's size and its ordered list of segments, each `{name, len,
//!   stored}` (`len` bytes of the object `stored` bytes long count). Written with a conditional
//!   PUT (`If-Match` the version read when the write began), so two requests that race on one
//!   session cannot both record their data.
//! * `seg-<uuid>`: the segments, plain objects of 16 MiB (more past 2000 segments) except the last,
//!   which may be shorter. A write that ends with a last segment under 5 MiB (the multipart
//!   minimum) leaves it as the "tail": the next write — on any replica — reads it back and
//!   prepends it to its first segment, so that every segment but the last is a valid part.
//!
//! Nothing about an upload lives in a process between requests: any replica can continue,
//! read back (to rebuild the hash) or commit any upload. Segments are plain objects rather
//! than parts of an open multipart upload because S3 cannot read back the parts of an
//! unfinished multipart upload, and `upload_read` must.
//!
//! Commit is server-side: a multipart upload whose parts are `UploadPartCopy`s of the
//! segments, completed at the blob's key (completion is atomic, so no partial object is ever
//! visible there); a single whole segment is a `CopyObject`, an empty blob a `PutObject`.
//!
//! Writes stage each segment in a local temporary file and upload it while the next one fills
//! (at most two in flight per write), so memory holds only small buffers whatever the sizes.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream as S3Body, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::blob::{BlobStore, BlobWriter, ByteRange, ByteStream};
use super::{StoreError, StoreErrorKind};
use crate::oci::names::{Algorithm, Digest};

const MIB: u64 = 1024 * 1024;
/// Smallest part S3 accepts in a multipart upload, except the last one.
const MIN_PART: u64 = 5 * MIB;
/// Size of the segments a write cuts its data into (doubling every 2000 segments).
const SEGMENT: u64 = 16 * MIB;
/// Most parts a multipart upload may have.
const MAX_PARTS: usize = 10_000;
/// Largest object `CopyObject` copies in one request.
const MAX_COPY: u64 = 5 * 1024 * MIB;
/// Part size when a larger object is copied with a multipart upload.
const COPY_PART: u64 = 512 * MIB;
/// Segment uploads one write keeps running while it fills the next segment.
const MAX_IN_FLIGHT: usize = 2;
/// Requests run at once for part copies and deletions.
const PARALLEL_REQUESTS: usize = 4;
/// Buffer for writing and reading staged segment files.
const FILE_BUFFER: usize = 256 * 1024;
/// Validity of presigned blob URLs.
const PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);
const OCTET_STREAM: &str = "application/octet-stream";

/// A parsed `s3://` blob store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix without leading or trailing slashes; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    /// Directory for staging segment data; `None` is the system temp dir.
    pub buffer_dir: Option<PathBuf>,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Other(format!("invalid S3 URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(bad("missing or invalid bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") && !prefix.is_empty() {
            return Err(bad("empty, '.' or '..' segment in the key prefix"));
        }
        let mut parsed = S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            region: "us-east-1".to_string(),
            path_style: false,
            buffer_dir: None,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "endpoint" if !value.is_empty() => parsed.endpoint = Some(value.into_owned()),
                "region" if !value.is_empty() => parsed.region = value.into_owned(),
                "path_style" => {
                    parsed.path_style = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("path_style must be true or false")),
                    }
                }
                "buffer_dir" if !value.is_empty() => parsed.buffer_dir = Some(PathBuf::from(&*value)),
                other => return Err(bad(&format!("unknown or empty parameter {other:?}"))),
            }
        }
        Ok(parsed)
    }
}

/// Credentials from the standard environment variables `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN`.
pub fn env_credentials() -> Result<Credentials, StoreError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )),
        _ => Err(StoreError::s3(
            StoreErrorKind::Other,
            "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string(),
        )),
    }
}

/// An S3 client for `url` with rustls for TLS and static `credentials`.
pub async fn client_for(url: &S3Url, credentials: Option<Credentials>) -> Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(url.region.clone()))
        .http_client(http)
        .force_path_style(url.path_style)
        // The core verifies every blob's sha256; extra CRCs would cost CPU and trailers that
        // not every S3-compatible server understands.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(credentials) = credentials {
        config = config.credentials_provider(credentials);
    }
    if let Some(endpoint) = &url.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

pub struct S3BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    buffer_dir: PathBuf,
    redirect: bool,
}

impl S3BlobStore {
    /// Open the store named by an `s3://` URL. With `redirect`, [`BlobStore::redirect_url`]
    /// hands out presigned GET URLs.
    pub async fn open(url: &str, redirect: bool) -> Result<Self, StoreError> {
        let url = S3Url::parse(url)?;
        let client = client_for(&url, Some(env_credentials()?)).await;
        Ok(Self::with_client(client, &url, redirect))
    }

    pub fn with_client(client: Client, url: &S3Url, redirect: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                bucket: url.bucket.clone(),
                prefix: url.prefix.clone(),
                buffer_dir: url.buffer_dir.clone().unwrap_or_else(std::env::temp_dir),
                redirect,
            }),
        }
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// One segment of upload data: the first `len` bytes of the object `name` (`stored` bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Segment {
    name: String,
    len: u64,
    stored: u64,
}

/// A multipart upload a commit started, so that an abort can clean it up after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingCommit {
    key: String,
    upload_id: String,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UploadState {
    size: u64,
    segments: Vec<Segment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<PendingCommit>,
}

impl UploadState {
    fn validate(&self) -> Result<(), String> {
        let mut total = 0u64;
        for s in &self.segments {
            let name_ok = s
                .name
                .strip_prefix("seg-")
                .is_some_and(|u| uuid::Uuid::parse_str(u).is_ok());
            if !name_ok || s.len == 0 || s.len > s.stored {
                return Err(format!("bad segment {s:?}"));
            }
            total = total.checked_add(s.len).ok_or("size overflow")?;
        }
        if total != self.size {
            return Err(format!("segments hold {total} bytes, state says {}", self.size));
        }
        Ok(())
    }

    /// Keep only the first `offset` bytes; returns the names of segments no longer used.
    fn truncate(&mut self, offset: u64) -> Vec<String> {
        let mut kept = 0u64;
        let mut dropped = Vec::new();
        let mut segments = Vec::with_capacity(self.segments.len());
        for mut seg in self.segments.drain(..) {
            if kept >= offset {
                dropped.push(seg.name);
                continue;
            }
            seg.len = seg.len.min(offset - kept);
            kept += seg.len;
            segments.push(seg);
        }
        self.segments = segments;
        self.size = kept;
        dropped
    }
}

/// Target size of the segment that follows `count` existing ones: doubling every 2000
/// segments keeps even huge uploads within the 10 000 parts of a multipart upload.
fn segment_target(count: usize) -> u64 {
    SEGMENT << (count / 2000).min(6)
}

enum Precondition<'a> {
    /// Create only: the object must not exist.
    Absent,
    /// Replace only the version with this ETag.
    Etag(&'a str),
    /// Unconditional.
    Any,
}

fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn s3_error<E: std::error::Error + 'static>(what: &str, err: &SdkError<E>) -> StoreError {
    let kind = match (err, status(err)) {
        (_, Some(404)) => StoreErrorKind::NotFound,
        (_, Some(409 | 412)) => StoreErrorKind::Conflict,
        // MinIO and others answer 507 when their disks are full.
        (_, Some(507)) => StoreErrorKind::Full,
        (_, Some(429 | 500 | 502 | 503 | 504)) => StoreErrorKind::Transient,
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_), _) => {
            StoreErrorKind::Transient
        }
        _ => StoreErrorKind::Other,
    };
    StoreError::s3(kind, format!("{what}: {}", DisplayErrorContext(err)))
}

fn body_error(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::s3(StoreErrorKind::Transient, format!("{what}: {err}"))
}

/// `x-amz-copy-source` value for an object of `bucket`.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", percent_encoding::utf8_percent_encode(key, KEEP))
}

fn algorithm_name(digest: &Digest) -> &'static str {
    match digest.algorithm() {
        Algorithm::Sha256 => "sha256",
        Algorithm::Sha512 => "sha512",
    }
}

/// The digest a trash token `<algorithm>-<hex>.<uuid>` names, if it is one.
fn trash_token_digest(token: &str) -> Option<Digest> {
    let (name, id) = token.rsplit_once('.')?;
    uuid::Uuid::parse_str(id).ok()?;
    let (algo, hex) = name.split_once('-')?;
    Digest::parse(&format!("{algo}:{hex}")).ok()
}

/// A byte stream over an S3 response body.
fn body_stream(body: S3Body) -> ByteStream {
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        body.next().await.map(|item| (item.map_err(io::Error::other), body))
    }))
}

/// A local file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A spawned task aborted when dropped, so an abandoned write stops uploading.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Task<T> {
    async fn join(mut self) -> Result<T, StoreError> {
        (&mut self.0)
            .await
            .map_err(|e| StoreError::Other(format!("S3 upload task failed: {e}")))
    }
}

impl Inner {
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn blob_key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        self.key(&format!("blobs/{}/{}/{hex}", algorithm_name(digest), &hex[..2]))
    }

    /// `…/trash/<token>`, after checking `token` is one.
    fn trash_key(&self, token: &str) -> Result<String, StoreError> {
        trash_token_digest(token).ok_or_else(|| StoreError::Other(format!("bad trash token {token:?}")))?;
        Ok(self.key(&format!("trash/{token}")))
    }

    /// `…/uploads/<id>/`, after checking `id` is a UUID.
    fn upload_dir(&self, id: &str) -> Result<String, StoreError> {
        uuid::Uuid::parse_str(id).map_err(|_| StoreError::Other(format!("bad upload id {id:?}")))?;
        Ok(self.key(&format!("uploads/{id}/")))
    }

    fn state_key(&self, id: &str) -> Result<String, StoreError> {
        Ok(self.upload_dir(id)? + "state.json")
    }

    fn segment_key(&self, id: &str, name: &str) -> Result<String, StoreError> {
        Ok(self.upload_dir(id)? + name)
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(s3_error(&format!("HEAD {key}"), &e)),
        }
    }

    /// The upload's state and the ETag of that version, or `None` when there is no upload.
    async fn load_state(&self, id: &str) -> Result<Option<(UploadState, Option<String>)>, StoreError> {
        let key = self.state_key(id)?;
        let out = match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(s3_error("reading upload state", &e)),
        };
        let etag = out.e_tag().map(str::to_owned);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| body_error("reading upload state", e))?
            .into_bytes();
        let state: UploadState = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::s3(StoreErrorKind::Other, format!("upload state {key} is not valid: {e}")))?;
        state
            .validate()
            .map_err(|e| StoreError::s3(StoreErrorKind::Other, format!("upload state {key} is not valid: {e}")))?;
        Ok(Some((state, etag)))
    }

    async fn require_state(&self, id: &str) -> Result<(UploadState, Option<String>), StoreError> {
        self.load_state(id)
            .await?
            .ok_or_else(|| StoreError::s3(StoreErrorKind::Other, format!("no upload data for upload {id}")))
    }

    /// Store the upload's state; returns the new version's ETag.
    async fn save_state(
        &self,
        id: &str,
        state: &UploadState,
        cond: Precondition<'_>,
    ) -> Result<Option<String>, StoreError> {
        let key = self.state_key(id)?;
        let body = serde_json::to_vec(state).map_err(|e| StoreError::Other(format!("encoding upload state: {e}")))?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(S3Body::from(body));
        req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Etag(etag) => req.if_match(etag),
            Precondition::Any => req,
        };
        match req.send().await {
            Ok(out) => Ok(out.e_tag().map(str::to_owned)),
            Err(e) if matches!(status(&e), Some(409 | 412)) => Err(StoreError::s3(
                StoreErrorKind::Conflict,
                format!("upload {id} was changed by another request at the same time"),
            )),
            Err(e) if status(&e) == Some(404) => Err(StoreError::s3(
                StoreErrorKind::NotFound,
                format!("upload {id} no longer exists"),
            )),
            Err(e) => Err(s3_error("writing upload state", &e)),
        }
    }

    /// Every key under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list_modified(prefix).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// Keys under `prefix` with their sizes.
    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|(k, size, _)| (k, size))
            .collect())
    }

    /// Keys under `prefix` with their last-modified times (ms since the epoch).
    async fn list_modified(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|(k, _, t)| (k, t))
            .collect())
    }

    /// Keys under `prefix`, each with its size and last-modified time (ms since the epoch).
    async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error(&format!("listing {prefix}"), &e))?;
            keys.extend(out.contents().iter().filter_map(|o| {
                let modified = o.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0);
                let size = o.size().unwrap_or(0).max(0) as u64;
                o.key().map(|k| (k.to_owned(), size, modified))
            }));
            match (out.is_truncated(), out.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), StoreError> {
        futures::stream::iter(keys)
            .map(|key| async move {
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map(|_| ())
                    .or_else(|e| match status(&e) {
                        Some(404) => Ok(()),
                        _ => Err(s3_error(&format!("deleting {key}"), &e)),
                    })
            })
            .buffer_unordered(PARALLEL_REQUESTS)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// A GET of `len` (at least 1) bytes of `key` from `offset` on.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<S3Body, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + len.saturating_sub(1)))
            .send()
            .await
            .map_err(|e| s3_error(&format!("reading {key}"), &e))?;
        Ok(out.body)
    }

    /// Upload a staged file as the object `key`.
    async fn put_file(&self, key: &str, file: TempFile, len: u64) -> Result<(), StoreError> {
        let body = S3Body::read_from()
            .path(&file.0)
            .buffer_size(FILE_BUFFER)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| body_error("reading staged segment", e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(OCTET_STREAM)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error(&format!("storing {key}"), &e))?;
        drop(file);
        Ok(())
    }

    /// Assemble the segments into the object `key` with a multipart upload of part copies.
    async fn multipart_copy(
        &self,
        id: &str,
        key: &str,
        state: &mut UploadState,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        if state.segments.len() > MAX_PARTS {
            return Err(StoreError::s3(
                StoreErrorKind::Other,
                format!(
                    "upload {id} has {} segments, more than the {MAX_PARTS} parts S3 allows",
                    state.segments.len()
                ),
            ));
        }
        let mut parts = Vec::with_capacity(state.segments.len());
        for seg in &state.segments {
            parts.push((self.segment_key(id, &seg.name)?, 0, seg.len));
        }
        let upload_id = self.create_multipart(key).await?;
        let result = async {
            // Recorded so that an abort after a crash here also drops the multipart upload.
            state.commit = Some(PendingCommit {
                key: key.to_string(),
                upload_id: upload_id.clone(),
            });
            let cond = etag.map_or(Precondition::Any, Precondition::Etag);
            self.save_state(id, state, cond).await?;
            self.copy_parts_and_complete(key, &upload_id, parts).await
        }
        .await;
        if result.is_err() {
            self.abort_multipart(key, &upload_id).await;
        }
        result
    }

    /// Server-side copy of the object `src` (`size` bytes) to `dst`, which appears whole or
    /// not at all.
    async fn server_copy(&self, src: &str, dst: &str, size: u64) -> Result<(), StoreError> {
        if size <= MAX_COPY {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(dst)
                .copy_source(copy_source(&self.bucket, src))
                .send()
                .await
                .map_err(|e| s3_error(&format!("copying {src} to {dst}"), &e))?;
            return Ok(());
        }
        let part = size.div_ceil(MAX_PARTS as u64).max(COPY_PART);
        let parts: Vec<(String, u64, u64)> = (0..size)
            .step_by(part as usize)
            .map(|start| (src.to_string(), start, part.min(size - start)))
            .collect();
        let upload_id = self.create_multipart(dst).await?;
        let result = self.copy_parts_and_complete(dst, &upload_id, parts).await;
        if result.is_err() {
            self.abort_multipart(dst, &upload_id).await;
        }
        result
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(OCTET_STREAM)
            .send()
            .await
            .map_err(|e| s3_error(&format!("starting multipart upload of {key}"), &e))?;
        Ok(created
            .upload_id()
            .ok_or_else(|| StoreError::s3(StoreErrorKind::Other, "multipart upload without an id"))?
            .to_string())
    }

    /// Copy `parts` (source key, start, length; all but the last at least 5 MiB) into the
    /// multipart upload `upload_id` of `key`, in order, and complete it.
    async fn copy_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(String, u64, u64)>,
    ) -> Result<(), StoreError> {
        let completed: Vec<CompletedPart> = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(i, (source, start, len))| async move {
                let number = i as i32 + 1;
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(copy_source(&self.bucket, &source))
                    .copy_source_range(format!("bytes={start}-{}", start + len - 1))
                    .send()
                    .await
                    .map_err(|e| s3_error(&format!("copying {source} into {key}"), &e))?;
                let etag = out.copy_part_result().and_then(|r| r.e_tag()).ok_or_else(|| {
                    StoreError::s3(StoreErrorKind::Other, format!("part copy of {source} returned no ETag"))
                })?;
                Ok::<_, StoreError>(CompletedPart::builder().part_number(number).e_tag(etag).build())
            })
            .buffered(PARALLEL_REQUESTS)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| s3_error(&format!("completing multipart upload of {key}"), &e))?;
        Ok(())
    }

    /// Abort a multipart upload, logging rather than failing (it may be gone already).
    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = res {
            if status(&e) != Some(404) {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort multipart upload");
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.head(&self.inner.blob_key(digest)).await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        let inner = &self.inner;
        let key = inner.blob_key(digest);
        let mut req = inner.client.get_object().bucket(&inner.bucket).key(&key);
        if let Some(r) = range {
            req = req.range(format!("bytes={}-{}", r.start, r.end));
        }
        let out = req.send().await.map_err(|e| match status(&e) {
            Some(404) => StoreError::Io(io::Error::new(io::ErrorKind::NotFound, format!("no object {key}"))),
            _ => s3_error(&format!("reading {key}"), &e),
        })?;
        Ok(body_stream(out.body))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        self.inner.delete_keys(vec![self.inner.blob_key(digest)]).await
    }

    async fn upload_create(&self, id: &str) -> Result<(), StoreError> {
        self.inner
            .save_state(id, &UploadState::default(), Precondition::Absent)
            .await
            .map(|_| ())
    }

    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.load_state(id).await?.map(|(s, _)| s.size))
    }

    async fn upload_writer(&self, id: &str, offset: u64) -> Result<Box<dyn BlobWriter>, StoreError> {
        let (mut state, etag) = self.inner.require_state(id).await?;
        if state.size < offset {
            return Err(StoreError::s3(
                StoreErrorKind::Other,
                format!("upload {id} holds {} bytes, fewer than its offset {offset}", state.size),
            ));
        }
        let garbage = state.truncate(offset);
        let tail = match state.segments.last() {
            Some(last) if last.len < MIN_PART => state.segments.pop(),
            _ => None,
        };
        Ok(Box::new(S3Writer {
            inner: self.inner.clone(),
            id: id.to_string(),
            state,
            etag,
            tail,
            garbage,
            current: None,
            in_flight: VecDeque::new(),
            total: offset,
        }))
    }

    async fn upload_read_range(&self, id: &str, offset: u64, len: u64) -> Result<ByteStream, StoreError> {
        let (state, _) = self.inner.require_state(id).await?;
        if state.size < offset.saturating_add(len) {
            return Err(StoreError::s3(
                StoreErrorKind::Other,
                format!(
                    "upload {id} holds {} bytes, fewer than the {len} asked for from {offset}",
                    state.size
                ),
            ));
        }
        // (segment key, offset in it, bytes from it) for the segments the range covers
        let mut plan = Vec::new();
        let (mut skip, mut left) = (offset, len);
        for seg in &state.segments {
            if left == 0 {
                break;
            }
            if skip >= seg.len {
                skip -= seg.len;
                continue;
            }
            let take = (seg.len - skip).min(left);
            plan.push((self.inner.segment_key(id, &seg.name)?, skip, take));
            left -= take;
            skip = 0;
        }
        let inner = self.inner.clone();
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(2);
        tokio::spawn(async move {
            for (key, from, take) in plan {
                let mut body = match inner.get_range(&key, from, take).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut got = 0u64;
                while let Some(item) = body.next().await {
                    let item = item.map_err(io::Error::other);
                    if let Ok(chunk) = &item {
                        got += chunk.len() as u64;
                    }
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
                if got != take {
                    let msg = format!("{key} returned {got} bytes, not {take}");
                    let _ = tx.send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg))).await;
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))))
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<(), StoreError> {
        let inner = &self.inner;
        let key = inner.blob_key(digest);
        if inner.head(&key).await?.is_some() {
            // Same content already stored: keep it, and the upload data for the caller.
            return Ok(());
        }
        let (mut state, etag) = inner.require_state(id).await?;
        let single = match state.segments.as_slice() {
            [seg] if seg.len == seg.stored => Some((seg.name.clone(), seg.len)),
            _ => None,
        };
        if state.segments.is_empty() {
            inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(&key)
                .content_type(OCTET_STREAM)
                .body(S3Body::from_static(b""))
                .send()
                .await
                .map_err(|e| s3_error(&format!("storing {key}"), &e))?;
        } else if let Some((name, size)) = single {
            inner.server_copy(&inner.segment_key(id, &name)?, &key, size).await?;
        } else {
            inner.multipart_copy(id, &key, &mut state, etag.as_deref()).await?;
        }
        Ok(())
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        let inner = &self.inner;
        let dir = inner.upload_dir(id)?;
        let state_key = inner.state_key(id)?;
        if let Some((state, _)) = inner.load_state(id).await? {
            if let Some(commit) = &state.commit {
                inner.abort_multipart(&commit.key, &commit.upload_id).await;
            }
        }
        // The state goes last, so that an interrupted abort can be repeated.
        let keys: Vec<String> = inner
            .list(&dir)
            .await?
            .into_iter()
            .filter(|k| *k != state_key)
            .collect();
        inner.delete_keys(keys).await?;
        inner.delete_keys(vec![state_key]).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner
            .client
            .head_bucket()
            .bucket(&self.inner.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error(&format!("bucket {}", self.inner.bucket), &e))
    }

    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        if !self.inner.redirect {
            return Ok(None);
        }
        let config = PresigningConfig::expires_in(PRESIGN_TTL)
            .map_err(|e| StoreError::s3(StoreErrorKind::Other, format!("presigning: {e}")))?;
        let req = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(self.inner.blob_key(digest))
            .presigned(config)
            .await
            .map_err(|e| s3_error("presigning a blob URL", &e))?;
        Ok(Some(req.uri().to_string()))
    }

    // Garbage collection's trash (see `BlobStore::trash`): `PREFIX/trash/<algo>-<hex>.<uuid>`.
    // S3 has no rename: trash is a server-side copy then a delete of the blob, restore a copy
    // back (complete or absent at the final key, never partial) then a delete of the trash.

    async fn trash(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        let inner = &self.inner;
        let key = inner.blob_key(digest);
        let Some(size) = inner.head(&key).await? else {
            return Ok(None);
        };
        let token = format!("{}-{}.{}", algorithm_name(digest), digest.hex(), uuid::Uuid::new_v4());
        let trash_key = inner.trash_key(&token)?;
        if let Err(e) = inner.server_copy(&key, &trash_key, size).await {
            // Deleted meanwhile (another collector): nothing to trash.
            if inner.head(&key).await?.is_none() {
                inner.delete_keys(vec![trash_key]).await?;
                return Ok(None);
            }
            return Err(e);
        }
        inner.delete_keys(vec![key]).await?;
        Ok(Some(token))
    }

    async fn restore(&self, digest: &Digest, token: &str) -> Result<(), StoreError> {
        let inner = &self.inner;
        let trash_key = inner.trash_key(token)?;
        let Some(size) = inner.head(&trash_key).await? else {
            return Ok(());
        };
        let key = inner.blob_key(digest);
        if inner.head(&key).await?.is_none() {
            // A concurrent upload may place the same content too: either copy is complete.
            inner.server_copy(&trash_key, &key, size).await?;
        }
        inner.delete_keys(vec![trash_key]).await
    }

    async fn purge(&self, token: &str) -> Result<(), StoreError> {
        let trash_key = self.inner.trash_key(token)?;
        self.inner.delete_keys(vec![trash_key]).await
    }

    async fn upload_list_stale(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        // An upload's newest object says when it was last written.
        let dir = self.inner.key("uploads/");
        let mut newest: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for (key, modified) in self.inner.list_modified(&dir).await? {
            let Some(id) = key.strip_prefix(&dir).and_then(|rest| rest.split('/').next()) else {
                continue;
            };
            if uuid::Uuid::parse_str(id).is_err() {
                continue;
            }
            let slot = newest.entry(id.to_string()).or_insert(modified);
            *slot = (*slot).max(modified);
        }
        Ok(newest
            .into_iter()
            .filter(|(_, t)| *t < before_ms)
            .map(|(id, _)| id)
            .take(limit)
            .collect())
    }

    async fn committed(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let dir = self.inner.key("blobs/");
        let mut found = Vec::new();
        for (key, size) in self.inner.list_sized(&dir).await? {
            // blobs/<algorithm>/<fan>/<hex>
            let mut parts = key.strip_prefix(&dir).unwrap_or_default().split('/');
            let (Some(algo), Some(_), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Ok(digest) = Digest::parse(&format!("{algo}:{hex}")) {
                found.push((digest, size));
            }
        }
        Ok(found)
    }

    async fn trashed(&self) -> Result<Vec<(Digest, String)>, StoreError> {
        let dir = self.inner.key("trash/");
        let mut found = Vec::new();
        for key in self.inner.list(&dir).await? {
            let Some(token) = key.strip_prefix(&dir) else { continue };
            if let Some(digest) = trash_token_digest(token) {
                found.push((digest, token.to_string()));
            }
        }
        Ok(found)
    }
}

/// The segment a write is filling, staged in a local file.
struct Staged {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: TempFile,
    len: u64,
}

struct S3Writer {
    inner: Arc<Inner>,
    id: String,
    /// The upload's segments up to the write's offset, without the tail, then those written.
    state: UploadState,
    etag: Option<String>,
    /// A short last segment, prepended to the first segment this write fills.
    tail: Option<Segment>,
    /// Objects no longer used once the new state is stored.
    garbage: Vec<String>,
    current: Option<Staged>,
    in_flight: VecDeque<Task<Result<Segment, StoreError>>>,
    total: u64,
}

async fn create_staging_file(dir: &Path) -> io::Result<(tokio::fs::File, TempFile)> {
    let path = dir.join(format!("image-manager-s3-{}", uuid::Uuid::new_v4()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options.open(&path).await?;
    Ok((file, TempFile(path)))
}

impl S3Writer {
    /// Start a new staged segment, beginning with the tail's bytes if there is a tail.
    async fn stage(&mut self) -> Result<(), StoreError> {
        let (file, path) = create_staging_file(&self.inner.buffer_dir).await.map_err(|e| {
            StoreError::Io(io::Error::new(
                e.kind(),
                format!("staging file in {}: {e}", self.inner.buffer_dir.display()),
            ))
        })?;
        let mut staged = Staged {
            file: tokio::io::BufWriter::with_capacity(FILE_BUFFER, file),
            path,
            len: 0,
        };
        if let Some(tail) = self.tail.take() {
            let key = self.inner.segment_key(&self.id, &tail.name)?;
            let mut body = self.inner.get_range(&key, 0, tail.len).await?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| body_error(&format!("reading {key}"), e))?;
                staged.file.write_all(&chunk).await?;
                staged.len += chunk.len() as u64;
            }
            if staged.len != tail.len {
                return Err(StoreError::s3(
                    StoreErrorKind::Other,
                    format!("{key} returned {} bytes, not {}", staged.len, tail.len),
                ));
            }
            self.garbage.push(tail.name);
        }
        self.current = Some(staged);
        Ok(())
    }

    /// Upload the staged segment in the background.
    async fn ship(&mut self) -> Result<(), StoreError> {
        let Some(mut staged) = self.current.take() else {
            return Ok(());
        };
        staged.file.flush().await?;
        drop(staged.file);
        if staged.len == 0 {
            return Ok(());
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.collect_one().await?;
        }
        let name = format!("seg-{}", uuid::Uuid::new_v4());
        let key = self.inner.segment_key(&self.id, &name)?;
        let inner = self.inner.clone();
        let len = staged.len;
        let path = staged.path;
        self.in_flight.push_back(Task(tokio::spawn(async move {
            inner.put_file(&key, path, len).await?;
            Ok(Segment { name, len, stored: len })
        })));
        Ok(())
    }

    /// Wait for the oldest segment upload and record it.
    async fn collect_one(&mut self) -> Result<(), StoreError> {
        if let Some(task) = self.in_flight.pop_front() {
            let seg = task.join().await??;
            self.state.segments.push(seg);
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StoreError> {
        while !chunk.is_empty() {
            if self.current.is_none() {
                self.stage().await?;
            }
            let target = segment_target(self.state.segments.len() + self.in_flight.len());
            let Some(staged) = self.current.as_mut() else {
                return Err(StoreError::Other("no staged segment".into()));
            };
            let room = target.saturating_sub(staged.len).max(1);
            let piece = chunk.split_to(chunk.len().min(room.try_into().unwrap_or(usize::MAX)));
            staged.file.write_all(&piece).await?;
            staged.len += piece.len() as u64;
            self.total += piece.len() as u64;
            if staged.len >= target {
                self.ship().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        self.ship().await?;
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        if let Some(tail) = self.tail.take() {
            // Nothing was written: the tail stays the last segment.
            self.state.segments.push(tail);
        }
        self.state.size = self.total;
        self.state
            .validate()
            .map_err(|e| StoreError::Other(format!("upload {} state after write: {e}", self.id)))?;
        let cond = self.etag.as_deref().map_or(Precondition::Any, Precondition::Etag);
        self.inner.save_state(&self.id, &self.state, cond).await?;
        let mut keys = Vec::with_capacity(self.garbage.len());
        for name in &self.garbage {
            keys.push(self.inner.segment_key(&self.id, name)?);
        }
        if let Err(e) = self.inner.delete_keys(keys).await {
            tracing::warn!(upload = %self.id, error = %e, "could not remove replaced upload segments");
        }
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u =
            S3Url::parse("s3://bucket/a/b/?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true").unwrap();
        assert_eq!(u.bucket, "bucket");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.region, "eu-west-1");
        assert!(u.path_style);
        let u = S3Url::parse("s3://bucket").unwrap();
        assert_eq!(
            (u.prefix.as_str(), u.region.as_str(), u.path_style),
            ("", "us-east-1", false)
        );
        assert!(u.endpoint.is_none());
        for bad in [
            "file:///x",
            "s3://",
            "s3:///prefix",
            "s3://b/x?nope=1",
            "s3://b/x?path_style=maybe",
            "s3://b/a//b",
            "s3://b/../x",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    fn seg(n: u128, len: u64, stored: u64) -> Segment {
        Segment {
            name: format!("seg-{}", uuid::Uuid::from_u128(n)),
            len,
            stored,
        }
    }

    #[test]
    fn truncates_state() {
        let mut s = UploadState {
            size: 30,
            segments: vec![seg(1, 10, 10), seg(2, 10, 12), seg(3, 10, 10)],
            commit: None,
        };
        s.validate().unwrap();
        let dropped = s.truncate(15);
        assert_eq!(dropped, vec![seg(3, 0, 0).name]);
        assert_eq!(s.segments, vec![seg(1, 10, 10), seg(2, 5, 12)]);
        assert_eq!(s.size, 15);
        s.validate().unwrap();
        let dropped = s.truncate(10);
        assert_eq!(dropped, vec![seg(2, 0, 0).name]);
        assert_eq!(s.segments, vec![seg(1, 10, 10)]);
        assert!(s.truncate(0).len() == 1 && s.segments.is_empty() && s.size == 0);
    }

    #[test]
    fn rejects_bad_state() {
        let s = UploadState {
            size: 11,
            segments: vec![seg(1, 10, 10)],
            commit: None,
        };
        assert!(s.validate().is_err());
        let s = UploadState {
            size: 10,
            segments: vec![Segment {
                name: "../x".into(),
                len: 10,
                stored: 10,
            }],
            commit: None,
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn segment_sizes_grow_to_fit_the_part_limit() {
        let total: u64 = (0..MAX_PARTS).map(segment_target).sum();
        assert!(total > 900 * 1024 * MIB);
        assert_eq!(segment_target(0), SEGMENT);
        assert_eq!(copy_source("b", "p x/blobs/sha256/ab/ab"), "b/p%20x/blobs/sha256/ab/ab");
    }
}
