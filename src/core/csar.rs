//! Opening and validating ETSI GS NFV-SOL004 VNF packages.
//!
//! A VNF package is a TOSCA YAML CSAR: a zip archive holding a VNFD (TOSCA YAML), a manifest
//! (`.mf`) with digests of the package files, and artifacts such as software images. This
//! module opens a package that is already on disk, checks the archive against hostile input
//! (path traversal, duplicate or encrypted entries, symlinks, zip bombs, entries that inflate past
//! their declared size), locates the entry points (`TOSCA-Metadata/TOSCA.meta`, or the single root
//! YAML when there is none), verifies every manifest digest of a file inside the package, and reads
//! the software images declared in the VNFD.
//!
//! Nothing is extracted to disk and only small text files (`TOSCA.meta`, the manifest, the VNFD
//! YAML files) are read into memory, each bounded by [`Limits::max_text_bytes`]. A contained
//! image can be streamed out with [`with_entry`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zip::ZipArchive;

/// Path of the TOSCA metadata file inside a CSAR (SOL004 option 1).
pub const TOSCA_META_PATH: &str = "TOSCA-Metadata/TOSCA.meta";

/// Resource limits applied while opening a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories) the archive may hold.
    pub max_entries: usize,
    /// Most bytes all entries may inflate to, added up (declared sizes, which are enforced
    /// while reading).
    pub max_total_uncompressed: u64,
    /// Highest uncompressed/compressed ratio of one entry, for entries larger than
    /// [`Limits::ratio_min_size`].
    pub max_ratio: u64,
    /// Entries whose declared uncompressed size is at most this many bytes are exempt from the
    /// ratio check (small text files legitimately compress very well).
    pub ratio_min_size: u64,
    /// Most bytes of a text file read into memory: `TOSCA.meta`, the manifest, VNFD YAML files.
    pub max_text_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000,
            max_total_uncompressed: 64 << 30,
            max_ratio: 100,
            ratio_min_size: 1 << 20,
            max_text_bytes: 16 << 20,
        }
    }
}

/// Why one manifest entry failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManifestFailureReason {
    /// The digest of the file differs from the one in the manifest.
    HashMismatch {
        algorithm: String,
        expected: String,
        actual: String,
    },
    /// The manifest lists a file that the package does not contain.
    MissingFile,
    /// The manifest names a digest algorithm other than SHA-256, SHA-384 or SHA-512.
    UnsupportedAlgorithm { algorithm: String },
    /// The `Hash` value is not a hex digest of the algorithm's length.
    MalformedHash { hash: String },
    /// The `Source` is not a safe relative path inside the package.
    InvalidPath,
}

/// One manifest entry that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestFailure {
    /// The `Source` value as written in the manifest.
    pub source: String,
    pub reason: ManifestFailureReason,
}

impl fmt::Display for ManifestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            ManifestFailureReason::HashMismatch {
                algorithm,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{}: {algorithm} mismatch (manifest {expected}, file {actual})",
                    self.source
                )
            }
            ManifestFailureReason::MissingFile => {
                write!(f, "{}: listed in the manifest but not in the package", self.source)
            }
            ManifestFailureReason::UnsupportedAlgorithm { algorithm } => {
                write!(f, "{}: unsupported digest algorithm {algorithm:?}", self.source)
            }
            ManifestFailureReason::MalformedHash { hash } => write!(f, "{}: malformed hash {hash:?}", self.source),
            ManifestFailureReason::InvalidPath => write!(f, "{}: not a valid path inside the package", self.source),
        }
    }
}

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

/// One file (non-directory) entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub path: String,
    /// Declared uncompressed size (enforced while reading).
    pub size: u64,
    pub compressed_size: u64,
}

/// One `Source` block of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    /// The `Source` value as written.
    pub source: String,
    /// `Algorithm`, as written (e.g. `SHA-256`), if given.
    pub algorithm: Option<String>,
    /// `Hash`, lower-cased, if given.
    pub hash: Option<String>,
    /// Per-artifact `Signature` path (SOL004 v3+), if given.
    pub signature: Option<String>,
    /// Per-artifact `Certificate` path (SOL004 v3+), if given.
    pub certificate: Option<String>,
    /// The source is a URI outside the package (recorded, not fetched nor verified).
    pub external: bool,
    /// The digest was computed over the packaged file and matched.
    pub verified: bool,
}

/// Package identification, from the manifest metadata, falling back to the VNFD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackageMetadata {
    pub vnf_provider_id: Option<String>,
    pub vnf_product_name: Option<String>,
    pub vnf_release_date_time: Option<String>,
    pub vnf_package_version: Option<String>,
    pub vnfd_id: Option<String>,
    pub vnf_software_version: Option<String>,
    pub compatible_specification_versions: Option<String>,
    /// Every `key: value` of the manifest metadata block, as written.
    pub manifest_metadata: Vec<(String, String)>,
}

/// A software image declared in the VNFD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwImage {
    /// Node template name (e.g. `VDU1`).
    pub node: String,
    pub name: Option<String>,
    pub version: Option<String>,
    /// `(algorithm, hash)`; the algorithm is lower-cased (`sha-256`), the hash lower-cased hex.
    pub checksum: Option<(String, String)>,
    pub container_format: Option<String>,
    pub disk_format: Option<String>,
    /// Bytes.
    pub min_disk: Option<u64>,
    /// Bytes.
    pub min_ram: Option<u64>,
    /// Bytes.
    pub size: Option<u64>,
    pub operating_system: Option<String>,
    /// The artifact: a normalised zip path when inside the package, or an external URI.
    pub file: Option<String>,
    /// `file` is an entry of the package.
    pub in_package: bool,
}

/// What a catalog needs from an opened, validated package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// Path of the main VNFD YAML inside the zip.
    pub entry_definitions: String,
    /// `tosca_definitions_version` of the main VNFD.
    pub tosca_definitions_version: String,
    /// Path of the manifest (`.mf`), if the package has one.
    pub manifest_path: Option<String>,
    pub change_log_path: Option<String>,
    pub licenses_path: Option<String>,
    pub certificate_path: Option<String>,
    pub tests_path: Option<String>,
    pub metadata: PackageMetadata,
    /// Every non-directory entry, in archive order.
    pub files: Vec<FileEntry>,
    pub manifest_entries: Vec<ManifestEntry>,
    /// The CMS signature block at the end of the manifest (`-----BEGIN CMS-----` … `-----END CMS-----`).
    pub manifest_signature: Option<String>,
    /// Signature and certificate files in the package (sorted).
    pub signatures: Vec<String>,
    /// Package files not listed in the manifest (besides the manifest itself and signature or
    /// certificate files); empty when there is no manifest. Informational.
    pub files_not_in_manifest: Vec<String>,
    pub software_images: Vec<SwImage>,
    /// The `Key: Value` pairs of `TOSCA.meta` in order (all blocks), or, for a package without
    /// it, the entry keys found in the root YAML's metadata plus `Entry-Definitions`.
    pub tosca_meta: Vec<(String, String)>,
}

/// Opens and validates the package at `path`.
pub fn open(path: &Path, limits: &Limits) -> Result<Package, CsarError> {
    open_reader(BufReader::new(File::open(path)?), limits)
}

/// Validates the package read from `reader` (a file, or the bytes in memory), as [`open`].
pub fn open_reader<R: Read + Seek>(reader: R, limits: &Limits) -> Result<Package, CsarError> {
    let mut ar = Archive::open(reader, limits)?;

    let layout = if ar.contains(TOSCA_META_PATH) {
        layout_from_tosca_meta(&mut ar, limits)?
    } else {
        layout_from_root_yaml(&mut ar, limits)?
    };

    // Manifest: parse, then verify every digest of a packaged file.
    let mut manifest_entries = Vec::new();
    let mut manifest_signature = None;
    let mut manifest_meta = Vec::new();
    if let Some(mf) = &layout.manifest {
        let text = ar.read_text(mf, limits)?;
        let parsed = parse_manifest(mf, &text)?;
        manifest_meta = parsed.metadata;
        manifest_signature = parsed.signature;
        manifest_entries = parsed.entries;
        verify_manifest(&mut ar, &mut manifest_entries)?;
    }

    // VNFD: the main file, and if it declares no image, the other YAML files beside it or
    // under Definitions/.
    let main_text = ar.read_text(&layout.entry_definitions, limits)?;
    let main_doc = parse_yaml(&layout.entry_definitions, &main_text)?;
    let tosca_definitions_version = match get(&main_doc, "tosca_definitions_version").and_then(scalar_string) {
        Some(v) => v,
        None => {
            return Err(CsarError::InvalidVnfd {
                path: layout.entry_definitions.clone(),
                reason: "missing tosca_definitions_version".into(),
            })
        }
    };
    let mut docs = vec![(layout.entry_definitions.clone(), main_doc)];
    let mut software_images = images_from_doc(&docs[0].1, &docs[0].0, &ar)?;
    if software_images.is_empty() {
        let main_dir = parent_dir(&layout.entry_definitions).to_string();
        let mut others: Vec<String> = ar
            .files
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| *p != layout.entry_definitions && is_yaml(p))
            .filter(|p| parent_dir(p) == main_dir || p.starts_with("Definitions/"))
            .collect();
        others.sort();
        for other in others {
            let text = ar.read_text(&other, limits)?;
            let doc = parse_yaml(&other, &text)?;
            if get(&doc, "tosca_definitions_version").is_none() {
                continue;
            }
            for img in images_from_doc(&doc, &other, &ar)? {
                if !software_images.contains(&img) {
                    software_images.push(img);
                }
            }
            docs.push((other, doc));
        }
    }

    let metadata = build_metadata(manifest_meta, &docs);

    let mut signatures: Vec<String> = ar
        .files
        .iter()
        .map(|f| f.path.clone())
        .filter(|p| is_signature_file(p))
        .collect();
    if let Some(cert) = &layout.certificate {
        if ar.contains(cert) && !signatures.contains(cert) {
            signatures.push(cert.clone());
        }
    }
    signatures.sort();

    let files_not_in_manifest = match &layout.manifest {
        Some(mf) => {
            let listed: HashSet<String> = manifest_entries
                .iter()
                .filter(|e| !e.external)
                .filter_map(|e| normalize_rel("", &e.source))
                .collect();
            ar.files
                .iter()
                .map(|f| &f.path)
                .filter(|p| *p != mf && !listed.contains(*p) && !signatures.contains(*p))
                .cloned()
                .collect()
        }
        None => Vec::new(),
    };

    Ok(Package {
        entry_definitions: layout.entry_definitions,
        tosca_definitions_version,
        manifest_path: layout.manifest,
        change_log_path: layout.change_log,
        licenses_path: layout.licenses,
        certificate_path: layout.certificate,
        tests_path: layout.tests,
        metadata,
        files: ar.files,
        manifest_entries,
        manifest_signature,
        signatures,
        files_not_in_manifest,
        software_images,
        tosca_meta: layout.tosca_meta,
    })
}

