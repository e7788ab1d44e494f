//! The VNFD (TOSCA YAML): the software images it declares and the package identification.

use std::io::{Read, Seek};

use serde::Serialize;
use serde_yaml_ng::Value;

use super::archive::Archive;
use super::manifest::HashAlgo;
use super::paths::{is_uri, normalize_rel, parent_dir};
use super::size::parse_scalar_size;
use super::CsarError;

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

pub(super) fn parse_yaml(path: &str, text: &str) -> Result<Value, CsarError> {
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

pub(super) fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        _ => v,
    }
}

pub(super) fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    untag(v).as_mapping()?.get(key).map(untag)
}

pub(super) fn scalar_string(v: &Value) -> Option<String> {
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

pub(super) fn images_from_doc<R: Read + Seek>(
    doc: &Value,
    yaml_path: &str,
    ar: &Archive<R>,
) -> Result<Vec<SwImage>, CsarError> {
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

pub(super) fn build_metadata(manifest_meta: Vec<(String, String)>, docs: &[(String, Value)]) -> PackageMetadata {
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
    use crate::csar::testutil::*;

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
}
