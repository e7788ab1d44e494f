//! Outbound adapters: the remote systems Image Manager writes images to and reads inventories
//! from (VIMs). They sit beside `storage`, each behind its own narrow interface, and know
//! nothing of the catalog's rules: `core::distribution` decides what to send where.
//!
//! * [`glance`]: OpenStack Glance's Image API v2, directly or through Keystone v3
//!   ([`keystone`]), with password or application-credential authentication.
//! * [`oci`]: any Distribution-spec registry (another Image Manager, CNCF Distribution,
//!   Harbor, a cluster's registry).
//!
//! Every adapter returns [`AdapterError`], classified by [`AdapterErrorKind`], so that the
//! distribution engine decides retries by kind, never by message text.

pub mod glance;
pub mod keystone;
pub mod oci;

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
        // reqwest's Display names the URL; ours never carry credentials in the URL.
        Self::new(kind, format!("{what}: {e}"))
    }

    pub fn is_transient(&self) -> bool {
        self.kind == AdapterErrorKind::Transient
    }
}

pub type AdapterResult<T> = Result<T, AdapterError>;
