//! Every error the service can produce, and the one place where errors become HTTP responses.
//!
//! Core and storage code return [`Error`]; the `/v2` surface renders it in the OCI distribution
//! error format (`{"errors":[{"code","message","detail"}]}`). Internal failures are logged with
//! their cause and answered without leaking it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::storage::StoreErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a manifest or blob unknown to the repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("invalid tag or reference: {0}")]
    TagInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("the operation is not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("upload chunk out of order: expected offset {offset}")]
    UploadOutOfOrder { offset: u64 },
    /// Another request holds the session's write lease (its chunk is still streaming).
    #[error("upload session is being written by another request; resume at offset {offset} once it is done")]
    UploadBusy { offset: u64 },
    #[error("payload too large: {0}")]
    TooLarge(String),
    #[error("requested access to the resource is denied: {0}")]
    Denied(String),
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// A bearer token that lacks a grant its account holds: 401 with a challenge naming the
    /// scope needed (`error="insufficient_scope"`), so the client fetches a wider token.
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    #[error("unknown endpoint")]
    NotFound,
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StoreError),
    /// A failure of this server that is neither storage nor the client's doing (a panicked
    /// handler, a signing or hashing step that failed): 500, the cause logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
    /// A remote system this server talks to (a VIM, another registry) failed or refused:
    /// 502, with what it said.
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("request body: {0}")]
    Body(String),
    /// Content that is well-formed HTTP but refused on inspection (an unsafe disk image, a
    /// VNF package whose hashes do not match); `problems` lists every finding.
    #[error("{reason}")]
    Refused { reason: String, problems: Vec<String> },
    #[error("catalog entry unknown: {0}")]
    EntryUnknown(String),
    /// Something the API names by id that is not there (a VIM, a distribution job).
    #[error("{0} is unknown")]
    NotFoundWhat(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
}

impl From<im_formats::oci::OciError> for Error {
    fn from(e: im_formats::oci::OciError) -> Self {
        use im_formats::oci::OciError as E;
        match e {
            E::NameInvalid(m) => Error::NameInvalid(m),
            E::TagInvalid(m) => Error::TagInvalid(m),
            E::DigestInvalid(m) => Error::DigestInvalid(m),
            E::Unsupported(m) => Error::Unsupported(m),
            E::ManifestInvalid(m) => Error::ManifestInvalid(m),
        }
    }
}

impl From<im_formats::scope::ScopeError> for Error {
    fn from(e: im_formats::scope::ScopeError) -> Self {
        use im_formats::scope::ScopeError as E;
        match e {
            E::Name(name) => name.into(),
            e @ (E::Invalid(_) | E::Unsupported(_)) => Error::BadRequest(e.to_string()),
        }
    }
}

impl From<im_formats::ranges::ContentRangeError> for Error {
    fn from(e: im_formats::ranges::ContentRangeError) -> Self {
        Error::BlobUploadInvalid(e.to_string())
    }
}

impl Error {
    /// The HTTP status and OCI error code this error is answered with.
    fn status_code(&self) -> (StatusCode, &'static str) {
        use Error::*;
        match self {
            BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            BlobUploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            // TAG_INVALID is Docker's legacy code, not in the distribution spec's table.
            TagInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            Unsupported(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            UploadOutOfOrder { .. } | UploadBusy { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Unauthorized(_) | InsufficientScope(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Conflict(_) => (StatusCode::CONFLICT, "DENIED"),
            HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "SIZE_INVALID"),
            NotFound => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            Body(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            Storage(e) => match e.kind() {
                StoreErrorKind::Full => (StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN"),
                StoreErrorKind::Transient => (StatusCode::SERVICE_UNAVAILABLE, "UNKNOWN"),
                StoreErrorKind::Conflict => (StatusCode::CONFLICT, "UNKNOWN"),
                StoreErrorKind::NotFound | StoreErrorKind::Other => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            },
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Upstream(_) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
            Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "REFUSED"),
            EntryUnknown(_) => (StatusCode::NOT_FOUND, "ENTRY_UNKNOWN"),
            NotFoundWhat(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED"),
        }
    }

    fn message(&self) -> String {
        match self {
            Error::Storage(e) => match (e.kind(), e.is_blob_store()) {
                (StoreErrorKind::Full, true) => {
                    "blob store is full: free space (or raise its quota) and push again".into()
                }
                (StoreErrorKind::Full, false) => "metadata database is full: free space and push again".into(),
                (StoreErrorKind::Transient, _) => "storage is temporarily unavailable; retry".into(),
                (StoreErrorKind::Conflict, _) => "a concurrent change to the same data won; retry".into(),
                _ => "internal storage error".to_string(),
            },
            Error::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

/// An error rendered for the JSON APIs under `/api/v1`: RFC 9457 `application/problem+json`,
/// with the same status as on `/v2` and the registry error code as the `code` member.
pub struct Problem(pub Error);

impl<E: Into<Error>> From<E> for Problem {
    fn from(e: E) -> Self {
        Problem(e.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, code) = self.0.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut body = json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.0.message(),
            "code": code,
        });
        if let Error::Refused { problems, .. } = &self.0 {
            body["problems"] = json!(problems);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"image-manager\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request rejected");
        }
        let body = json!({ "errors": [{ "code": code, "message": self.message(), "detail": null }] });
        let mut resp = (status, axum::Json(body)).into_response();
        match self {
            Error::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            Error::Storage(e) if e.kind() == StoreErrorKind::Transient => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Error::UploadOutOfOrder { offset } | Error::UploadBusy { offset } => {
                let end = offset.saturating_sub(1);
                if let Ok(v) = HeaderValue::from_str(&format!("0-{end}")) {
                    resp.headers_mut().insert(header::RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}