/// Streams the entry `name` of the package at `path` to `f`, without extracting it.
///
/// The archive is checked as by [`open`] (names, duplicates, encryption, sizes, ratios) but its
/// TOSCA content is not. The reader given to `f` yields the entry's uncompressed bytes and fails
/// if the entry inflates past its declared size or its CRC-32 does not match. Whatever `f` leaves
/// unread is read and discarded afterwards, so those checks always run; an `Ok` result therefore
/// means the whole entry was intact. An error returned by `f` itself is reported as
/// [`CsarError::Io`] unless it was caused by one of those checks.
pub fn with_entry<T, F>(path: &Path, name: &str, limits: &Limits, f: F) -> Result<T, CsarError>
where
    F: FnOnce(&mut dyn Read) -> io::Result<T>,
{
    let mut ar = Archive::open(BufReader::new(File::open(path)?), limits)?;
    ar.stream(name, f)
}

/// Parses a TOSCA `scalar-unit.size` (e.g. `"1 GB"`, `"512 MiB"`, `"1.5 GiB"`) into bytes.
///
/// Units (case-insensitive): B, kB, KiB, MB, MiB, GB, GiB, TB, TiB; SI units are powers of 1000,
/// binary ones powers of 1024. A bare number is taken as bytes. Fractions of a byte are dropped.
pub fn parse_scalar_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let unit = unit.trim();
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err("expected a non-negative number followed by a unit".into());
    }
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit {unit:?}")),
    };
    let int_part = int_part.trim_start_matches('0');
    let frac = frac_part.trim_end_matches('0');
    if int_part.len() + frac.len() > 30 {
        return Err("number too large".into());
    }
    let mut digits: u128 = 0;
    for c in int_part.chars().chain(frac.chars()) {
        let d = u128::from(c.to_digit(10).ok_or("invalid digit")?);
        digits = digits * 10 + d;
    }
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = digits.checked_mul(mult).ok_or("number too large")? / scale;
    u64::try_from(bytes).map_err(|_| "number too large".to_string())
}

// ---------------------------------------------------------------------------------------------
// Archive: a zip checked against hostile content, with bounded reads.

struct Archive<R> {
    zip: ZipArchive<R>,
    files: Vec<FileEntry>,
    /// File name -> (zip index, declared size).
    index: HashMap<String, (usize, u64)>,
}

impl<R: Read + Seek> Archive<R> {
    fn open(mut reader: R, limits: &Limits) -> Result<Archive<R>, CsarError> {
        precheck_entry_count(&mut reader, limits)?;
        reader.seek(SeekFrom::Start(0))?;
        let mut zip = ZipArchive::new(reader).map_err(|e| CsarError::NotZip(e.to_string()))?;
        if zip.offset() != 0 {
            return Err(CsarError::NotZip(format!(
                "{} bytes of unexpected data precede the archive",
                zip.offset()
            )));
        }
        if zip.len() > limits.max_entries {
            return Err(CsarError::TooManyEntries {
                count: zip.len() as u64,
                limit: limits.max_entries,
            });
        }
        if zip.has_duplicate_names() {
            let start = zip.central_directory_start();
            let name = find_duplicate_name(&mut zip.into_inner(), start, limits.max_entries)
                .unwrap_or_else(|| "<unknown>".to_string());
            return Err(CsarError::DuplicateEntry(name));
        }

        let mut files = Vec::new();
        let mut index = HashMap::new();
        let mut total: u64 = 0;
        for i in 0..zip.len() {
            let entry = zip.by_index_data(i).map_err(|e| CsarError::NotZip(e.to_string()))?;
            let name = match entry.name() {
                Ok(n) => n.into_owned(),
                Err(e) => return Err(CsarError::NotZip(e.to_string())),
            };
            if entry.name_raw().contains(&0) {
                return Err(CsarError::UnsafeEntryName {
                    name,
                    reason: "contains a NUL byte",
                });
            }
            if let Err(reason) = check_entry_name(&name) {
                return Err(CsarError::UnsafeEntryName { name, reason });
            }
            if entry.encrypted() {
                return Err(CsarError::EncryptedEntry(name));
            }
            let is_dir = name.ends_with('/');
            if let Some(mode) = entry.unix_mode() {
                match mode & 0o170000 {
                    0 | 0o100000 | 0o040000 => {}
                    0o120000 => return Err(CsarError::SymlinkEntry(name)),
                    _ => return Err(CsarError::SpecialFileEntry(name)),
                }
            }
            let method = entry.compression();
            if !zip::SUPPORTED_COMPRESSION_METHODS.contains(&method) {
                return Err(CsarError::UnsupportedCompression {
                    path: name,
                    method: format!("{method:?}"),
                });
            }
            let size = entry.size();
            let compressed = entry.compressed_size();
            if !is_dir && size > limits.ratio_min_size && size / limits.max_ratio.max(1) > compressed {
                return Err(CsarError::CompressionRatioExceeded {
                    path: name,
                    size,
                    compressed,
                    limit: limits.max_ratio,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_total_uncompressed {
                return Err(CsarError::TotalSizeExceeded {
                    limit: limits.max_total_uncompressed,
                });
            }
            if !is_dir {
                index.insert(name.clone(), (i, size));
                files.push(FileEntry {
                    path: name,
                    size,
                    compressed_size: compressed,
                });
            }
        }
        if zip
            .has_overlapping_files()
            .map_err(|e| CsarError::NotZip(e.to_string()))?
        {
            return Err(CsarError::OverlappingEntries);
        }
        Ok(Archive { zip, files, index })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A file, or a directory holding at least one file.
    fn contains_file_or_dir(&self, name: &str) -> bool {
        if self.contains(name) {
            return true;
        }
        let prefix = format!("{}/", name.trim_end_matches('/'));
        self.files.iter().any(|f| f.path.starts_with(&prefix))
    }

    fn stream<T, F>(&mut self, name: &str, f: F) -> Result<T, CsarError>
    where
        F: FnOnce(&mut dyn Read) -> io::Result<T>,
    {
        let (idx, declared) = *self
            .index
            .get(name)
            .ok_or_else(|| CsarError::EntryNotFound(name.to_string()))?;
        let mut zf = self.zip.by_index(idx).map_err(|e| CsarError::CorruptEntry {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
        let mut guard = GuardedReader {
            inner: &mut zf,
            declared,
            read: 0,
            failure: None,
        };
        let result = match f(&mut guard) {
            Ok(v) => io::copy(&mut guard, &mut io::sink()).map(|_| v),
            Err(e) => Err(e),
        };
        if let Some(failure) = guard.failure.take() {
            return Err(match failure {
                GuardFailure::Overflow => CsarError::EntryLargerThanDeclared {
                    path: name.to_string(),
                    declared,
                },
                GuardFailure::Corrupt(reason) => CsarError::CorruptEntry {
                    path: name.to_string(),
                    reason,
                },
            });
        }
        result.map_err(CsarError::Io)
    }

    fn read_text(&mut self, name: &str, limits: &Limits) -> Result<String, CsarError> {
        let (_, size) = *self
            .index
            .get(name)
            .ok_or_else(|| CsarError::EntryNotFound(name.to_string()))?;
        if size > limits.max_text_bytes {
            return Err(CsarError::TextTooLarge {
                path: name.to_string(),
                size,
                limit: limits.max_text_bytes,
            });
        }
        let bytes = self.stream(name, |r| {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            r.read_to_end(&mut buf)?;
            Ok(buf)
        })?;
        let mut text = String::from_utf8(bytes).map_err(|_| CsarError::InvalidText { path: name.to_string() })?;
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        Ok(text)
    }

    fn hash(&mut self, name: &str, algo: HashAlgo) -> Result<String, CsarError> {
        self.stream(name, |r| {
            let mut hasher = algo.hasher();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(hasher.finish_hex())
        })
    }
}

enum GuardFailure {
    Overflow,
    Corrupt(String),
}

/// Counts the bytes an entry yields and fails once they pass the declared size; records why the
/// inner reader failed so that the caller gets a precise error.
struct GuardedReader<'a> {
    inner: &'a mut dyn Read,
    declared: u64,
    read: u64,
    failure: Option<GuardFailure>,
}

impl Read for GuardedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "entry already failed"));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.read = self.read.saturating_add(n as u64);
                if self.read > self.declared {
                    self.failure = Some(GuardFailure::Overflow);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "entry larger than its declared size",
                    ));
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let msg = e.to_string();
                // The zip crate enforces the declared size itself and reports it this way.
                if msg.to_ascii_lowercase().contains("declared uncompressed size") {
                    self.failure = Some(GuardFailure::Overflow);
                } else if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                    let reason = if msg == "Invalid checksum" {
                        "CRC-32 mismatch".to_string()
                    } else {
                        msg
                    };
                    self.failure = Some(GuardFailure::Corrupt(reason));
                }
                Err(e)
            }
        }
    }
}

