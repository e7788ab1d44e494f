//! Manifest parsing (`oci::manifest::parse`): the first byte picks the Content-Type.
#![no_main]

use im_formats::oci::manifest::{
    parse, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_ARTIFACT_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use im_formats::oci::Digest;
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 7] = [
    "",
    OCI_MANIFEST,
    OCI_INDEX,
    OCI_ARTIFACT_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    "application/json",
];

fn valid(d: &Digest) {
    assert_eq!(
        Digest::parse(d.as_str()).ok().as_ref(),
        Some(d),
        "digest {d} does not re-parse"
    );
    assert!(d
        .hex()
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let content_type = TYPES[usize::from(sel) % TYPES.len()];
    let Ok(p) = parse(body, content_type) else { return };
    assert_eq!(parse(body, content_type).ok().as_ref(), Some(&p), "not deterministic");

    let image = [OCI_MANIFEST, DOCKER_MANIFEST].contains(&p.media_type.as_str());
    let index = [OCI_INDEX, DOCKER_MANIFEST_LIST].contains(&p.media_type.as_str());
    assert!(
        image || index || p.media_type == OCI_ARTIFACT_MANIFEST,
        "media type {:?}",
        p.media_type
    );
    if !content_type.is_empty() && TYPES[1..6].contains(&content_type) {
        assert_eq!(p.media_type, content_type, "a known Content-Type decides or must match");
    }
    if image {
        assert!(!p.blobs.is_empty(), "an image manifest has at least its config");
        assert!(p.manifests.is_empty());
        assert!(p.artifact_type.is_some());
    }
    if index {
        assert!(p.blobs.is_empty());
    }
    if p.media_type == OCI_ARTIFACT_MANIFEST {
        assert!(p.manifests.is_empty());
    }
    for d in p.blobs.iter().chain(&p.manifests).chain(&p.subject) {
        valid(d);
    }
    assert!(p.blobs.windows(2).all(|w| w[0] != w[1]) && p.manifests.windows(2).all(|w| w[0] != w[1]));
    if let Some(a) = &p.annotations {
        let v: serde_json::Value = serde_json::from_str(a).expect("annotations are JSON");
        assert!(v
            .as_object()
            .is_some_and(|o| !o.is_empty() && o.values().all(|x| x.is_string())));
    }
});
