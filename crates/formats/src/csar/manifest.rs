//! The manifest (`.mf`): its `metadata:` block, `Source`/`Algorithm`/`Hash` entries and CMS signature,
//! and the verification of every digest of a packaged file.

use std::fmt;
use std::io::{Read, Seek};

use serde::Serialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::archive::Archive;
use super::paths::{is_uri, normalize_rel};
use super::CsarError;

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

#[derive(Debug)]
pub(super) struct ParsedManifest {
    pub(super) metadata: Vec<(String, String)>,
    pub(super) entries: Vec<ManifestEntry>,
    pub(super) signature: Option<String>,
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
pub(super) fn parse_manifest(path: &str, text: &str) -> Result<ParsedManifest, CsarError> {
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
pub(super) enum HashAlgo {
    Sha256,
    Sha384,
    Sha512,
}

pub(super) enum AnyHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl HashAlgo {
    pub(super) fn parse(name: &str) -> Option<HashAlgo> {
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
    pub(super) fn hex_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 64,
            HashAlgo::Sha384 => 96,
            HashAlgo::Sha512 => 128,
        }
    }
    pub(super) fn hasher(self) -> AnyHasher {
        match self {
            HashAlgo::Sha256 => AnyHasher::Sha256(Sha256::new()),
            HashAlgo::Sha384 => AnyHasher::Sha384(Sha384::new()),
            HashAlgo::Sha512 => AnyHasher::Sha512(Sha512::new()),
        }
    }
}

impl AnyHasher {
    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Sha384(h) => h.update(data),
            AnyHasher::Sha512(h) => h.update(data),
        }
    }
    pub(super) fn finish_hex(self) -> String {
        match self {
            AnyHasher::Sha256(h) => hex::encode(h.finalize()),
            AnyHasher::Sha384(h) => hex::encode(h.finalize()),
            AnyHasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Verifies the digest of every manifest entry inside the package, collecting all failures.
/// Hostile-archive errors met while reading abort at once.
pub(super) fn verify_manifest<R: Read + Seek>(
    ar: &mut Archive<R>,
    entries: &mut [ManifestEntry],
) -> Result<(), CsarError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csar::testutil::*;

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
}
