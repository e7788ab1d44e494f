//! The `/v2` registry API (OCI Distribution Spec v1.1): routing of the path, parsing of headers
//! and query parameters, and shaping of responses. All decisions are in [`crate::core`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::headers::{parse_content_range, parse_range};
use super::AppState;
use crate::auth::Action;
use crate::core::names::{Digest, Reference, RepoName};
use crate::core::uploads::{Mount, UploadState};
use crate::core::{Page, Registry};
use crate::error::{Error, Result};
use crate::storage::meta::AuditRecord;
use crate::storage::now_ms;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// A `/v2` endpoint, decoded from the raw (never percent-decoded) request path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

/// The metrics label of a `/v2` path (no names: labels stay few).
pub(crate) fn route_label(path: &str) -> &'static str {
    match route(path) {
        Some(Route::Base) => "v2_base",
        Some(Route::Catalog) => "v2_catalog",
        Some(Route::Tags(_)) => "v2_tags",
        Some(Route::Manifest(..)) => "v2_manifest",
        Some(Route::Blob(..)) => "v2_blob",
        Some(Route::UploadStart(_)) => "v2_upload_start",
        Some(Route::Upload(..)) => "v2_upload",
        Some(Route::Referrers(..)) => "v2_referrers",
        None => "v2_other",
    }
}

pub(crate) fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name));
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload(name, last));
    }
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Route::Manifest(name, last)),
        "blobs" => Some(Route::Blob(name, last)),
        "referrers" => Some(Route::Referrers(name, last)),
        _ => None,
    }
}

/// Query parameters in order, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Self {
        let pairs = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Query(pairs)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// The `last` of a paginated listing: a name or tag, so printable ASCII.
    fn last(&self) -> Result<Option<&str>> {
        match self.get("last") {
            Some(l) if !l.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(Error::Unsupported(format!("invalid pagination parameter last={l:?}")))
            }
            other => Ok(other),
        }
    }

    fn page_size(&self) -> Result<Option<u32>> {
        match self.get("n") {
            None | Some("") => Ok(None),
            Some(n) => n
                .parse::<u32>()
                .map(Some)
                .map_err(|_| Error::Unsupported(format!("invalid page size n={n:?}"))),
        }
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

/// Response builder that never fails: header values we build are always valid.
struct Reply(Response);

impl Reply {
    fn new(status: StatusCode) -> Self {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = status;
        Reply(r)
    }
    fn header(mut self, name: impl Into<HeaderName>, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.0.headers_mut().insert(name.into(), v);
        }
        self
    }
    fn body(mut self, body: Body) -> Response {
        *self.0.body_mut() = body;
        self.0
    }
    fn done(self) -> Response {
        self.0
    }
}