fn rd16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}
fn rd64(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CDFH_SIG: u32 = 0x0201_4b50;

/// Reads the entry count from the end-of-central-directory record before the zip crate loads the
/// whole central directory into memory, so that an archive with millions of entries is refused
/// cheaply. Best effort: anything it cannot make sense of is left to the zip crate.
fn precheck_entry_count<R: Read + Seek>(file: &mut R, limits: &Limits) -> Result<(), CsarError> {
    let len = file.seek(SeekFrom::End(0))?;
    let tail_len = len.min(22 + 0xFFFF);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    if tail.len() < 22 {
        return Ok(());
    }
    let Some(pos) = (0..=tail.len() - 22).rev().find(|&i| rd32(&tail, i) == Some(EOCD_SIG)) else {
        return Ok(());
    };
    let (Some(entries), Some(cd_size), Some(cd_off)) =
        (rd16(&tail, pos + 10), rd32(&tail, pos + 12), rd32(&tail, pos + 16))
    else {
        return Ok(());
    };
    let mut count = u64::from(entries);
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        let eocd_abs = len - tail_len + pos as u64;
        if eocd_abs >= 20 {
            let mut loc = [0u8; 20];
            file.seek(SeekFrom::Start(eocd_abs - 20))?;
            file.read_exact(&mut loc)?;
            if rd32(&loc, 0) == Some(EOCD64_LOCATOR_SIG) {
                if let Some(off) = rd64(&loc, 8) {
                    let mut rec = [0u8; 56];
                    if off.checked_add(56).is_some_and(|end| end <= len) {
                        file.seek(SeekFrom::Start(off))?;
                        file.read_exact(&mut rec)?;
                        if rd32(&rec, 0) == Some(EOCD64_SIG) {
                            count = count.max(rd64(&rec, 32).unwrap_or(0));
                        }
                    }
                }
            }
        }
    }
    if count > limits.max_entries as u64 {
        return Err(CsarError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    Ok(())
}

/// Walks the central directory headers and returns the first name seen twice.
fn find_duplicate_name<R: Read + Seek>(r: &mut R, start: u64, max_entries: usize) -> Option<String> {
    r.seek(SeekFrom::Start(start)).ok()?;
    let mut seen = HashSet::new();
    for _ in 0..=max_entries {
        let mut hdr = [0u8; 46];
        r.read_exact(&mut hdr).ok()?;
        if rd32(&hdr, 0)? != CDFH_SIG {
            return None;
        }
        let name_len = usize::from(rd16(&hdr, 28)?);
        let skip = i64::from(rd16(&hdr, 30)?) + i64::from(rd16(&hdr, 32)?);
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).ok()?;
        r.seek(SeekFrom::Current(skip)).ok()?;
        if !seen.insert(name.clone()) {
            return Some(String::from_utf8_lossy(&name).into_owned());
        }
    }
    None
}

/// Accepts only plain relative paths: no absolute or drive paths, no backslashes, no control
/// characters, no empty, `.` or `..` components (a trailing `/` marks a directory).
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("drive-letter path");
    }
    let body = name.strip_suffix('/').unwrap_or(name);
    for comp in body.split('/') {
        match comp {
            "" => return Err("empty path component"),
            "." => return Err("'.' path component"),
            ".." => return Err("'..' path component"),
            _ => {}
        }
    }
    Ok(())
}

