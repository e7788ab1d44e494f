//! Parsing and validation of pushed manifests. The bytes are stored exactly as received;
//! this module only extracts what the registry must check and index.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::names::Digest;
use super::{OciError as Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Index,
    Artifact,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        OCI_ARTIFACT_MANIFEST => Some(Kind::Artifact),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    blobs: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry needs to know about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// `artifactType`, or for image manifests the config media type, as the referrers API reports.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub annotations: Option<String>,
    /// Blobs that must be readable in the repository (config and distributable layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (index children).
    pub manifests: Vec<Digest>,
}

fn descriptor_digest(d: &RawDescriptor, what: &str) -> Result<Digest> {
    if d.size < 0 {
        return Err(Error::ManifestInvalid(format!("{what} has a negative size")));
    }
    if d.media_type.is_empty() {
        return Err(Error::ManifestInvalid(format!("{what} has no mediaType")));
    }
    Digest::parse(&d.digest).map_err(|_| Error::ManifestInvalid(format!("{what} has an invalid digest {:?}", d.digest)))
}

/// Parse `body` pushed with `content_type` (header value without parameters, may be empty).
pub fn parse(body: &[u8], content_type: &str) -> Result<ParsedManifest> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| Error::ManifestInvalid(format!("not a manifest: {e}")))?;
    let declared = raw.media_type.as_deref().filter(|m| !m.is_empty());
    let header = Some(content_type).filter(|c| !c.is_empty() && kind_of(c).is_some());
    let media_type = match (declared, header) {
        (Some(d), Some(h)) if d != h => {
            return Err(Error::ManifestInvalid(format!(
                "mediaType {d:?} does not match Content-Type {h:?}"
            )))
        }
        (Some(d), _) => d.to_string(),
        (None, Some(h)) => h.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(Error::ManifestInvalid("cannot tell the manifest's media type".into())),
    };
    let kind = kind_of(&media_type)
        .ok_or_else(|| Error::ManifestInvalid(format!("unsupported manifest media type {media_type:?}")))?;
    if kind != Kind::Artifact && raw.schema_version != Some(2) {
        return Err(Error::ManifestInvalid("schemaVersion must be 2".into()));
    }

    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut artifact_type = raw.artifact_type.clone().filter(|a| !a.is_empty());
    match kind {
        Kind::Image => {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("missing config".into()))?;
            blobs.push(descriptor_digest(config, "config")?);
            let layers = raw
                .layers
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("missing layers".into()))?;
            for (i, layer) in layers.iter().enumerate() {
                let digest = descriptor_digest(layer, &format!("layer {i}"))?;
                // Non-distributable layers live at their `urls`, not in the registry.
                if layer.urls.as_ref().is_none_or(|u| u.is_empty()) {
                    blobs.push(digest);
                }
            }
            if raw.manifests.is_some() {
                return Err(Error::ManifestInvalid("an image manifest has no manifests list".into()));
            }
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
        }
        Kind::Index => {
            let list = raw
                .manifests
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("missing manifests".into()))?;
            for (i, m) in list.iter().enumerate() {
                manifests.push(descriptor_digest(m, &format!("manifest {i}"))?);
            }
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(Error::ManifestInvalid("an index has no config or layers".into()));
            }
        }
        Kind::Artifact => {
            for (i, b) in raw.blobs.iter().flatten().enumerate() {
                blobs.push(descriptor_digest(b, &format!("blob {i}"))?);
            }
        }
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;
    blobs.dedup();
    manifests.dedup();
    let annotations = match &raw.annotations {
        Some(a) if !a.is_empty() => serde_json::to_string(a).ok(),
        _ => None,
    };
    Ok(ParsedManifest {
        media_type,
        artifact_type,
        subject,
        annotations,
        blobs,
        manifests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/x","digest":"{}","size":2}},
            "layers":[{{"mediaType":"l","digest":"{}","size":3}},{{"mediaType":"l","digest":"{}","size":3,"urls":["http://x"]}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let p = parse(body.as_bytes(), OCI_MANIFEST).expect("valid");
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.artifact_type.as_deref(), Some("application/x"));
        assert_eq!(p.subject.map(|s| s.to_string()), Some(d('e')));
        assert!(parse(body.as_bytes(), OCI_INDEX).is_err(), "content type mismatch");
    }

    #[test]
    fn rejects() {
        assert!(parse(b"{", OCI_MANIFEST).is_err());
        assert!(parse(b"[]", OCI_MANIFEST).is_err());
        assert!(parse(br#"{"schemaVersion":2}"#, OCI_MANIFEST).is_err());
        assert!(parse(br#"{"schemaVersion":1,"manifests":[]}"#, OCI_INDEX).is_err());
        assert!(parse(br#"{"schemaVersion":2,"mediaType":"text/plain","manifests":[]}"#, "").is_err());
        let ok = parse(br#"{"schemaVersion":2,"manifests":[]}"#, "").expect("index");
        assert_eq!(ok.media_type, OCI_INDEX);
    }
}