pub async fn dispatch(State(reg): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let remote = super::remote_addr(&parts.extensions);
    let may_have_body = matches!(method, Method::PUT | Method::PATCH | Method::POST);
    let mut actor = None;
    let result = handle(&reg, &method, &uri, &headers, remote.as_deref(), &mut actor, body).await;
    if may_have_body || method == Method::DELETE {
        let summary = match &result {
            Ok(resp) => Ok(resp
                .headers()
                .get(CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .map(|d| format!("digest {d}"))),
            Err(e) => Err((matches!(e, Error::Unauthorized(_) | Error::Denied(_)), e.to_string())),
        };
        audit_request(&reg, &method, &uri, summary, actor, remote).await;
    }
    let mut resp = result.unwrap_or_else(|e| {
        // 401 carries a challenge: where to get a token and for what scope; a token that lacks
        // a grant its account holds is told `insufficient_scope`, so the client fetches a
        // wider one (Docker's token protocol). A right the account lacks is 403 DENIED.
        let insufficient = matches!(e, Error::InsufficientScope(_));
        let unauthorized = insufficient || matches!(e, Error::Unauthorized(_));
        let mut resp = e.into_response();
        if may_have_body {
            // The request body may be unread: say the connection ends here, so the client
            // does not send its next request on a connection the server is about to close.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if unauthorized && reg.auth.enabled() {
            if let Ok(v) = HeaderValue::from_str(&challenge(&reg.auth, &headers, &method, &uri, insufficient)) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    });
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

/// What a request needs: the repository it is about (`None`: the registry itself) and the
/// action on it. The decision is [`crate::auth`]'s.
fn requirement<'a>(route: &Route<'a>, method: &Method) -> (Option<&'a str>, Action) {
    match route {
        Route::Base | Route::Catalog => (None, Action::Pull),
        Route::Tags(n) | Route::Referrers(n, _) => (Some(n), Action::Pull),
        Route::Manifest(n, _) | Route::Blob(n, _) => match *method {
            Method::PUT => (Some(n), Action::Push),
            Method::DELETE => (Some(n), Action::Delete),
            _ => (Some(n), Action::Pull),
        },
        Route::UploadStart(n) | Route::Upload(n, _) => (Some(n), Action::Push),
    }
}

/// The `WWW-Authenticate` challenge of a 401: where to get a token, and for what scope (a
/// cross-repository mount needs pull on its source too), and whether the token presented
/// lacked it.
fn challenge(auth: &crate::auth::Auth, headers: &HeaderMap, method: &Method, uri: &Uri, insufficient: bool) -> String {
    let realm = match &auth.realm {
        Some(r) => r.clone(),
        None => {
            let host = header_str(headers, header::HOST)
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b)))
                .unwrap_or("localhost");
            format!("{}://{host}/token", if auth.tls { "https" } else { "http" })
        }
    };
    let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", crate::auth::SERVICE);
    let mut scopes: Vec<String> = Vec::new();
    match route(uri.path()) {
        Some(Route::Catalog) => scopes.push("registry:catalog:*".into()),
        Some(r) => {
            if let (Some(name), action) = requirement(&r, method) {
                if let Ok(repo) = RepoName::parse(name) {
                    // Reads ask for push too: the token service grants only what the account
                    // holds, and a client that keeps one token per repository and follows the
                    // challenge verbatim (oras-py re-authenticates on 403 only) can then push
                    // with the token it got for its first read.
                    let actions = match action {
                        Action::Push | Action::Pull => "pull,push",
                        other => other.as_str(),
                    };
                    scopes.push(format!("repository:{repo}:{actions}"));
                }
            }
            if matches!(r, Route::UploadStart(_)) {
                let q = Query::parse(uri);
                if q.get("mount").is_some() {
                    if let Some(from) = q.get("from").and_then(|f| RepoName::parse(f).ok()) {
                        scopes.push(format!("repository:{from}:pull"));
                    }
                }
            }
        }
        None => {}
    }
    if !scopes.is_empty() {
        c.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
    }
    if insufficient {
        c.push_str(",error=\"insufficient_scope\"");
    }
    c
}

/// Record pushes, tag moves and deletes, and refused writes, in the audit log.
async fn audit_request(
    reg: &Registry,
    method: &Method,
    uri: &Uri,
    result: std::result::Result<Option<String>, (bool, String)>,
    actor: Option<String>,
    remote: Option<String>,
) {
    let Some(r) = route(uri.path()) else {
        return;
    };
    let refused = matches!(result, Err((true, _)));
    let (name, what, target) = match (&r, method) {
        (Route::Manifest(n, reference), &Method::PUT) => (*n, "manifest.push", format!("{n}:{reference}")),
        (Route::Manifest(n, reference), &Method::DELETE) => (*n, "manifest.delete", format!("{n}:{reference}")),
        (Route::Blob(n, d), &Method::DELETE) => (*n, "blob.delete", format!("{n}@{d}")),
        (Route::UploadStart(n) | Route::Upload(n, _), _) if refused => (*n, "blob.push", n.to_string()),
        _ => return,
    };
    let outcome = match result {
        Ok(_) => "ok",
        Err(_) if refused => "denied",
        Err(_) => return,
    };
    let detail = match result {
        Err((_, e)) => Some(e),
        Ok(d) => d,
    };
    let ns = RepoName::parse(name).ok().map(|r| r.namespace().to_string());
    crate::auth::audit(
        &*reg.accounts,
        AuditRecord {
            at: now_ms(),
            actor: actor.unwrap_or_else(|| "anonymous".into()),
            action: what.into(),
            target,
            namespace: ns,
            remote,
            outcome: outcome.into(),
            detail,
        },
    )
    .await;
}

