//! Outbound adapters: the remote systems Image Manager writes images to and reads inventories
//! from (VIMs). They sit beside `storage`, each behind its own narrow interface, and know
//! nothing of the catalog's rules: `core::distribution` decides what to send where.
//!
//! * [`glance`]: OpenStack Glance's Image API v2, directly or through Keystone v3
//!   ([`keystone`]), with password or application-credential authentication.
//! * [`oci`]: any Distribution-spec registry (another Image Manager, CNCF Distribution,
//!   Harbor, a cluster's registry).
//! * [`multicloud`]: ONAP MultiCloud's image API (v0 and v1), which creates the image in the
//!   cloud region behind it and fetches its bytes from a URL we serve.
//!
//! Every adapter returns [`AdapterError`], classified by [`AdapterErrorKind`], so that the
//! distribution engine decides retries by kind, never by message text.

/// What a failed call to a remote system means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterErrorKind {
    /// Could not connect, timed out, reset, or the remote answered 5xx / 429: worth another
    /// attempt later.
    Transient,
    /// The credentials were refused (401) or lack the right (403).
    Auth,
    /// The remote object is not there (404).
    NotFound,
    /// The remote state forbids the call (409: already uploaded, wrong state).
    Conflict,
    /// The remote refused the request as invalid (other 4xx): retrying the same call fails again.
    Refused,
    /// Our configuration or the remote's answer makes no sense (no Glance in the Keystone
    /// catalog, an unparseable body).
    Other,
}

/// A failed call to a remote system: its kind and what it said (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AdapterError {
    pub kind: AdapterErrorKind,
    pub message: String,
    /// The HTTP status the remote answered, when it answered.
    pub status: Option<u16>,
}

impl AdapterError {
    pub fn new(kind: AdapterErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// The error for an HTTP answer with status `status` and (a bounded excerpt of) its body.
    pub fn from_status(status: u16, what: &str, body: &str) -> Self {
        let kind = match status {
            401 | 403 => AdapterErrorKind::Auth,
            404 => AdapterErrorKind::NotFound,
            409 => AdapterErrorKind::Conflict,
            408 | 425 | 429 => AdapterErrorKind::Transient,
            s if s >= 500 => AdapterErrorKind::Transient,
            _ => AdapterErrorKind::Refused,
        };
        let excerpt: String = body.chars().take(300).collect();
        Self {
            kind,
            message: format!("{what}: HTTP {status}: {}", excerpt.trim()),
            status: Some(status),
        }
    }

    /// A transport failure (connect, TLS, timeout, reset) of a request for `what`.
    pub fn transport(what: &str, e: &reqwest::Error) -> Self {
        let kind = if e.is_builder() {
            AdapterErrorKind::Other
        } else {
            AdapterErrorKind::Transient
        };
        // reqwest's Display names the URL (ours never carry credentials in the URL) but not
        // the cause: its sources say whether the connection was refused, timed out, reset or
        // failed TLS.
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Self::new(kind, message)
    }

    pub fn is_transient(&self) -> bool {
        self.kind == AdapterErrorKind::Transient
    }
}

pub type AdapterResult<T> = Result<T, AdapterError>;

pub mod glance;
pub mod keystone;
pub mod multicloud;
pub mod oci;

/// Largest JSON answer read from a remote system (image lists are paged well below it).
pub const MAX_JSON_BYTES: usize = 16 << 20;

/// The body of `resp`, refused once longer than `cap` bytes (read as it streams, so a huge
/// answer never sits in memory); `what` names the call in errors.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize, what: &str) -> AdapterResult<bytes::Bytes> {
    let too_long = || {
        AdapterError::new(
            AdapterErrorKind::Other,
            format!("{what}: the answer is longer than {cap} bytes"),
        )
    };
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_long());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| AdapterError::transport(what, &e))? {
        if buf.len() + chunk.len() > cap {
            return Err(too_long());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `resp` as JSON of type `T` when its status is a success, else the classified error.
pub async fn json_answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response, what: &str) -> AdapterResult<T> {
    let status = resp.status().as_u16();
    let body = read_capped(resp, MAX_JSON_BYTES, what).await?;
    if !(200..300).contains(&status) {
        return Err(AdapterError::from_status(status, what, &String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body)
        .map_err(|e| AdapterError::new(AdapterErrorKind::Other, format!("{what}: unreadable answer: {e}")))
}

/// The HTTP client of one remote system: this connect timeout, our user agent, at most 5
/// redirects, and the extra trusted roots of `ca_pem` (one or more PEM certificates; a text
/// without any is refused rather than taken as an empty bundle). `what` names the system in
/// errors.
pub fn http_client(
    what: &str,
    connect_timeout: std::time::Duration,
    ca_pem: Option<&str>,
) -> AdapterResult<reqwest::Client> {
    let other = |m: String| AdapterError::new(AdapterErrorKind::Other, format!("{what}: {m}"));
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("image-manager/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| other(format!("the CA certificates are not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(other("no certificate in the CA PEM".into()));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
        .map_err(|e| other(format!("cannot build the HTTP client: {e}")))
}
