//! The OCI vocabulary: repository names, tags, references and digests ([`names`]), and manifests
//! with their media types ([`manifest`]), validated from the grammar of the OCI distribution spec.

pub mod manifest;
pub mod names;

pub use manifest::ParsedManifest;
pub use names::{Algorithm, Digest, Reference, RepoName};

/// Why a name, tag, digest or manifest was refused. The main crate turns each variant into the
/// registry error of the same name (and OCI error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("invalid tag or reference: {0}")]
    TagInvalid(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
}

pub type Result<T, E = OciError> = std::result::Result<T, E>;