async fn handle(
    reg: &Registry,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    remote: Option<&str>,
    actor: &mut Option<String>,
    body: Body,
) -> Result<Response> {
    let Some(route) = route(uri.path()) else {
        return Err(Error::NotFound);
    };
    let (name, action) = requirement(&route, method);
    let id = reg.auth.identify(&*reg.accounts, headers, remote).await?;
    *actor = Some(id.principal.actor());
    let target = name.map(RepoName::parse).transpose()?;
    reg.auth
        .authorize_repo(&*reg.accounts, &id, target.as_ref(), action)
        .await?;
    let q = Query::parse(uri);
    let head = method == Method::HEAD;
    match (route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(Reply::new(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))),
        (Route::Catalog, Method::GET) => {
            let readable = match &id.token {
                None => reg.auth.readable(&*reg.accounts, &id.principal).await?,
                Some(access) => {
                    if !access
                        .iter()
                        .any(|a| a.kind == "registry" && a.name == "catalog" && !a.actions.is_empty())
                    {
                        return Err(Error::Denied("the token does not grant the catalog".into()));
                    }
                    let p = crate::auth::principal_by_actor(&*reg.accounts, &id.principal.actor()).await?;
                    reg.auth.readable(&*reg.accounts, &p).await?
                }
            };
            let page = reg.catalog(q.page_size()?, q.last()?, readable.as_ref()).await?;
            Ok(listing(
                page,
                "/v2/_catalog",
                |items| serde_json::json!({ "repositories": items }),
            ))
        }
        (Route::Tags(name), Method::GET) => {
            let repo = RepoName::parse(name)?;
            let page = reg.tags(&repo, q.page_size()?, q.last()?).await?;
            let path = format!("/v2/{repo}/tags/list");
            Ok(listing(
                page,
                &path,
                |items| serde_json::json!({ "name": repo.as_str(), "tags": items }),
            ))
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            let repo = RepoName::parse(name)?;
            // A reference that is neither a tag nor a digest names no manifest: 404, as for
            // any manifest that does not exist (what clients and conformance suites expect).
            let reference = Reference::parse(reference).map_err(|_| Error::ManifestUnknown)?;
            let m = reg.get_manifest(&repo, &reference, !head).await?;
            let reply = Reply::new(StatusCode::OK)
                .header(header::CONTENT_TYPE, &m.media_type)
                .header(CONTENT_DIGEST, &m.digest)
                .header(header::CONTENT_LENGTH, m.size.to_string());
            Ok(if head {
                reply.done()
            } else {
                reply.body(Body::from(m.content))
            })
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            let repo = RepoName::parse(name)?;
            let reference = Reference::parse(reference)?;
            let limit = reg.config.max_manifest_bytes;
            if content_length(headers).is_some_and(|l| l > limit as u64) {
                return Err(Error::TooLarge(format!("manifests are limited to {limit} bytes")));
            }
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Error::TooLarge(format!("manifests are limited to {limit} bytes"))
                    } else {
                        Error::Body(format!("reading manifest: {e}"))
                    }
                })?
                .to_bytes();
            let content_type = header_str(headers, header::CONTENT_TYPE)
                .map(|c| c.split(';').next().unwrap_or("").trim())
                .unwrap_or("");
            let pushed = reg
                .put_manifest(&repo, &reference, content_type, bytes.to_vec(), &q.all("tag"))
                .await?;
            let mut reply = Reply::new(StatusCode::CREATED)
                .header(header::LOCATION, format!("/v2/{repo}/manifests/{}", pushed.digest))
                .header(CONTENT_DIGEST, pushed.digest.as_str());
            if let Some(subject) = &pushed.subject {
                reply = reply.header(OCI_SUBJECT, subject.as_str());
            }
            if !q.all("tag").is_empty() {
                reply = reply.header(OCI_TAG, pushed.tags.join(","));
            }
            Ok(reply.done())
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            let repo = RepoName::parse(name)?;
            let reference = Reference::parse(reference).map_err(|_| Error::ManifestUnknown)?;
            reg.delete_manifest(&repo, &reference).await?;
            Ok(Reply::new(StatusCode::ACCEPTED).done())
        }
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => {
            let repo = RepoName::parse(name)?;
            let digest = Digest::parse(digest)?;
            if head {
                let size = reg.stat_blob(&repo, &digest).await?;
                return Ok(blob_headers(StatusCode::OK, &digest, size).done());
            }
            // `storage.redirect` with a store that presigns (S3): the client fetches the bytes,
            // Range included, from the store, once we know the blob is readable here.
            if let Some(location) = reg.blob_redirect(&repo, &digest).await? {
                return Ok(Reply::new(StatusCode::TEMPORARY_REDIRECT)
                    .header(header::LOCATION, location)
                    .header(CONTENT_DIGEST, digest.as_str())
                    .header(header::CONTENT_LENGTH, "0")
                    .done());
            }
            let range = header_str(headers, header::RANGE).and_then(parse_range);
            let blob = reg.get_blob(&repo, &digest, range).await?;
            let reply = match blob.range {
                Some(r) => blob_headers(StatusCode::PARTIAL_CONTENT, &digest, r.byte_count()).header(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{}", r.start, r.end, blob.size),
                ),
                None => blob_headers(StatusCode::OK, &digest, blob.size),
            };
            Ok(reply.body(Body::from_stream(blob.stream)))
        }
        (Route::Blob(name, digest), Method::DELETE) => {
            let repo = RepoName::parse(name)?;
            let digest = Digest::parse(digest)?;
            reg.delete_blob(&repo, &digest).await?;
            Ok(Reply::new(StatusCode::ACCEPTED).done())
        }
        (Route::UploadStart(name), Method::POST) => {
            let repo = RepoName::parse(name)?;
            if let Some(mount) = q.get("mount") {
                let digest = Digest::parse(mount)?;
                let mut from = q.get("from").map(RepoName::parse).transpose()?;
                // Mounting reads the source: without pull there, it is an ordinary upload.
                // A token that lacks pull there while its account has it asks for a wider token
                // (the challenge names both scopes), so that the mount happens.
                if let Some(f) = &from {
                    match reg
                        .auth
                        .authorize_repo(&*reg.accounts, &id, Some(f), Action::Pull)
                        .await
                    {
                        Ok(()) => {}
                        Err(e @ Error::InsufficientScope(_)) => return Err(e),
                        Err(_) => from = None,
                    }
                }
                return Ok(match reg.mount_blob(&repo, &digest, from.as_ref()).await? {
                    Mount::Mounted => blob_created(&repo, &digest),
                    Mount::Upload(state) => upload_reply(StatusCode::ACCEPTED, &repo, &state),
                });
            }
            if let Some(digest) = q.get("digest") {
                let digest = Digest::parse(digest)?;
                reg.put_blob_sized(&repo, &digest, content_length(headers), body.into_data_stream())
                    .await?;
                return Ok(blob_created(&repo, &digest));
            }
            let state = reg.start_upload(&repo).await?;
            Ok(upload_reply(StatusCode::ACCEPTED, &repo, &state))
        }
        (Route::Upload(name, id), method) => {
            let repo = RepoName::parse(name)?;
            let id = crate::core::names::parse_upload_id(id)?.to_string();
            match method {
                Method::GET | Method::HEAD => {
                    let state = reg.upload_status(&repo, &id).await?;
                    Ok(upload_reply(StatusCode::NO_CONTENT, &repo, &state))
                }
                Method::PATCH => {
                    let (start, len) = match header_str(headers, header::CONTENT_RANGE) {
                        Some(v) => {
                            let (s, len) = parse_content_range(v)?;
                            (Some(s), Some(len))
                        }
                        None => (None, None),
                    };
                    if let (Some(l), Some(cl)) = (len, content_length(headers)) {
                        if l != cl {
                            return Err(Error::SizeInvalid(format!(
                                "Content-Range covers {l} bytes but Content-Length is {cl}"
                            )));
                        }
                    }
                    let len = len.or(content_length(headers));
                    let state = reg
                        .append_upload(&repo, &id, start, len, body.into_data_stream())
                        .await?;
                    Ok(upload_reply(StatusCode::ACCEPTED, &repo, &state))
                }
                Method::PUT => {
                    let digest = Digest::parse(
                        q.get("digest")
                            .ok_or_else(|| Error::DigestInvalid("the digest parameter is required".into()))?,
                    )?;
                    let len = content_length(headers);
                    let has_body = len.is_none_or(|l| l > 0);
                    let stream = has_body.then(|| body.into_data_stream());
                    reg.finish_upload(&repo, &id, &digest, len, stream).await?;
                    Ok(blob_created(&repo, &digest))
                }
                Method::DELETE => {
                    reg.cancel_upload(&repo, &id).await?;
                    Ok(Reply::new(StatusCode::NO_CONTENT).done())
                }
                _ => Err(Error::MethodNotAllowed(format!("{method} on an upload session"))),
            }
        }
        (Route::Referrers(name, digest), Method::GET) => {
            let repo = RepoName::parse(name)?;
            let digest = Digest::parse(digest)?;
            let artifact_type = q.get("artifactType").filter(|a| !a.is_empty());
            let index = reg.referrers(&repo, &digest, artifact_type).await?;
            let mut reply = Reply::new(StatusCode::OK).header(header::CONTENT_TYPE, crate::core::manifest::OCI_INDEX);
            if artifact_type.is_some() {
                reply = reply.header(OCI_FILTERS_APPLIED, "artifactType");
            }
            Ok(reply.body(Body::from(index.to_string())))
        }
        (_, method) => Err(Error::MethodNotAllowed(format!(
            "{method} is not supported on this endpoint"
        ))),
    }
}

