//! The streaming disk-image inspector lives in the `im-formats` crate
//! ([`im_formats::inspect`], one file per disk format); this module re-exports it where the
//! server has always found it and adds the one function that opens a file.

use std::path::Path;

pub use im_formats::inspect::*;

/// Streams the file at `path` through an [`Inspector`] in 1 MiB chunks.
pub fn inspect_file(
    path: impl AsRef<Path>,
    limits: Limits,
    declared: Option<DiskFormat>,
) -> Result<DiskInfo, InspectError> {
    inspect_reader(std::fs::File::open(path)?, limits, declared)
}
