//! Helpers of the CSAR reader's tests: a real-shaped SOL004 package built in memory, zip surgery.

use std::io::BufReader;
// What the tests of every part use.
pub(super) use std::io::{Cursor, Write};
pub(super) use std::path::{Path, PathBuf};
pub(super) use std::sync::OnceLock;

pub(super) use sha2::{Digest, Sha256, Sha512};
pub(super) use zip::write::SimpleFileOptions;
pub(super) use zip::{CompressionMethod, ZipWriter};

pub(super) use super::{open_reader, stream_entry, CsarError, Limits, ManifestFailure, Package, TOSCA_META_PATH};

/// Opens the package file at `path`, as the main crate's `core::csar::open` does.
pub(super) fn open(path: &Path, limits: &Limits) -> Result<Package, CsarError> {
    open_reader(BufReader::new(std::fs::File::open(path)?), limits)
}

/// Streams an entry of the package file at `path`, as the main crate's `core::csar::with_entry` does.
pub(super) fn with_entry<T, F>(path: &Path, name: &str, limits: &Limits, f: F) -> Result<T, CsarError>
where
    F: FnOnce(&mut dyn std::io::Read) -> std::io::Result<T>,
{
    stream_entry(BufReader::new(std::fs::File::open(path)?), name, limits, f)
}

pub(super) type Files = Vec<(String, Vec<u8>)>;

pub(super) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A qcow2-looking blob: the qcow2 magic and version, then pseudo-random bytes.
pub(super) fn image_bytes() -> Vec<u8> {
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

pub(super) const TOSCA_META: &str = "TOSCA-Meta-File-Version: 1.0\r\n\
CSAR-Version: 1.1\r\n\
Created-By: Example Vendor\r\n\
Entry-Definitions: Definitions/vnfd.yaml\r\n\
ETSI-Entry-Manifest: vnfd.mf\r\n\
ETSI-Entry-Change-Log: Files/ChangeLog.txt\r\n\
ETSI-Entry-Certificate: Files/Certificates/vnfd.cert\r\n";

pub(super) fn vnfd(image_hash: &str) -> String {
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

pub(super) const CMS: &str = "-----BEGIN CMS-----\nMIIBdwYJKoZIhvcNAQcCoIIBaDCCAWQCAQExDTALBglghkgBZQMEAgEwCwYJKoZI\nhvcNAQcBMYIBQTCCAT0CAQEwFjARMQ8wDQYDVQQDDAZ2ZW5kb3I=\n-----END CMS-----\n";

pub(super) fn base_files() -> Files {
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
pub(super) fn manifest_for(files: &Files, extra: &str) -> String {
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

pub(super) fn zip_bytes(files: &[(String, Vec<u8>)], method: CompressionMethod) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(name.as_str(), SimpleFileOptions::default().compression_method(method))
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub(super) fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The standard package; files named in `tamper` get a byte appended after the manifest is
/// computed.
pub(super) fn standard_bytes(tamper: &[&str], extra_manifest: &str) -> Vec<u8> {
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

pub(super) fn open_bytes(bytes: &[u8], limits: &Limits) -> Result<Package, CsarError> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "pkg.csar", bytes);
    open(&p, limits)
}

/// Replaces every occurrence of `from` by `to` (same length) in the raw archive bytes.
pub(super) fn rename_raw(bytes: &mut [u8], from: &str, to: &str) {
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
pub(super) fn patch_headers(bytes: &mut [u8], name: &str, local: impl Fn(&mut [u8]), central: impl Fn(&mut [u8])) {
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

pub(super) fn failures(err: CsarError) -> Vec<ManifestFailure> {
    match err {
        CsarError::ManifestVerification(f) => f,
        other => panic!("expected ManifestVerification, got {other:?}"),
    }
}

pub(super) fn small_zip(names: &[&str]) -> Vec<u8> {
    let files: Files = names.iter().map(|n| (n.to_string(), b"hello".to_vec())).collect();
    zip_bytes(&files, CompressionMethod::Stored)
}

pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
