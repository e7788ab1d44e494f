//! Parsing and validation of pushed manifests: [`im_formats::oci::manifest`], re-exported. Its
//! errors become [`crate::error::Error::ManifestInvalid`] through `?`.

pub use im_formats::oci::manifest::*;