fn blob_headers(status: StatusCode, digest: &Digest, len: u64) -> Reply {
    Reply::new(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len.to_string())
        .header(CONTENT_DIGEST, digest.as_str())
        .header(header::ACCEPT_RANGES, "bytes")
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    Reply::new(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
        .header(CONTENT_DIGEST, digest.as_str())
        .header(header::CONTENT_LENGTH, "0")
        .done()
}

fn upload_reply(status: StatusCode, repo: &RepoName, state: &UploadState) -> Response {
    Reply::new(status)
        .header(header::LOCATION, format!("/v2/{repo}/blobs/uploads/{}", state.id))
        .header(header::RANGE, format!("0-{}", state.offset.saturating_sub(1)))
        .header(UPLOAD_UUID, &state.id)
        .header(header::CONTENT_LENGTH, "0")
        .done()
}

fn listing(page: Page, path: &str, body: impl FnOnce(&[String]) -> serde_json::Value) -> Response {
    let mut reply = Reply::new(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
    if page.more {
        if let Some(last) = page.items.last() {
            let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
            let n = page.items.len();
            reply = reply.header(header::LINK, format!("<{path}?last={last}&n={n}>; rel=\"next\""));
        }
    }
    reply.body(Body::from(body(&page.items).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(route("/v2"), Some(Route::Base));
        assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(route("/v2/a/b/manifests/v1"), Some(Route::Manifest("a/b", "v1")));
        assert_eq!(route("/v2/a/blobs/sha256:x"), Some(Route::Blob("a", "sha256:x")));
        assert_eq!(route("/v2/a/blobs/uploads/"), Some(Route::UploadStart("a")));
        assert_eq!(route("/v2/a/blobs/uploads/u1"), Some(Route::Upload("a", "u1")));
        assert_eq!(
            route("/v2/a/referrers/sha256:x"),
            Some(Route::Referrers("a", "sha256:x"))
        );
        assert_eq!(route("/v2/a/other/x"), None);
        assert_eq!(route("/v3/a"), None);
    }
}