/// Joins `rel` to the directory `base_dir` (both `/`-separated, relative to the package root) and
/// resolves `.` and `..`. `None` if the result would leave the root or `rel` is not a plain path.
fn normalize_rel(base_dir: &str, rel: &str) -> Option<String> {
    let rel = rel.trim();
    if rel.is_empty() || rel.contains('\\') || rel.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = base_dir.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    for comp in rel.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

fn parent_dir(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn is_yaml(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}

fn is_signature_file(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let file = lower.rsplit('/').next().unwrap_or(&lower);
    [".cert", ".crt", ".pem", ".cms", ".p7s", ".p7b", ".sig", ".sm"]
        .iter()
        .any(|ext| file.ends_with(ext))
        || file.contains(".sig.")
}

fn is_uri(s: &str) -> bool {
    match s.find("://") {
        Some(i) if i > 0 => {
            let scheme = &s[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points: TOSCA.meta (option 1) or the single root YAML (option 2).

#[derive(Default)]
struct Layout {
    tosca_meta: Vec<(String, String)>,
    entry_definitions: String,
    manifest: Option<String>,
    change_log: Option<String>,
    licenses: Option<String>,
    certificate: Option<String>,
    tests: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKey {
    Definitions,
    Manifest,
    ChangeLog,
    Licenses,
    Certificate,
    Tests,
}

fn entry_key(key: &str) -> Option<EntryKey> {
    let k = key.trim().to_ascii_lowercase();
    let k = k.strip_prefix("etsi-").unwrap_or(&k);
    Some(match k {
        "entry-definitions" => EntryKey::Definitions,
        "entry-manifest" => EntryKey::Manifest,
        "entry-change-log" => EntryKey::ChangeLog,
        "entry-licenses" => EntryKey::Licenses,
        "entry-certificate" => EntryKey::Certificate,
        "entry-tests" => EntryKey::Tests,
        _ => return None,
    })
}

/// Parses `TOSCA.meta`: blocks of `Key: Value` lines separated by blank lines; a line starting
/// with a space continues the previous value.
fn parse_tosca_meta(text: &str) -> Result<Vec<Vec<(String, String)>>, CsarError> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (n, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some(block) = blocks.last_mut() else { continue };
        if line.starts_with(' ') || line.starts_with('\t') {
            match block.last_mut() {
                Some((_, v)) => v.push_str(line.trim_start()),
                None => {
                    return Err(CsarError::InvalidToscaMeta(format!(
                        "line {}: continuation without a key",
                        n + 1
                    )))
                }
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(CsarError::InvalidToscaMeta(format!(
                "line {}: expected 'Key: Value'",
                n + 1
            )));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(CsarError::InvalidToscaMeta(format!("line {}: empty key", n + 1)));
        }
        if block.iter().any(|(bk, _)| bk.eq_ignore_ascii_case(k)) {
            return Err(CsarError::InvalidToscaMeta(format!(
                "line {}: duplicate key {k}",
                n + 1
            )));
        }
        block.push((k.to_string(), v.trim().to_string()));
    }
    if blocks.last().is_some_and(Vec::is_empty) {
        blocks.pop();
    }
    Ok(blocks)
}

fn apply_entry(layout: &mut Layout, key: EntryKey, raw_key: &str, value: &str) -> Result<(), CsarError> {
    let path = normalize_rel("", value.trim_end_matches('/')).ok_or_else(|| {
        CsarError::InvalidToscaMeta(format!(
            "{raw_key}: {value:?} is not a relative path inside the package"
        ))
    })?;
    match key {
        EntryKey::Definitions => layout.entry_definitions = path,
        EntryKey::Manifest => layout.manifest = Some(path),
        EntryKey::ChangeLog => layout.change_log = Some(path),
        EntryKey::Licenses => layout.licenses = Some(path),
        EntryKey::Certificate => layout.certificate = Some(path),
        EntryKey::Tests => layout.tests = Some(path),
    }
    Ok(())
}

fn check_layout<R: Read + Seek>(ar: &Archive<R>, layout: &Layout) -> Result<(), CsarError> {
    if !ar.contains(&layout.entry_definitions) {
        return Err(CsarError::MissingEntryDefinitions(layout.entry_definitions.clone()));
    }
    let files = [
        ("ETSI-Entry-Manifest", &layout.manifest),
        ("ETSI-Entry-Change-Log", &layout.change_log),
    ];
    for (key, path) in files {
        if let Some(p) = path {
            if !ar.contains(p) {
                return Err(CsarError::MissingReferencedFile {
                    key: key.into(),
                    path: p.clone(),
                });
            }
        }
    }
    let file_or_dir = [
        ("ETSI-Entry-Certificate", &layout.certificate),
        ("ETSI-Entry-Licenses", &layout.licenses),
        ("ETSI-Entry-Tests", &layout.tests),
    ];
    for (key, path) in file_or_dir {
        if let Some(p) = path {
            if !ar.contains_file_or_dir(p) {
                return Err(CsarError::MissingReferencedFile {
                    key: key.into(),
                    path: p.clone(),
                });
            }
        }
    }
    Ok(())
}

/// A root `.mf` named after the entry definitions file, else the only root `.mf`.
fn default_manifest<R: Read + Seek>(ar: &Archive<R>, entry_definitions: &str) -> Option<String> {
    let file = entry_definitions.rsplit('/').next().unwrap_or(entry_definitions);
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let same_name = format!("{stem}.mf");
    if ar.contains(&same_name) {
        return Some(same_name);
    }
    let root_mfs: Vec<&String> = ar
        .files
        .iter()
        .map(|f| &f.path)
        .filter(|p| !p.contains('/') && p.to_ascii_lowercase().ends_with(".mf"))
        .collect();
    match root_mfs.as_slice() {
        [only] => Some((*only).clone()),
        _ => None,
    }
}

fn layout_from_tosca_meta<R: Read + Seek>(ar: &mut Archive<R>, limits: &Limits) -> Result<Layout, CsarError> {
    let text = ar.read_text(TOSCA_META_PATH, limits)?;
    let blocks = parse_tosca_meta(&text)?;
    let first = blocks
        .first()
        .ok_or_else(|| CsarError::InvalidToscaMeta("empty file".into()))?;
    let mut layout = Layout::default();
    let mut has_definitions = false;
    for (k, v) in first {
        if let Some(key) = entry_key(k) {
            has_definitions |= key == EntryKey::Definitions;
            apply_entry(&mut layout, key, k, v)?;
        }
    }
    if !has_definitions {
        return Err(CsarError::InvalidToscaMeta("no Entry-Definitions".into()));
    }
    if layout.manifest.is_none() {
        layout.manifest = default_manifest(ar, &layout.entry_definitions);
    }
    layout.tosca_meta = blocks.into_iter().flatten().collect();
    check_layout(ar, &layout)?;
    Ok(layout)
}

fn layout_from_root_yaml<R: Read + Seek>(ar: &mut Archive<R>, limits: &Limits) -> Result<Layout, CsarError> {
    let roots: Vec<String> = ar
        .files
        .iter()
        .map(|f| f.path.clone())
        .filter(|p| !p.contains('/') && is_yaml(p))
        .collect();
    let entry = match roots.as_slice() {
        [] => return Err(CsarError::NoEntryDefinitions),
        [only] => only.clone(),
        _ => return Err(CsarError::AmbiguousEntryDefinitions(roots)),
    };
    let text = ar.read_text(&entry, limits)?;
    let doc = parse_yaml(&entry, &text)?;
    let mut layout = Layout {
        entry_definitions: entry.clone(),
        ..Layout::default()
    };
    layout.tosca_meta.push(("Entry-Definitions".to_string(), entry.clone()));
    if let Some(meta) = get(&doc, "metadata").and_then(Value::as_mapping) {
        for (k, v) in meta {
            let (Some(k), Some(v)) = (scalar_string(untag(k)), scalar_string(untag(v))) else {
                continue;
            };
            match entry_key(&k) {
                Some(EntryKey::Definitions) | None => {}
                Some(key) => {
                    apply_entry(&mut layout, key, &k, &v)?;
                    layout.tosca_meta.push((k, v));
                }
            }
        }
    }
    let stem = entry.rsplit_once('.').map_or(entry.as_str(), |(s, _)| s).to_string();
    if layout.manifest.is_none() {
        layout.manifest = default_manifest(ar, &entry);
    }
    if layout.certificate.is_none() && ar.contains(&format!("{stem}.cert")) {
        layout.certificate = Some(format!("{stem}.cert"));
    }
    if layout.change_log.is_none() && ar.contains("ChangeLog.txt") {
        layout.change_log = Some("ChangeLog.txt".to_string());
    }
    check_layout(ar, &layout)?;
    Ok(layout)
}

// ---------------------------------------------------------------------------------------------
// Manifest.

#[derive(Debug)]
struct ParsedManifest {
    metadata: Vec<(String, String)>,
    entries: Vec<ManifestEntry>,
    signature: Option<String>,
}

const CMS_BEGIN: &str = "-----BEGIN CMS-----";
const CMS_END: &str = "-----END CMS-----";

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Parses a SOL004 manifest: a `metadata:` block of `key: value` lines, `Source`/`Algorithm`/
/// `Hash` blocks (optionally `Signature`/`Certificate`), other sections such as ONAP's
/// `non_mano_artifact_sets:` (skipped), and an optional CMS signature block at the end.
fn parse_manifest(path: &str, text: &str) -> Result<ParsedManifest, CsarError> {
    let err = |line: usize, reason: &str| CsarError::InvalidManifest {
        path: path.to_string(),
        line,
        reason: reason.to_string(),
    };
    let lines: Vec<&str> = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();

    // Split off the CMS block.
    let mut body_end = lines.len();
    let mut signature = None;
    if let Some(begin) = lines.iter().position(|l| l.trim() == CMS_BEGIN) {
        let end = lines[begin..]
            .iter()
            .position(|l| l.trim() == CMS_END)
            .map(|i| begin + i)
            .ok_or_else(|| err(begin + 1, "CMS signature block has no -----END CMS----- line"))?;
        if let Some(extra) = lines[end + 1..].iter().position(|l| !l.trim().is_empty()) {
            return Err(err(end + 2 + extra, "content after the CMS signature block"));
        }
        let sig: Vec<&str> = lines[begin..=end].iter().map(|l| l.trim()).collect();
        signature = Some(sig.join("\n") + "\n");
        body_end = begin;
    }

    #[derive(PartialEq)]
    enum Section {
        Top,
        Metadata,
        Skip,
    }
    let mut section = Section::Top;
    let mut seen_metadata = false;
    let mut metadata = Vec::new();
    let mut entries: Vec<ManifestEntry> = Vec::new();
    let mut current: Option<(usize, ManifestEntry)> = None;

    fn finish(
        current: &mut Option<(usize, ManifestEntry)>,
        entries: &mut Vec<ManifestEntry>,
        path: &str,
    ) -> Result<(), CsarError> {
        if let Some((line, e)) = current.take() {
            if e.algorithm.is_some() != e.hash.is_some() {
                return Err(CsarError::InvalidManifest {
                    path: path.to_string(),
                    line,
                    reason: format!("Source {} needs both Algorithm and Hash", e.source),
                });
            }
            entries.push(e);
        }
        Ok(())
    }

    for (i, line) in lines[..body_end].iter().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if trimmed.is_empty() {
            if section == Section::Metadata && !metadata.is_empty() {
                section = Section::Top;
            }
            finish(&mut current, &mut entries, path)?;
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if section == Section::Skip {
            if indented {
                continue;
            }
            section = Section::Top;
        }
        let Some((k, v)) = trimmed.split_once(':') else {
            return Err(err(n, "expected 'key: value'"));
        };
        let key = k.trim();
        let value = unquote(v);
        let lower = key.to_ascii_lowercase();
        if !matches!(lower.as_str(), "algorithm" | "hash" | "signature" | "certificate") {
            // Any other key ends the current Source block.
            finish(&mut current, &mut entries, path)?;
        }
        match lower.as_str() {
            "source" => {
                finish(&mut current, &mut entries, path)?;
                section = Section::Top;
                if value.is_empty() {
                    return Err(err(n, "empty Source"));
                }
                let external = is_uri(&value);
                current = Some((
                    n,
                    ManifestEntry {
                        source: value,
                        algorithm: None,
                        hash: None,
                        signature: None,
                        certificate: None,
                        external,
                        verified: false,
                    },
                ));
            }
            "algorithm" | "hash" | "signature" | "certificate" => {
                let Some((_, e)) = current.as_mut() else {
                    return Err(err(n, &format!("{key} outside a Source block")));
                };
                let slot = match lower.as_str() {
                    "algorithm" => &mut e.algorithm,
                    "hash" => &mut e.hash,
                    "signature" => &mut e.signature,
                    _ => &mut e.certificate,
                };
                if slot.is_some() {
                    return Err(err(n, &format!("duplicate {key} in a Source block")));
                }
                if value.is_empty() {
                    return Err(err(n, &format!("empty {key}")));
                }
                *slot = Some(if lower == "hash" {
                    value.to_ascii_lowercase()
                } else {
                    value
                });
            }
            "metadata" if value.is_empty() && !indented => {
                if seen_metadata {
                    return Err(err(n, "second metadata block"));
                }
                seen_metadata = true;
                section = Section::Metadata;
            }
            _ if section == Section::Metadata => metadata.push((key.to_string(), value)),
            _ if value.is_empty() && !indented => section = Section::Skip,
            // Unknown top-level `key: value` lines are tolerated.
            _ => {}
        }
    }
    finish(&mut current, &mut entries, path)?;
    Ok(ParsedManifest {
        metadata,
        entries,
        signature,
    })
}

#[derive(Clone, Copy)]
enum HashAlgo {
    Sha256,
    Sha384,
    Sha512,
}

enum AnyHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl HashAlgo {
    fn parse(name: &str) -> Option<HashAlgo> {
        let n: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_uppercase();
        match n.as_str() {
            "SHA256" => Some(HashAlgo::Sha256),
            "SHA384" => Some(HashAlgo::Sha384),
            "SHA512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }
    fn hex_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 64,
            HashAlgo::Sha384 => 96,
            HashAlgo::Sha512 => 128,
        }
    }
    fn hasher(self) -> AnyHasher {
        match self {
            HashAlgo::Sha256 => AnyHasher::Sha256(Sha256::new()),
            HashAlgo::Sha384 => AnyHasher::Sha384(Sha384::new()),
            HashAlgo::Sha512 => AnyHasher::Sha512(Sha512::new()),
        }
    }
}

impl AnyHasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Sha384(h) => h.update(data),
            AnyHasher::Sha512(h) => h.update(data),
        }
    }
    fn finish_hex(self) -> String {
        match self {
            AnyHasher::Sha256(h) => hex::encode(h.finalize()),
            AnyHasher::Sha384(h) => hex::encode(h.finalize()),
            AnyHasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Verifies the digest of every manifest entry inside the package, collecting all failures.
/// Hostile-archive errors met while reading abort at once.
fn verify_manifest<R: Read + Seek>(ar: &mut Archive<R>, entries: &mut [ManifestEntry]) -> Result<(), CsarError> {
    let mut failures = Vec::new();
    for e in entries.iter_mut() {
        if e.external {
            continue;
        }
        let fail = |reason| ManifestFailure {
            source: e.source.clone(),
            reason,
        };
        let Some(path) = normalize_rel("", &e.source) else {
            failures.push(fail(ManifestFailureReason::InvalidPath));
            continue;
        };
        if !ar.contains(&path) {
            failures.push(fail(ManifestFailureReason::MissingFile));
            continue;
        }
        let (Some(algorithm), Some(expected)) = (&e.algorithm, &e.hash) else {
            continue;
        };
        let Some(algo) = HashAlgo::parse(algorithm) else {
            failures.push(fail(ManifestFailureReason::UnsupportedAlgorithm {
                algorithm: algorithm.clone(),
            }));
            continue;
        };
        if expected.len() != algo.hex_len() || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
            failures.push(fail(ManifestFailureReason::MalformedHash { hash: expected.clone() }));
            continue;
        }
        let actual = ar.hash(&path, algo)?;
        if actual == *expected {
            e.verified = true;
        } else {
            failures.push(fail(ManifestFailureReason::HashMismatch {
                algorithm: algorithm.clone(),
                expected: expected.clone(),
                actual,
            }));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CsarError::ManifestVerification(failures))
    }
}

// ---------------------------------------------------------------------------------------------
// VNFD.

fn parse_yaml(path: &str, text: &str) -> Result<Value, CsarError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| CsarError::InvalidVnfd {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let doc = untag(&doc).clone();
    if !doc.is_mapping() {
        return Err(CsarError::InvalidVnfd {
            path: path.to_string(),
            reason: "top level is not a mapping".into(),
        });
    }
    Ok(doc)
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        _ => v,
    }
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    untag(v).as_mapping()?.get(key).map(untag)
}

fn scalar_string(v: &Value) -> Option<String> {
    match untag(v) {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn normalize_checksum_algorithm(a: &str) -> String {
    match HashAlgo::parse(a) {
        Some(HashAlgo::Sha256) => "sha-256".into(),
        Some(HashAlgo::Sha384) => "sha-384".into(),
        Some(HashAlgo::Sha512) => "sha-512".into(),
        None => a.trim().to_ascii_lowercase(),
    }
}

fn parse_checksum(v: &Value) -> Option<(String, String)> {
    match untag(v) {
        Value::Mapping(_) => {
            let algorithm = get(v, "algorithm").and_then(scalar_string)?;
            let hash = get(v, "hash").and_then(scalar_string)?;
            Some((
                normalize_checksum_algorithm(&algorithm),
                hash.trim().to_ascii_lowercase(),
            ))
        }
        Value::String(s) => {
            let s = s.trim();
            if let Some((a, h)) = s.split_once(':') {
                return Some((normalize_checksum_algorithm(a), h.trim().to_ascii_lowercase()));
            }
            let algorithm = match s.len() {
                64 => "sha-256",
                96 => "sha-384",
                128 => "sha-512",
                _ => "unknown",
            };
            Some((algorithm.to_string(), s.to_ascii_lowercase()))
        }
        _ => None,
    }
}

fn size_value(node: &str, field: &str, v: Option<&Value>) -> Result<Option<u64>, CsarError> {
    let Some(v) = v else { return Ok(None) };
    let invalid = |value: String, reason: String| CsarError::InvalidScalarSize {
        node: node.to_string(),
        field: field.to_string(),
        value,
        reason,
    };
    match untag(v) {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(n.to_string(), "not a whole number of bytes".into())),
        Value::String(s) => parse_scalar_size(s).map(Some).map_err(|r| invalid(s.clone(), r)),
        _ => Err(invalid(format!("{v:?}"), "not a scalar-unit.size".into())),
    }
}

/// Resolves an artifact `file` against the directory of the YAML that declares it. Returns the
/// normalised zip path (or the URI unchanged) and whether it is an entry of the package.
fn resolve_artifact<R: Read + Seek>(
    ar: &Archive<R>,
    yaml_path: &str,
    node: &str,
    file: &str,
) -> Result<(String, bool), CsarError> {
    let file = file.trim();
    if is_uri(file) {
        return Ok((file.to_string(), false));
    }
    let escapes = || CsarError::ArtifactPathEscapes {
        node: node.to_string(),
        file: file.to_string(),
    };
    if let Some(rooted) = file.strip_prefix('/') {
        let p = normalize_rel("", rooted).ok_or_else(escapes)?;
        let found = ar.contains(&p);
        return Ok((p, found));
    }
    let p = normalize_rel(parent_dir(yaml_path), file).ok_or_else(escapes)?;
    if ar.contains(&p) {
        return Ok((p, true));
    }
    // Some packages write artifact paths relative to the package root.
    if let Some(root_rel) = normalize_rel("", file) {
        if ar.contains(&root_rel) {
            return Ok((root_rel, true));
        }
    }
    Ok((p, false))
}

fn images_from_doc<R: Read + Seek>(doc: &Value, yaml_path: &str, ar: &Archive<R>) -> Result<Vec<SwImage>, CsarError> {
    let mut out = Vec::new();
    let Some(templates) = get(doc, "topology_template")
        .and_then(|t| get(t, "node_templates"))
        .and_then(Value::as_mapping)
    else {
        return Ok(out);
    };
    for (name, node) in templates {
        let Some(node_name) = scalar_string(name) else { continue };
        let data = get(node, "properties")
            .and_then(|p| get(p, "sw_image_data"))
            .filter(|d| d.is_mapping());
        let artifacts = get(node, "artifacts").and_then(Value::as_mapping);
        let artifact_count = artifacts.map_or(0, |a| a.len());

        // (file, artifact properties) of each software image artifact.
        let mut sw_artifacts: Vec<(Option<String>, Option<&Value>)> = Vec::new();
        for (aname, art) in artifacts.into_iter().flatten() {
            let aname = scalar_string(aname).unwrap_or_default();
            match untag(art) {
                // Short form: taken as the image when named `sw_image`, or when it is the only
                // artifact of a node with sw_image_data.
                Value::String(file) if aname == "sw_image" || (data.is_some() && artifact_count == 1) => {
                    sw_artifacts.push((Some(file.clone()), None));
                }
                Value::Mapping(_) => {
                    let ty = get(art, "type").and_then(scalar_string).unwrap_or_default();
                    if ty.ends_with("SwImage") {
                        sw_artifacts.push((get(art, "file").and_then(scalar_string), get(art, "properties")));
                    }
                }
                _ => {}
            }
        }
        if data.is_none() && sw_artifacts.is_empty() {
            continue;
        }
        if sw_artifacts.is_empty() {
            sw_artifacts.push((None, None));
        }
        for (file, art_props) in sw_artifacts {
            let field = |k: &str| {
                data.and_then(|d| get(d, k))
                    .or_else(|| art_props.and_then(|p| get(p, k)))
            };
            let text = |k: &str| field(k).and_then(scalar_string);
            let (file, in_package) = match file {
                Some(f) => {
                    let (p, found) = resolve_artifact(ar, yaml_path, &node_name, &f)?;
                    (Some(p), found)
                }
                None => (None, false),
            };
            out.push(SwImage {
                node: node_name.clone(),
                name: text("name"),
                version: text("version"),
                checksum: field("checksum").and_then(parse_checksum),
                container_format: text("container_format"),
                disk_format: text("disk_format"),
                min_disk: size_value(&node_name, "min_disk", field("min_disk"))?,
                min_ram: size_value(&node_name, "min_ram", field("min_ram"))?,
                size: size_value(&node_name, "size", field("size"))?,
                operating_system: text("operating_system"),
                file,
                in_package,
            });
        }
    }
    Ok(out)
}

/// A VNF property from node templates, or the default / single valid value in node types.
fn vnf_property(docs: &[(String, Value)], key: &str) -> Option<String> {
    for (_, doc) in docs {
        let templates = get(doc, "topology_template")
            .and_then(|t| get(t, "node_templates"))
            .and_then(Value::as_mapping);
        for (_, node) in templates.into_iter().flatten() {
            let props = get(node, "properties");
            if props.and_then(|p| get(p, "descriptor_id")).is_some() {
                if let Some(v) = props.and_then(|p| get(p, key)).and_then(scalar_string) {
                    return Some(v);
                }
            }
        }
        let types = get(doc, "node_types").and_then(Value::as_mapping);
        for (_, ty) in types.into_iter().flatten() {
            let props = get(ty, "properties");
            if props.and_then(|p| get(p, "descriptor_id")).is_none() {
                continue;
            }
            let Some(def) = props.and_then(|p| get(p, key)) else {
                continue;
            };
            if let Some(v) = get(def, "default").and_then(scalar_string) {
                return Some(v);
            }
            for c in get(def, "constraints")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                if let Some(v) = get(c, "equal").and_then(scalar_string) {
                    return Some(v);
                }
                if let Some([only]) = get(c, "valid_values").and_then(Value::as_sequence).map(Vec::as_slice) {
                    if let Some(v) = scalar_string(only) {
                        return Some(v);
                    }
                }
            }
        }
    }
    None
}

fn build_metadata(manifest_meta: Vec<(String, String)>, docs: &[(String, Value)]) -> PackageMetadata {
    let from = |pairs: &[(String, String)], names: &[&str]| {
        names.iter().find_map(|n| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        })
    };
    let provider_keys = ["vnf_provider_id", "vnf_provider", "pnfd_provider", "pnf_provider_id"];
    let product_keys = ["vnf_product_name", "pnfd_name", "pnf_product_name"];
    let release_keys = [
        "vnf_release_date_time",
        "vnf_release_data_time",
        "pnfd_release_date_time",
        "pnf_release_date_time",
    ];
    let version_keys = ["vnf_package_version", "pnfd_archive_version", "pnf_package_version"];
    let vnfd_id_keys = ["vnfd_id", "pnfd_id"];
    let software_keys = ["vnf_software_version", "pnf_software_version"];
    let spec_keys = ["compatible_specification_versions"];

    let vnfd_meta: Vec<(String, String)> = docs
        .first()
        .and_then(|(_, d)| get(d, "metadata"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((scalar_string(k)?, scalar_string(v)?)))
        .collect();

    let m = &manifest_meta;
    PackageMetadata {
        vnf_provider_id: from(m, &provider_keys)
            .or_else(|| from(&vnfd_meta, &provider_keys))
            .or_else(|| vnf_property(docs, "provider"))
            .or_else(|| from(&vnfd_meta, &["template_author"])),
        vnf_product_name: from(m, &product_keys)
            .or_else(|| from(&vnfd_meta, &product_keys))
            .or_else(|| vnf_property(docs, "product_name"))
            .or_else(|| from(&vnfd_meta, &["template_name"])),
        vnf_release_date_time: from(m, &release_keys).or_else(|| from(&vnfd_meta, &release_keys)),
        vnf_package_version: from(m, &version_keys)
            .or_else(|| from(&vnfd_meta, &version_keys))
            .or_else(|| vnf_property(docs, "descriptor_version"))
            .or_else(|| from(&vnfd_meta, &["template_version"])),
        vnfd_id: from(m, &vnfd_id_keys)
            .or_else(|| from(&vnfd_meta, &vnfd_id_keys))
            .or_else(|| vnf_property(docs, "descriptor_id")),
        vnf_software_version: from(m, &software_keys)
            .or_else(|| from(&vnfd_meta, &software_keys))
            .or_else(|| vnf_property(docs, "software_version")),
        compatible_specification_versions: from(m, &spec_keys).or_else(|| from(&vnfd_meta, &spec_keys)),
        manifest_metadata: manifest_meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    type Files = Vec<(String, Vec<u8>)>;

    fn sha256_hex(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// A qcow2-looking blob: the qcow2 magic and version, then pseudo-random bytes.
    fn image_bytes() -> Vec<u8> {
        let mut v = b"QFI\xfb\0\0\0\x03".to_vec();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push((x >> 7) as u8);
        }
        v
    }

    const TOSCA_META: &str = "TOSCA-Meta-File-Version: 1.0\r\n\
CSAR-Version: 1.1\r\n\
Created-By: Example Vendor\r\n\
Entry-Definitions: Definitions/vnfd.yaml\r\n\
ETSI-Entry-Manifest: vnfd.mf\r\n\
ETSI-Entry-Change-Log: Files/ChangeLog.txt\r\n\
ETSI-Entry-Certificate: Files/Certificates/vnfd.cert\r\n";

    fn vnfd(image_hash: &str) -> String {
        format!(
            r#"tosca_definitions_version: tosca_simple_yaml_1_3
description: Sample VNF with one VDU
imports:
  - etsi_nfv_sol001_common_types.yaml
  - etsi_nfv_sol001_vnfd_types.yaml
metadata:
  template_name: sample-vnf
  template_author: Example Vendor
  template_version: '1.0'
topology_template:
  node_templates:
    VNF:
      type: tosca.nodes.nfv.VNF
      properties:
        descriptor_id: b1bb0ce7-ebca-4fa7-95ed-4840d70a1177
        descriptor_version: '1.0'
        provider: Example Vendor
        product_name: Sample VNF
        software_version: '1.0'
        flavour_id: simple
    VDU1:
      type: tosca.nodes.nfv.Vdu.Compute
      properties:
        name: VDU1
        sw_image_data:
          name: cirros-0.5.2
          version: '0.5.2'
          checksum:
            algorithm: sha-256
            hash: {image_hash}
          container_format: bare
          disk_format: qcow2
          min_disk: 1 GB
          min_ram: 512 MB
          size: 1 GiB
          operating_system: cirros
      artifacts:
        sw_image:
          type: tosca.artifacts.nfv.SwImage
          file: ../Files/images/cirros.qcow2
    VirtualStorage:
      type: tosca.nodes.nfv.Vdu.VirtualBlockStorage
      properties:
        virtual_block_storage_data:
          size_of_storage: 1 GB
        sw_image_data:
          name: data-disk
          version: '1'
          checksum: {image_hash}
          container_format: bare
          disk_format: raw
          min_disk: 2 GiB
          size: 1.5 GB
      artifacts:
        sw_image: https://images.example.com/data-disk.img
"#
        )
    }

    const CMS: &str = "-----BEGIN CMS-----\nMIIBdwYJKoZIhvcNAQcCoIIBaDCCAWQCAQExDTALBglghkgBZQMEAgEwCwYJKoZI\nhvcNAQcBMYIBQTCCAT0CAQEwFjARMQ8wDQYDVQQDDAZ2ZW5kb3I=\n-----END CMS-----\n";

    fn base_files() -> Files {
        let image = image_bytes();
        let hash = sha256_hex(&image);
        vec![
            (TOSCA_META_PATH.to_string(), TOSCA_META.as_bytes().to_vec()),
            ("Definitions/vnfd.yaml".to_string(), vnfd(&hash).into_bytes()),
            ("Files/images/cirros.qcow2".to_string(), image),
            (
                "Files/ChangeLog.txt".to_string(),
                b"2024-05-01 1.0.0 first release\n".to_vec(),
            ),
            (
                "Files/Certificates/vnfd.cert".to_string(),
                b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n".to_vec(),
            ),
        ]
    }

    /// A manifest with SHA-256 digests of `files`, `extra` Source blocks, an ONAP
    /// non_mano_artifact_sets section and a CMS signature.
    fn manifest_for(files: &Files, extra: &str) -> String {
        let mut m = String::from(
            "metadata:\n  vnf_provider_id: Example Vendor\n  vnf_product_name: Sample VNF\n  \
             vnf_release_date_time: 2024-05-01T10:00:00+00:00\n  vnf_package_version: 1.0.0\n  \
             vnfd_id: b1bb0ce7-ebca-4fa7-95ed-4840d70a1177\n  compatible_specification_versions: 2.6.1,3.3.1\n\n",
        );
        for (name, data) in files {
            m.push_str(&format!(
                "Source: {name}\nAlgorithm: SHA-256\nHash: {}\n\n",
                sha256_hex(data)
            ));
        }
        m.push_str(&format!(
            "Source: https://images.example.com/data-disk.img\nAlgorithm: SHA-256\nHash: {}\n\n",
            "ab".repeat(32)
        ));
        m.push_str(extra);
        m.push_str("non_mano_artifact_sets:\n    onap_other:\n        Source: Files/ChangeLog.txt\n\n");
        m.push_str(CMS);
        m
    }

    fn zip_bytes(files: &[(String, Vec<u8>)], method: CompressionMethod) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in files {
            w.start_file(name.as_str(), SimpleFileOptions::default().compression_method(method))
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// The standard package; files named in `tamper` get a byte appended after the manifest is
    /// computed.
    fn standard_bytes(tamper: &[&str], extra_manifest: &str) -> Vec<u8> {
        let mut files = base_files();
        let mf = manifest_for(&files, extra_manifest);
        for (name, data) in files.iter_mut() {
            if tamper.contains(&name.as_str()) {
                data.push(b'X');
            }
        }
        files.push(("vnfd.mf".to_string(), mf.into_bytes()));
        zip_bytes(&files, CompressionMethod::Deflated)
    }

    fn open_bytes(bytes: &[u8], limits: &Limits) -> Result<Package, CsarError> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "pkg.csar", bytes);
        open(&p, limits)
    }

    /// Replaces every occurrence of `from` by `to` (same length) in the raw archive bytes.
    fn rename_raw(bytes: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let (f, t) = (from.as_bytes(), to.as_bytes());
        let mut hits = 0;
        let mut i = 0;
        while i + f.len() <= bytes.len() {
            if &bytes[i..i + f.len()] == f {
                bytes[i..i + f.len()].copy_from_slice(t);
                hits += 1;
                i += f.len();
            } else {
                i += 1;
            }
        }
        assert!(hits >= 2, "expected the name in both headers, found {hits}");
    }

    /// Applies `local` to the 30-byte local header and `central` to the 46-byte central header
    /// of the entry `name`.
    fn patch_headers(bytes: &mut [u8], name: &str, local: impl Fn(&mut [u8]), central: impl Fn(&mut [u8])) {
        let n = name.as_bytes();
        let (mut l, mut c) = (0, 0);
        for i in 0..bytes.len().saturating_sub(30) {
            if bytes[i..i + 4] == *b"PK\x03\x04" && bytes.get(i + 30..i + 30 + n.len()) == Some(n) {
                local(&mut bytes[i..i + 30]);
                l += 1;
            }
            if bytes[i..i + 4] == *b"PK\x01\x02" && bytes.get(i + 46..i + 46 + n.len()) == Some(n) {
                central(&mut bytes[i..i + 46]);
                c += 1;
            }
        }
        assert_eq!((l, c), (1, 1), "headers of {name}");
    }

    fn failures(err: CsarError) -> Vec<ManifestFailure> {
        match err {
            CsarError::ManifestVerification(f) => f,
            other => panic!("expected ManifestVerification, got {other:?}"),
        }
    }

    #[test]
    fn opens_real_shaped_sol004_package() {
        let pkg = open_bytes(&standard_bytes(&[], ""), &Limits::default()).unwrap();
        assert_eq!(pkg.entry_definitions, "Definitions/vnfd.yaml");
        assert_eq!(pkg.tosca_definitions_version, "tosca_simple_yaml_1_3");
        assert_eq!(pkg.manifest_path.as_deref(), Some("vnfd.mf"));
        assert_eq!(pkg.change_log_path.as_deref(), Some("Files/ChangeLog.txt"));
        assert_eq!(pkg.certificate_path.as_deref(), Some("Files/Certificates/vnfd.cert"));
        assert!(pkg
            .tosca_meta
            .contains(&("Created-By".to_string(), "Example Vendor".to_string())));
        assert_eq!(pkg.tosca_meta.len(), 7);

        let m = &pkg.metadata;
        assert_eq!(m.vnf_provider_id.as_deref(), Some("Example Vendor"));
        assert_eq!(m.vnf_product_name.as_deref(), Some("Sample VNF"));
        assert_eq!(m.vnf_release_date_time.as_deref(), Some("2024-05-01T10:00:00+00:00"));
        assert_eq!(m.vnf_package_version.as_deref(), Some("1.0.0"));
        assert_eq!(m.vnfd_id.as_deref(), Some("b1bb0ce7-ebca-4fa7-95ed-4840d70a1177"));
        assert_eq!(
            m.vnf_software_version.as_deref(),
            Some("1.0"),
            "falls back to the VNFD's VNF node"
        );
        assert_eq!(m.compatible_specification_versions.as_deref(), Some("2.6.1,3.3.1"));
        assert_eq!(m.manifest_metadata.len(), 6);

        assert_eq!(pkg.files.len(), 6);
        let image = pkg
            .files
            .iter()
            .find(|f| f.path == "Files/images/cirros.qcow2")
            .unwrap();
        assert_eq!(image.size, image_bytes().len() as u64);

        // 5 packaged files + 1 external; the non-MANO section's Source is not a manifest entry.
        assert_eq!(pkg.manifest_entries.len(), 6);
        assert_eq!(pkg.manifest_entries.iter().filter(|e| e.verified).count(), 5);
        let ext = pkg.manifest_entries.iter().find(|e| e.external).unwrap();
        assert_eq!(ext.source, "https://images.example.com/data-disk.img");
        assert!(!ext.verified);

        assert_eq!(pkg.manifest_signature.as_deref(), Some(CMS));
        assert_eq!(pkg.signatures, vec!["Files/Certificates/vnfd.cert".to_string()]);
        assert!(pkg.files_not_in_manifest.is_empty(), "{:?}", pkg.files_not_in_manifest);

        assert_eq!(pkg.software_images.len(), 2);
        let vdu = &pkg.software_images[0];
        assert_eq!(vdu.node, "VDU1");
        assert_eq!(vdu.name.as_deref(), Some("cirros-0.5.2"));
        assert_eq!(vdu.version.as_deref(), Some("0.5.2"));
        assert_eq!(vdu.checksum, Some(("sha-256".to_string(), sha256_hex(&image_bytes()))));
        assert_eq!(vdu.container_format.as_deref(), Some("bare"));
        assert_eq!(vdu.disk_format.as_deref(), Some("qcow2"));
        assert_eq!(vdu.min_disk, Some(1_000_000_000));
        assert_eq!(vdu.min_ram, Some(512_000_000));
        assert_eq!(vdu.size, Some(1 << 30));
        assert_eq!(vdu.operating_system.as_deref(), Some("cirros"));
        assert_eq!(vdu.file.as_deref(), Some("Files/images/cirros.qcow2"));
        assert!(vdu.in_package);

        let disk = &pkg.software_images[1];
        assert_eq!(disk.node, "VirtualStorage");
        assert_eq!(
            disk.checksum,
            Some(("sha-256".to_string(), sha256_hex(&image_bytes()))),
            "plain-string checksum"
        );
        assert_eq!(disk.min_disk, Some(2 << 30));
        assert_eq!(disk.size, Some(1_500_000_000));
        assert_eq!(disk.min_ram, None);
        assert_eq!(disk.file.as_deref(), Some("https://images.example.com/data-disk.img"));
        assert!(!disk.in_package);
    }

    #[test]
    fn streams_an_image_out_of_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "pkg.csar", &standard_bytes(&[], ""));
        let limits = Limits::default();
        let digest = with_entry(&p, "Files/images/cirros.qcow2", &limits, |r| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes)?;
            Ok(hex::encode(Sha256::digest(&bytes)))
        })
        .unwrap();
        assert_eq!(digest, sha256_hex(&image_bytes()));
        // A callback that reads nothing still gets the whole entry checked.
        assert!(with_entry(&p, "Files/images/cirros.qcow2", &limits, |_| Ok(())).is_ok());
        let err = with_entry(&p, "Files/nope", &limits, |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, CsarError::EntryNotFound(ref n) if n == "Files/nope"),
            "{err:?}"
        );
    }

    #[test]
    fn tampered_file_is_reported() {
        let err = open_bytes(&standard_bytes(&["Files/images/cirros.qcow2"], ""), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "manifest-verification-failed");
        assert!(err.to_string().contains("Files/images/cirros.qcow2"), "{err}");
        let f = failures(err);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].source, "Files/images/cirros.qcow2");
        match &f[0].reason {
            ManifestFailureReason::HashMismatch { expected, actual, .. } => {
                assert_eq!(*expected, sha256_hex(&image_bytes()));
                assert_ne!(expected, actual);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_tampered_files_are_both_reported() {
        let bytes = standard_bytes(&["Files/ChangeLog.txt", "Definitions/vnfd.yaml"], "");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("Files/ChangeLog.txt") && msg.contains("Definitions/vnfd.yaml"),
            "{msg}"
        );
        let mut sources: Vec<String> = failures(err).into_iter().map(|f| f.source).collect();
        sources.sort();
        assert_eq!(sources, vec!["Definitions/vnfd.yaml", "Files/ChangeLog.txt"]);
    }

    #[test]
    fn manifest_listing_missing_file_and_bad_algorithm() {
        let extra = format!(
            "Source: Files/missing.bin\nAlgorithm: SHA-256\nHash: {}\n\n\
             Source: Files/ChangeLog.txt\nAlgorithm: MD5\nHash: d41d8cd98f00b204e9800998ecf8427e\n\n\
             Source: Files/Certificates/vnfd.cert\nAlgorithm: SHA-512\nHash: abc\n\n\
             Source: ../outside.txt\nAlgorithm: SHA-256\nHash: {}\n\n",
            "00".repeat(32),
            "00".repeat(32)
        );
        let err = open_bytes(&standard_bytes(&[], &extra), &Limits::default()).unwrap_err();
        let f = failures(err);
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f[0].source, "Files/missing.bin");
        assert_eq!(f[0].reason, ManifestFailureReason::MissingFile);
        assert_eq!(
            f[1].reason,
            ManifestFailureReason::UnsupportedAlgorithm {
                algorithm: "MD5".into()
            }
        );
        assert_eq!(f[2].reason, ManifestFailureReason::MalformedHash { hash: "abc".into() });
        assert_eq!(f[3].reason, ManifestFailureReason::InvalidPath);
    }

    fn small_zip(names: &[&str]) -> Vec<u8> {
        let files: Files = names.iter().map(|n| (n.to_string(), b"hello".to_vec())).collect();
        zip_bytes(&files, CompressionMethod::Stored)
    }

    #[test]
    fn parent_dir_entry_is_refused() {
        let mut bytes = small_zip(&["Definitions/a.yaml", "xx/evil"]);
        rename_raw(&mut bytes, "xx/evil", "../evil");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::UnsafeEntryName { ref name, .. } if name == "../evil"),
            "{err:?}"
        );

        let mut bytes = small_zip(&["a/xx/b"]);
        rename_raw(&mut bytes, "a/xx/b", "a/../b");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "unsafe-entry-name");
    }

    #[test]
    fn absolute_entries_are_refused() {
        for (from, to) in [
            ("xetc/passwd", "/etc/passwd"),
            ("Cx/x", "C:/x"),
            ("xxsrv/x", "\\\\srv\\x"),
            ("ab", "a\0"),
        ] {
            let mut bytes = small_zip(&[from]);
            rename_raw(&mut bytes, from, to);
            let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
            assert!(matches!(err, CsarError::UnsafeEntryName { .. }), "{to:?}: {err:?}");
        }
        assert_eq!(check_entry_name("/x"), Err("absolute path"));
        assert_eq!(check_entry_name("C:\\x"), Err("contains a backslash"));
        assert_eq!(check_entry_name("C:x"), Err("drive-letter path"));
        assert_eq!(check_entry_name("a//b"), Err("empty path component"));
        assert_eq!(check_entry_name("./a"), Err("'.' path component"));
        assert_eq!(check_entry_name("Files/"), Ok(()));
        assert_eq!(check_entry_name("Files/a.txt"), Ok(()));
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let mut bytes = small_zip(&["Files/AAAA.txt", "Files/BBBB.txt"]);
        rename_raw(&mut bytes, "Files/BBBB.txt", "Files/AAAA.txt");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::DuplicateEntry(ref n) if n == "Files/AAAA.txt"),
            "{err:?}"
        );
    }

    #[test]
    fn encrypted_entry_is_refused() {
        let mut bytes = small_zip(&["Definitions/a.yaml", "Files/secret.bin"]);
        patch_headers(&mut bytes, "Files/secret.bin", |l| l[6] |= 1, |c| c[8] |= 1);
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::EncryptedEntry(ref n) if n == "Files/secret.bin"),
            "{err:?}"
        );
    }

    #[test]
    fn symlink_entry_is_refused() {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("a.yaml", SimpleFileOptions::default()).unwrap();
        w.write_all(b"x: 1\n").unwrap();
        w.add_symlink("Files/link", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::SymlinkEntry(ref n) if n == "Files/link"),
            "{err:?}"
        );
    }

    /// A zip with one entry of 100 MiB of zeros (about 100 KiB compressed), built once.
    fn bomb() -> &'static [u8] {
        static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
        BOMB.get_or_init(|| {
            let mut w = ZipWriter::new(Cursor::new(Vec::new()));
            let opts = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .compression_level(Some(1));
            w.start_file("Files/zeros.bin", opts).unwrap();
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..100 {
                w.write_all(&chunk).unwrap();
            }
            w.finish().unwrap().into_inner()
        })
    }

    #[test]
    fn zip_bomb_ratio_is_refused() {
        let bytes = bomb();
        assert!(bytes.len() < 1 << 20, "fixture should be small, is {}", bytes.len());
        let err = open_bytes(bytes, &Limits::default()).unwrap_err();
        match err {
            CsarError::CompressionRatioExceeded {
                path,
                size,
                compressed,
                limit,
            } => {
                assert_eq!(path, "Files/zeros.bin");
                assert_eq!(size, 100 << 20);
                assert!(compressed < size / 100);
                assert_eq!(limit, 100);
            }
            other => panic!("{other:?}"),
        }
        // The same archive passes the ratio check with a generous limit.
        let generous = Limits {
            max_ratio: 100_000,
            ..Limits::default()
        };
        assert!(matches!(
            open_bytes(bytes, &generous).unwrap_err(),
            CsarError::NoEntryDefinitions
        ));
    }

    #[test]
    fn total_size_limit_is_enforced() {
        let limits = Limits {
            max_total_uncompressed: 50 << 20,
            max_ratio: 100_000,
            ..Limits::default()
        };
        let err = open_bytes(bomb(), &limits).unwrap_err();
        assert!(
            matches!(err, CsarError::TotalSizeExceeded { limit } if limit == 50 << 20),
            "{err:?}"
        );
    }

    #[test]
    fn too_many_entries_is_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("Files/f{i}.txt")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let err = open_bytes(&small_zip(&refs), &limits).unwrap_err();
        assert!(
            matches!(err, CsarError::TooManyEntries { count: 20, limit: 10 }),
            "{err:?}"
        );
    }

    /// Lowers the declared uncompressed size of `name` in both headers.
    fn shrink_declared_size(bytes: &mut [u8], name: &str, declared: u32) {
        let d = declared.to_le_bytes();
        patch_headers(
            bytes,
            name,
            |l| l[22..26].copy_from_slice(&d),
            |c| c[24..28].copy_from_slice(&d),
        );
    }

    #[test]
    fn entry_larger_than_declared_is_refused() {
        let big: Vec<u8> = b"0123456789abcdef".repeat(10_000);
        let files: Files = vec![("Files/data.bin".to_string(), big)];
        let mut bytes = zip_bytes(&files, CompressionMethod::Deflated);
        shrink_declared_size(&mut bytes, "Files/data.bin", 1000);
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "x.zip", &bytes);
        let mut seen = 0usize;
        let err = with_entry(&p, "Files/data.bin", &Limits::default(), |r| {
            let mut buf = [0u8; 100];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                seen += n;
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, CsarError::EntryLargerThanDeclared { ref path, declared: 1000 } if path == "Files/data.bin"),
            "{err:?}"
        );
        assert!(seen <= 1000, "read {seen} bytes past the declared size");

        // Inside a package, caught while verifying the manifest (a deflated, listed file).
        let mut files = base_files();
        files[3].1 = b"change log line\n".repeat(5_000);
        let mf = manifest_for(&files, "");
        files.push(("vnfd.mf".to_string(), mf.into_bytes()));
        let mut bytes = zip_bytes(&files, CompressionMethod::Deflated);
        shrink_declared_size(&mut bytes, "Files/ChangeLog.txt", 500);
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::EntryLargerThanDeclared { declared: 500, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn crc_mismatch_is_corrupt_entry() {
        let files: Files = vec![("Files/data.bin".to_string(), b"hello world".to_vec())];
        let mut bytes = zip_bytes(&files, CompressionMethod::Stored);
        patch_headers(&mut bytes, "Files/data.bin", |l| l[14] ^= 0xff, |c| c[16] ^= 0xff);
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "x.zip", &bytes);
        let err = with_entry(&p, "Files/data.bin", &Limits::default(), |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, CsarError::CorruptEntry { ref reason, .. } if reason.contains("CRC")),
            "{err:?}"
        );
    }

    #[test]
    fn root_yaml_package_without_tosca_metadata() {
        let image = image_bytes();
        let yaml = format!(
            "tosca_definitions_version: tosca_simple_yaml_1_2\n\
             metadata:\n  template_name: root-vnf\n  ETSI-Entry-Manifest: MainServiceTemplate.mf\n  \
             ETSI-Entry-Change-Log: ChangeLog.txt\n  vnf_provider_id: RootVendor\n\
             topology_template:\n  node_templates:\n    VDU1:\n      type: tosca.nodes.nfv.Vdu.Compute\n      \
             properties:\n        sw_image_data:\n          name: img\n          checksum:\n            \
             algorithm: SHA-512\n            hash: {}\n          min_ram: 2 GiB\n      \
             artifacts:\n        sw_image: Files/images/img.qcow2\n",
            hex::encode(Sha512::digest(&image))
        );
        let mut files: Files = vec![
            ("MainServiceTemplate.yaml".to_string(), yaml.into_bytes()),
            ("ChangeLog.txt".to_string(), b"v1\n".to_vec()),
            ("Files/images/img.qcow2".to_string(), image.clone()),
        ];
        let mut mf = String::from("metadata:\nvnf_product_name: RootVNF\nvnf_package_version: 2.0\n\n");
        for (n, d) in &files {
            mf.push_str(&format!(
                "Source: {n}\nAlgorithm: SHA-512\nHash: {}\n\n",
                hex::encode(Sha512::digest(d))
            ));
        }
        files.push(("MainServiceTemplate.mf".to_string(), mf.into_bytes()));
        let pkg = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap();
        assert_eq!(pkg.entry_definitions, "MainServiceTemplate.yaml");
        assert_eq!(pkg.manifest_path.as_deref(), Some("MainServiceTemplate.mf"));
        assert_eq!(pkg.change_log_path.as_deref(), Some("ChangeLog.txt"));
        assert_eq!(pkg.manifest_entries.iter().filter(|e| e.verified).count(), 3);
        assert!(pkg
            .tosca_meta
            .contains(&("ETSI-Entry-Manifest".to_string(), "MainServiceTemplate.mf".to_string())));
        assert_eq!(pkg.metadata.vnf_product_name.as_deref(), Some("RootVNF"));
        assert_eq!(pkg.metadata.vnf_package_version.as_deref(), Some("2.0"));
        assert_eq!(
            pkg.metadata.vnf_provider_id.as_deref(),
            Some("RootVendor"),
            "from the VNFD metadata"
        );
        assert_eq!(pkg.manifest_signature, None);
        let img = &pkg.software_images[0];
        assert_eq!(img.file.as_deref(), Some("Files/images/img.qcow2"));
        assert!(img.in_package);
        assert_eq!(img.min_ram, Some(2 << 30));
        assert_eq!(img.checksum.as_ref().map(|c| c.0.as_str()), Some("sha-512"));

        // Two root YAML files and no TOSCA.meta: ambiguous.
        files.push(("Other.yml".to_string(), b"a: 1\n".to_vec()));
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::AmbiguousEntryDefinitions(ref v) if v.len() == 2),
            "{err:?}"
        );
    }

    #[test]
    fn missing_entry_definitions_and_referenced_files() {
        let mut files = base_files();
        files[0].1 = TOSCA_META
            .replace("Definitions/vnfd.yaml", "Definitions/main.yaml")
            .into_bytes();
        files.push(("vnfd.mf".to_string(), manifest_for(&base_files(), "").into_bytes()));
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::MissingEntryDefinitions(ref p) if p == "Definitions/main.yaml"),
            "{err:?}"
        );

        let mut files = base_files();
        files[0].1 = TOSCA_META.replace("vnfd.mf", "missing.mf").into_bytes();
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::MissingReferencedFile { ref path, .. } if path == "missing.mf"),
            "{err:?}"
        );

        let mut files = base_files();
        files[0].1 = b"TOSCA-Meta-File-Version: 1.0\nCSAR-Version: 1.1\n".to_vec();
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(matches!(err, CsarError::InvalidToscaMeta(_)), "{err:?}");
    }

    #[test]
    fn artifact_escaping_the_package_is_refused() {
        let mut files = base_files();
        let yaml = String::from_utf8(files[1].1.clone())
            .unwrap()
            .replace("../Files/images/cirros.qcow2", "../../etc/passwd");
        files[1].1 = yaml.into_bytes();
        files.push(("vnfd.mf".to_string(), manifest_for(&files, "").into_bytes()));
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::ArtifactPathEscapes { ref node, .. } if node == "VDU1"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_size_in_vnfd_is_reported() {
        let mut files = base_files();
        let yaml = String::from_utf8(files[1].1.clone())
            .unwrap()
            .replace("min_ram: 512 MB", "min_ram: lots");
        files[1].1 = yaml.into_bytes();
        files.push(("vnfd.mf".to_string(), manifest_for(&files, "").into_bytes()));
        let err = open_bytes(&zip_bytes(&files, CompressionMethod::Deflated), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::InvalidScalarSize { ref field, .. } if field == "min_ram"),
            "{err:?}"
        );
    }

    #[test]
    fn text_limit_is_enforced() {
        let limits = Limits {
            max_text_bytes: 100,
            ..Limits::default()
        };
        let err = open_bytes(&standard_bytes(&[], ""), &limits).unwrap_err();
        assert!(matches!(err, CsarError::TextTooLarge { limit: 100, .. }), "{err:?}");
    }

    #[test]
    fn manifest_parsing() {
        let ok = parse_manifest(
            "m.mf",
            "metadata:\n vnf_product_name: \"Quoted\"\n\nSource: a\nAlgorithm: SHA-256\nHash: AB\nSignature: a.sig.cms\n\
             Source: b\n",
        )
        .unwrap();
        assert_eq!(
            ok.metadata,
            vec![("vnf_product_name".to_string(), "Quoted".to_string())]
        );
        assert_eq!(ok.entries.len(), 2);
        assert_eq!(ok.entries[0].hash.as_deref(), Some("ab"));
        assert_eq!(ok.entries[0].signature.as_deref(), Some("a.sig.cms"));
        assert_eq!(ok.entries[1].algorithm, None);

        let e = parse_manifest("m.mf", "Source: a\nAlgorithm: SHA-256\n").unwrap_err();
        assert!(matches!(e, CsarError::InvalidManifest { line: 1, .. }), "{e:?}");
        let e = parse_manifest("m.mf", "Hash: ab\n").unwrap_err();
        assert!(matches!(e, CsarError::InvalidManifest { line: 1, .. }), "{e:?}");
        let e = parse_manifest("m.mf", "Source: a\n-----BEGIN CMS-----\nxyz\n").unwrap_err();
        assert!(matches!(e, CsarError::InvalidManifest { line: 2, .. }), "{e:?}");
        let e = parse_manifest("m.mf", "-----BEGIN CMS-----\nxyz\n-----END CMS-----\nSource: a\n").unwrap_err();
        assert!(matches!(e, CsarError::InvalidManifest { line: 4, .. }), "{e:?}");
        let e = parse_manifest("m.mf", "metadata:\n  a: b\n\njust words\n").unwrap_err();
        assert!(matches!(e, CsarError::InvalidManifest { line: 4, .. }), "{e:?}");
    }

    #[test]
    fn scalar_unit_size_parsing() {
        let cases = [
            ("1 GB", 1_000_000_000),
            ("1 GiB", 1 << 30),
            ("512 MB", 512_000_000),
            ("512 MiB", 512 << 20),
            ("2 kB", 2_000),
            ("2 KiB", 2_048),
            ("1 TB", 1_000_000_000_000),
            ("1 TiB", 1 << 40),
            ("10 B", 10),
            ("1.5 GiB", 3 << 29),
            ("0.5 kB", 500),
            ("4gb", 4_000_000_000),
            (" 8  MiB ", 8 << 20),
            ("1024", 1024),
        ];
        for (input, want) in cases {
            assert_eq!(parse_scalar_size(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "GB",
            "16 EiB",
            "-1 GB",
            "1.2.3 GB",
            "1 GBs",
            "abc",
            "1e3 MB",
            "99999999999999999999999 TiB",
        ] {
            assert!(parse_scalar_size(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(parse_scalar_size("18446744073709551615 B"), Ok(u64::MAX));
        assert!(parse_scalar_size("18446744073709551616 B").is_err());
    }

    #[test]
    fn normalizing_paths() {
        assert_eq!(
            normalize_rel("Definitions", "../Files/a.img").as_deref(),
            Some("Files/a.img")
        );
        assert_eq!(
            normalize_rel("Definitions", "./sub/../b.yaml").as_deref(),
            Some("Definitions/b.yaml")
        );
        assert_eq!(normalize_rel("Definitions", "../../a"), None);
        assert_eq!(normalize_rel("", "a\\b"), None);
        assert!(is_uri("https://x/y") && !is_uri("Files/a://b") && !is_uri("://x"));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_and_truncated_input_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.csar");
        let limits = Limits::default();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);

        // Random bytes, some ending in a forged end-of-central-directory record.
        for i in 0..200 {
            let len = (rng.next() % 4096) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                bytes.extend_from_slice(b"PK\x05\x06");
                bytes.extend((0..18).map(|_| rng.next() as u8));
            }
            std::fs::write(&p, &bytes).unwrap();
            assert!(open(&p, &limits).is_err(), "random input {i} opened");
            assert!(with_entry(&p, "a", &limits, |_| Ok(())).is_err());
        }

        // Every truncation of a valid package fails cleanly.
        let good = standard_bytes(&[], "");
        std::fs::write(&p, &good).unwrap();
        assert!(open(&p, &limits).is_ok());
        let mut cut = 0;
        while cut < good.len() {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(open(&p, &limits).is_err(), "truncated at {cut} opened");
            cut += 1 + (rng.next() % 5000) as usize;
        }
        for cut in good.len().saturating_sub(200)..good.len() {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(open(&p, &limits).is_err(), "truncated at {cut} opened");
        }

        // Bit flips anywhere: any result is fine, a panic is not.
        let mut errors = 0;
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (rng.next() % 8);
            }
            std::fs::write(&p, &bytes).unwrap();
            if open(&p, &limits).is_err() {
                errors += 1;
            }
        }
        assert!(errors > 0, "no bit flip was detected");
    }
}
