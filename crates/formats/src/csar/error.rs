//! Everything that can go wrong opening a package.

use std::io;

use super::{ManifestFailure, TOSCA_META_PATH};

fn join_failures(failures: &[ManifestFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Everything that can go wrong opening a package. All variants but [`CsarError::Io`] are
/// caused by the package's content (a client error); see [`CsarError::code`].
#[derive(Debug, thiserror::Error)]
pub enum CsarError {
    /// Reading the package file failed (server side).
    #[error("cannot read package: {0}")]
    Io(#[from] io::Error),
    #[error("not a zip archive or corrupt zip: {0}")]
    NotZip(String),
    #[error("corrupt zip entry {path}: {reason}")]
    CorruptEntry { path: String, reason: String },
    #[error("unsafe zip entry name {name:?}: {reason}")]
    UnsafeEntryName { name: String, reason: &'static str },
    #[error("duplicate zip entry name {0:?}")]
    DuplicateEntry(String),
    #[error("zip entry {0} is encrypted; encrypted entries are not supported")]
    EncryptedEntry(String),
    #[error("zip entry {0} is a symbolic link; links are not allowed in a package")]
    SymlinkEntry(String),
    #[error("zip entry {0} is a special file (device, FIFO or socket)")]
    SpecialFileEntry(String),
    #[error("zip entry {path} uses unsupported compression method {method}")]
    UnsupportedCompression { path: String, method: String },
    #[error("too many zip entries: {count} (limit {limit})")]
    TooManyEntries { count: u64, limit: usize },
    #[error("package inflates to more than {limit} bytes")]
    TotalSizeExceeded { limit: u64 },
    #[error("zip entry {path} inflates {size} bytes from {compressed} (limit {limit}:1): likely a zip bomb")]
    CompressionRatioExceeded {
        path: String,
        size: u64,
        compressed: u64,
        limit: u64,
    },
    #[error("zip entry {path} yields more data than its declared size of {declared} bytes")]
    EntryLargerThanDeclared { path: String, declared: u64 },
    #[error("zip entries share compressed data (overlapping entries): likely a zip bomb")]
    OverlappingEntries,
    #[error("{path} is {size} bytes, over the {limit}-byte limit for metadata files")]
    TextTooLarge { path: String, size: u64, limit: u64 },
    #[error("{path} is not valid UTF-8 text")]
    InvalidText { path: String },
    #[error("invalid {TOSCA_META_PATH}: {0}")]
    InvalidToscaMeta(String),
    #[error("no {TOSCA_META_PATH} and no YAML file at the package root to use as entry definitions")]
    NoEntryDefinitions,
    #[error("no {TOSCA_META_PATH} and more than one YAML file at the package root: {}", .0.join(", "))]
    AmbiguousEntryDefinitions(Vec<String>),
    #[error("Entry-Definitions file {0} is not in the package")]
    MissingEntryDefinitions(String),
    #[error("{key} refers to {path}, which is not in the package")]
    MissingReferencedFile { key: String, path: String },
    #[error("invalid manifest {path} at line {line}: {reason}")]
    InvalidManifest { path: String, line: usize, reason: String },
    #[error("manifest verification failed for {} file(s): {}", .0.len(), join_failures(.0))]
    ManifestVerification(Vec<ManifestFailure>),
    #[error("invalid VNFD {path}: {reason}")]
    InvalidVnfd { path: String, reason: String },
    #[error("invalid size {value:?} in {field} of node {node}: {reason}")]
    InvalidScalarSize {
        node: String,
        field: String,
        value: String,
        reason: String,
    },
    #[error("artifact {file:?} of node {node} points outside the package")]
    ArtifactPathEscapes { node: String, file: String },
    #[error("zip entry {0} not found in package")]
    EntryNotFound(String),
}

impl CsarError {
    /// A short stable identifier of the error kind, for problem+json `type`/`code` fields.
    pub fn code(&self) -> &'static str {
        match self {
            CsarError::Io(_) => "io-error",
            CsarError::NotZip(_) => "not-a-zip",
            CsarError::CorruptEntry { .. } => "corrupt-entry",
            CsarError::UnsafeEntryName { .. } => "unsafe-entry-name",
            CsarError::DuplicateEntry(_) => "duplicate-entry",
            CsarError::EncryptedEntry(_) => "encrypted-entry",
            CsarError::SymlinkEntry(_) => "symlink-entry",
            CsarError::SpecialFileEntry(_) => "special-file-entry",
            CsarError::UnsupportedCompression { .. } => "unsupported-compression",
            CsarError::TooManyEntries { .. } => "too-many-entries",
            CsarError::TotalSizeExceeded { .. } => "total-size-exceeded",
            CsarError::CompressionRatioExceeded { .. } => "compression-ratio-exceeded",
            CsarError::EntryLargerThanDeclared { .. } => "entry-larger-than-declared",
            CsarError::OverlappingEntries => "overlapping-entries",
            CsarError::TextTooLarge { .. } => "text-too-large",
            CsarError::InvalidText { .. } => "invalid-text",
            CsarError::InvalidToscaMeta(_) => "invalid-tosca-meta",
            CsarError::NoEntryDefinitions => "no-entry-definitions",
            CsarError::AmbiguousEntryDefinitions(_) => "ambiguous-entry-definitions",
            CsarError::MissingEntryDefinitions(_) => "missing-entry-definitions",
            CsarError::MissingReferencedFile { .. } => "missing-referenced-file",
            CsarError::InvalidManifest { .. } => "invalid-manifest",
            CsarError::ManifestVerification(_) => "manifest-verification-failed",
            CsarError::InvalidVnfd { .. } => "invalid-vnfd",
            CsarError::InvalidScalarSize { .. } => "invalid-scalar-size",
            CsarError::ArtifactPathEscapes { .. } => "artifact-path-escapes",
            CsarError::EntryNotFound(_) => "entry-not-found",
        }
    }

    /// True when the package content is at fault (a 4xx), false for a server-side I/O failure.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, CsarError::Io(_))
    }
}
