//! The ETSI SOL004 VNF package (CSAR) reader lives in the `im-formats` crate
//! ([`im_formats::csar`], split by concern: zip hardening, TOSCA.meta, manifest, VNFD, sizes);
//! this module re-exports it where the server has always found it and adds the functions that
//! open the package file.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

pub use im_formats::csar::*;

/// Opens and validates the package at `path`.
pub fn open(path: &Path, limits: &Limits) -> Result<Package, CsarError> {
    open_reader(BufReader::new(File::open(path)?), limits)
}

/// Streams the entry `name` of the package at `path` to `f`, without extracting it; see
/// [`stream_entry`] for the checks made on the way.
pub fn with_entry<T, F>(path: &Path, name: &str, limits: &Limits, f: F) -> Result<T, CsarError>
where
    F: FnOnce(&mut dyn Read) -> io::Result<T>,
{
    stream_entry(BufReader::new(File::open(path)?), name, limits, f)
}
