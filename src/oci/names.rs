//! Validation of repository names, tags and digests: [`im_formats::oci::names`], re-exported
//! (its errors become the [`Error`] variants of the same names through `?`), plus upload ids.

pub use im_formats::oci::names::*;

use crate::error::{Error, Result};

/// Upload session ids are UUIDs we mint; anything else is unknown (and never a path).
pub fn parse_upload_id(s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| Error::BlobUploadUnknown)
}
