//! The OCI vocabulary every layer speaks: repository names, tags, references and digests
//! ([`names`]), and manifests with their media types ([`manifest`]). A leaf module: it depends
//! on nothing of this crate but [`crate::error`], so storage and core both use it without
//! storage reaching into core. The parsers themselves are [`im_formats::oci`] (re-exported here),
//! whose [`OciError`] becomes the [`crate::error::Error`] variant of the same name.

pub mod manifest;
pub mod names;

pub use im_formats::oci::OciError;
pub use manifest::ParsedManifest;
pub use names::{Algorithm, Digest, Reference, RepoName};
