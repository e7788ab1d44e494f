//! Opening and validating ETSI GS NFV-SOL004 VNF packages.
//!
//! A VNF package is a TOSCA YAML CSAR: a zip archive holding a VNFD (TOSCA YAML), a manifest
//! (`.mf`) with digests of the package files, and artifacts such as software images. This
//! module opens a package read from any `Read + Seek` (a file, the bytes in memory), checks the
//! archive against hostile input (path traversal, duplicate or encrypted entries, symlinks, zip
//! bombs, entries that inflate past their declared size), locates the entry points (`TOSCA-Metadata/TOSCA.meta`, or the single root
//! YAML when there is none), verifies every manifest digest of a file inside the package, and reads
//! the software images declared in the VNFD.
//!
//! Nothing is extracted to disk and only small text files (`TOSCA.meta`, the manifest, the VNFD
//! YAML files) are read into memory, each bounded by [`Limits::max_text_bytes`]. A contained
//! image can be streamed out with [`stream_entry`].
//!
//! # Layout
//!
//! This file assembles the [`Package`]; `archive.rs` is the hardened zip and its [`Limits`],
//! `tosca_meta.rs` the entry points, `manifest.rs` the `.mf` file and its digests, `vnfd.rs` the
//! VNFD, `size.rs` TOSCA sizes, `paths.rs` paths inside the package, `error.rs` [`CsarError`].

mod archive;
mod error;
mod manifest;
mod paths;
mod size;
#[cfg(test)]
mod testutil;
mod tosca_meta;
mod vnfd;

pub use archive::{FileEntry, Limits};
pub use error::CsarError;
pub use manifest::{ManifestEntry, ManifestFailure, ManifestFailureReason};
pub use size::parse_scalar_size;
pub use tosca_meta::TOSCA_META_PATH;
pub use vnfd::{PackageMetadata, SwImage};

use std::collections::HashSet;
use std::io::{self, Read, Seek};

use serde::Serialize;

use archive::Archive;
use paths::{is_signature_file, is_yaml, normalize_rel, parent_dir};
use tosca_meta::{layout_from_root_yaml, layout_from_tosca_meta};
use vnfd::{build_metadata, get, images_from_doc, parse_yaml, scalar_string};

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

/// Validates the package read from `reader` (a file, or the bytes in memory), with every check described above.
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
        let parsed = manifest::parse_manifest(mf, &text)?;
        manifest_meta = parsed.metadata;
        manifest_signature = parsed.signature;
        manifest_entries = parsed.entries;
        manifest::verify_manifest(&mut ar, &mut manifest_entries)?;
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

/// Streams the entry `name` of the package read from `reader` to `f`, without extracting it.
///
/// The archive is checked as by [`open_reader`] (names, duplicates, encryption, sizes, ratios) but
/// its TOSCA content is not. The reader given to `f` yields the entry's uncompressed bytes and fails
/// if the entry inflates past its declared size or its CRC-32 does not match. Whatever `f` leaves
/// unread is read and discarded afterwards, so those checks always run; an `Ok` result therefore
/// means the whole entry was intact. An error returned by `f` itself is reported as
/// [`CsarError::Io`] unless it was caused by one of those checks.
pub fn stream_entry<R, T, F>(reader: R, name: &str, limits: &Limits, f: F) -> Result<T, CsarError>
where
    R: Read + Seek,
    F: FnOnce(&mut dyn Read) -> io::Result<T>,
{
    let mut ar = Archive::open(reader, limits)?;
    ar.stream(name, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csar::testutil::*;

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
