//! Entry points: `TOSCA-Metadata/TOSCA.meta` (SOL004 option 1) or the single root YAML (option 2).

use std::io::{Read, Seek};

use serde_yaml_ng::Value;

use super::archive::{Archive, Limits};
use super::paths::{is_yaml, normalize_rel};
use super::vnfd::{get, parse_yaml, scalar_string, untag};
use super::CsarError;

/// Path of the TOSCA metadata file inside a CSAR (SOL004 option 1).
pub const TOSCA_META_PATH: &str = "TOSCA-Metadata/TOSCA.meta";

#[derive(Default)]
pub(super) struct Layout {
    pub(super) tosca_meta: Vec<(String, String)>,
    pub(super) entry_definitions: String,
    pub(super) manifest: Option<String>,
    pub(super) change_log: Option<String>,
    pub(super) licenses: Option<String>,
    pub(super) certificate: Option<String>,
    pub(super) tests: Option<String>,
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

pub(super) fn layout_from_tosca_meta<R: Read + Seek>(
    ar: &mut Archive<R>,
    limits: &Limits,
) -> Result<Layout, CsarError> {
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

pub(super) fn layout_from_root_yaml<R: Read + Seek>(ar: &mut Archive<R>, limits: &Limits) -> Result<Layout, CsarError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csar::testutil::*;

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
}
