//! The OCI vocabulary every layer speaks: repository names, tags, references and digests
//! ([`names`]), and manifests with their media types ([`manifest`]). A leaf module: it depends
//! on nothing of this crate but [`crate::error`], so storage and core both use it without
//! storage reaching into core.

pub mod manifest;
pub mod names;

pub use manifest::ParsedManifest;
pub use names::{Algorithm, Digest, Reference, RepoName};
