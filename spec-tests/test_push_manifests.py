"""Workflow category Push: manifests (end-7) - OCI image manifest, image index, Docker schema2
manifest and manifest list, artifacts, subject / OCI-Subject, reference grammar, size limit."""

import json
from urllib.parse import urlsplit

import pytest

from ocispec import (
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, EMPTY_JSON, OCI_CONFIG, OCI_EMPTY,
    OCI_INDEX, OCI_LAYER, OCI_MANIFEST, assert_error, descriptor, digest, dumps, subject_of,
    unique_bytes,
)


def manifest_for(config: bytes, layers: list[bytes], **extra) -> bytes:
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": descriptor(OCI_CONFIG, config),
         "layers": [descriptor(OCI_LAYER, b) for b in layers]}
    m.update(extra)
    return dumps(m)


@pytest.fixture
def blobs(reg, repo):
    """A config and a layer already in `repo`."""
    config = dumps({"architecture": "amd64", "os": "linux", "n": unique_bytes(8).hex()})
    layer = unique_bytes(200)
    reg.push_blob(repo, config)
    reg.push_blob(repo, layer)
    return config, layer


def media(r):
    return r.headers.get("Content-Type", "").split(";")[0].strip()


# ---- Pushing manifests ---------------------------------------------------------------------

def test_push_manifest_by_tag_returns_201_with_location(reg, repo, blobs):
    """Pushing Manifests (end-7): "Upon a successful upload, the registry MUST return response
    code `201 Created`, and MUST have the following header: Location" - a pullable manifest
    URL."""
    body = manifest_for(blobs[0], [blobs[1]])
    r = reg.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    loc = r.headers.get("Location")
    assert loc
    g = reg.get(loc, headers={"Accept": OCI_MANIFEST})
    assert g.status_code == 200 and g.content == body


def test_push_manifest_docker_content_digest_is_digest_of_body(reg, repo, blobs):
    """Pushing Manifests: the Docker-Content-Digest on the 201 is the digest of the uploaded
    manifest bytes (server contract)."""
    body = manifest_for(blobs[0], [blobs[1]])
    r = reg.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert r.status_code == 201
    assert r.headers.get("Docker-Content-Digest") == digest(body)


def test_push_manifest_by_digest(reg, repo, blobs):
    """Pushing Manifests: "the `<reference>` MUST be either a) a digest or b) a tag" - by digest
    -> 201 and pullable by that digest."""
    body = manifest_for(blobs[0], [blobs[1]])
    d = digest(body)
    r = reg.put_manifest(repo, d, body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == d
    assert urlsplit(reg.abs(r.headers["Location"])).path == f"/v2/{repo}/manifests/{d}"
    g = reg.get(f"/v2/{repo}/manifests/{d}", headers={"Accept": OCI_MANIFEST})
    assert g.status_code == 200 and g.content == body


def test_push_manifest_by_digest_not_matching_body_is_rejected(reg, repo, blobs):
    """Pushing Manifests by digest: the reference digest must be the body's digest - else 400
    DIGEST_INVALID, and nothing is stored under either digest."""
    body = manifest_for(blobs[0], [blobs[1]])
    wrong = digest(body + b" ")
    r = reg.put_manifest(repo, wrong, body, OCI_MANIFEST)
    assert_error(r, 400, "DIGEST_INVALID")
    assert reg.head(f"/v2/{repo}/manifests/{wrong}").status_code == 404
    assert reg.head(f"/v2/{repo}/manifests/{digest(body)}").status_code == 404


def test_push_manifest_bytes_are_stored_unmodified(reg, repo, blobs):
    """Pushing Manifests: the registry stores the manifest exactly as provided (pulled body is
    "byte-for-byte as stored") - non-canonical whitespace and key order survive."""
    config, layer = blobs
    body = (b'{\n  "layers": [ ' + json.dumps(descriptor(OCI_LAYER, layer), indent=3).encode()
            + b' ],\n\t"config":' + json.dumps(descriptor(OCI_CONFIG, config)).encode()
            + b',  "schemaVersion" : 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"\n}\n')
    json.loads(body)  # sanity: still valid JSON
    r = reg.put_manifest(repo, "pretty", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == digest(body)
    for ref in ("pretty", digest(body)):
        g = reg.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert g.content == body
        assert g.headers.get("Docker-Content-Digest") == digest(body)


def test_push_manifest_tag_can_be_moved(reg, repo, blobs):
    """Tag definition: "a custom, human-readable pointer to a manifest" - re-pushing a tag points
    it at the new manifest."""
    config, layer = blobs
    first = manifest_for(config, [layer])
    second = manifest_for(config, [], annotations={"x": "2"})
    reg.push_manifest(repo, "moving", first, OCI_MANIFEST)
    reg.push_manifest(repo, "moving", second, OCI_MANIFEST)
    g = reg.get(f"/v2/{repo}/manifests/moving", headers={"Accept": OCI_MANIFEST})
    assert g.content == second
    # the first manifest is still there by digest
    assert reg.get(f"/v2/{repo}/manifests/{digest(first)}").content == first


def test_push_manifest_many_tags_one_digest(reg, repo, blobs):
    """Tag definition: "A manifest digest may have zero, one, or many tags referencing it"."""
    body = manifest_for(blobs[0], [blobs[1]])
    for tag in ("a", "b", "c"):
        reg.push_manifest(repo, tag, body, OCI_MANIFEST)
    for tag in ("a", "b", "c"):
        g = reg.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert g.headers.get("Docker-Content-Digest") == digest(body)


def test_push_manifest_with_empty_layer_list(reg, repo, blobs):
    """Pushing Manifests: "The uploaded manifest MUST reference any blobs that make up the
    object. However, the list of blobs MAY be empty"."""
    body = manifest_for(blobs[0], [])
    assert reg.put_manifest(repo, "nolayers", body, OCI_MANIFEST).status_code == 201


def test_push_manifest_referencing_unknown_blob_is_manifest_blob_unknown(reg, repo, blobs):
    """Push: "A registry MAY reject a manifest if it contains descriptors ... that reference
    blobs or manifests that do not exist in the repository. When a manifest is rejected for
    this reason, the registry MUST return one or more `MANIFEST_BLOB_UNKNOWN` errors" (this
    server rejects: 400)."""
    config, _ = blobs
    body = manifest_for(config, [unique_bytes(77)])
    r = reg.put_manifest(repo, "missing", body, OCI_MANIFEST)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert reg.head(f"/v2/{repo}/manifests/missing").status_code == 404


def test_push_manifest_with_unknown_config_is_manifest_blob_unknown(reg, repo, blobs):
    """Push: the config descriptor is a blob reference too -> MANIFEST_BLOB_UNKNOWN (400)."""
    _, layer = blobs
    body = manifest_for(dumps({"unknown": unique_bytes(4).hex()}), [layer])
    assert_error(reg.put_manifest(repo, "nocfg", body, OCI_MANIFEST), 400,
                 "MANIFEST_BLOB_UNKNOWN")


def test_push_manifest_blob_only_in_other_repository_is_unknown(reg, repo, blobs):
    """Push: blobs must exist "in the repository": a layer present only in another repository
    counts as unknown (MANIFEST_BLOB_UNKNOWN)."""
    config, _ = blobs
    other_layer = unique_bytes(64)
    reg.push_blob(repo + "-other", other_layer)
    body = manifest_for(config, [other_layer])
    assert_error(reg.put_manifest(repo, "x", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")


def test_push_manifest_layer_with_urls_need_not_be_present(reg, repo, blobs):
    """Push (server contract): a non-distributable layer with `urls` is fetched from elsewhere,
    so it need not exist in the repository."""
    config, _ = blobs
    foreign = descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                         unique_bytes(100), urls=["https://example.invalid/layer.tar.gz"])
    body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": descriptor(OCI_CONFIG, config), "layers": [foreign]})
    r = reg.put_manifest(repo, "foreign", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text


def test_push_manifest_content_type_with_parameters(reg, repo, blobs):
    """Pushing Manifests: "Registries SHOULD ignore any parameters" on Content-Type."""
    body = manifest_for(blobs[0], [blobs[1]])
    r = reg.put_manifest(repo, "params", body, OCI_MANIFEST + "; charset=utf-8")
    assert r.status_code == 201, r.text
    g = reg.get(f"/v2/{repo}/manifests/params", headers={"Accept": OCI_MANIFEST})
    assert g.content == body and media(g) == OCI_MANIFEST


def test_push_manifest_about_4mib_is_accepted(reg, repo, blobs):
    """Pushing Manifests: "Clients and registries SHOULD expect to be able to support manifest
    uploads of at least 4 MiB" - exactly 4 MiB is accepted."""
    body = padded_manifest(blobs, 4 * 1024 * 1024)
    r = reg.put_manifest(repo, "big", body, OCI_MANIFEST)
    assert r.status_code == 201, (r.status_code, r.text[:300])
    g = reg.get(f"/v2/{repo}/manifests/big", headers={"Accept": OCI_MANIFEST})
    assert g.content == body


def test_push_manifest_over_limit_returns_413(reg, repo, blobs):
    """Pushing Manifests (end-7 failure 413): "If a manifest exceeds this limit, the registry
    SHOULD respond with `413 Payload Too Large`" (limit 4 MiB here; JSON error body)."""
    body = padded_manifest(blobs, 4 * 1024 * 1024 + 1)
    r = reg.put_manifest(repo, "toobig", body, OCI_MANIFEST)
    assert_error(r, 413, "SIZE_INVALID", "MANIFEST_INVALID")
    assert reg.head(f"/v2/{repo}/manifests/toobig").status_code == 404


def padded_manifest(blobs, size: int) -> bytes:
    config, layer = blobs
    base = manifest_for(config, [layer], annotations={"pad": ""})
    pad = size - len(base)
    assert pad > 0
    body = manifest_for(config, [layer], annotations={"pad": "p" * pad})
    assert len(body) == size
    return body


# ---- Reference grammar ---------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["0", "_x", "v1.2.3-rc_4", "A" * 128, "UPPER.case-Mixed_9"])
def test_tag_grammar_valid_tags_accepted(reg, repo, blobs, tag):
    """Manifest reference: a tag MUST match `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; any such tag is
    accepted and pullable."""
    body = manifest_for(blobs[0], [blobs[1]])
    r = reg.put_manifest(repo, tag, body, OCI_MANIFEST)
    assert r.status_code == 201, (tag, r.status_code, r.text)
    assert reg.get(f"/v2/{repo}/manifests/{tag}").content == body


@pytest.mark.parametrize("tag", ["-lead", ".lead", "A" * 129, "has+plus", "semi;colon"])
def test_tag_grammar_invalid_tags_rejected(reg, repo, blobs, tag):
    """Manifest reference: "The `<reference>` MUST NOT be in any other format" - a tag outside
    the grammar is not stored (400, or 404 if the route does not match)."""
    body = manifest_for(blobs[0], [blobs[1]])
    r = reg.put_manifest(repo, tag, body, OCI_MANIFEST)
    assert r.status_code in (400, 404), (tag, r.status_code)
    assert_error(r, (400, 404))
    tags = reg.get(f"/v2/{repo}/tags/list")
    if tags.status_code == 200:
        assert tag not in (tags.json().get("tags") or [])


# ---- Image index ---------------------------------------------------------------------------

def test_push_image_index(reg, repo):
    """Pushing Manifests: an image index (`application/vnd.oci.image.index.v1+json`) whose
    children are in the repository -> 201; pulled back byte-for-byte with its media type."""
    a = reg.push_image(repo)
    b = reg.push_image(repo)
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**descriptor(OCI_MANIFEST, a.manifest), "platform": {"architecture": "amd64", "os": "linux"}},
        {**descriptor(OCI_MANIFEST, b.manifest), "platform": {"architecture": "arm64", "os": "linux"}},
    ]})
    r = reg.put_manifest(repo, "multi", index, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == digest(index)
    g = reg.get(f"/v2/{repo}/manifests/multi", headers={"Accept": OCI_INDEX})
    assert g.status_code == 200 and g.content == index and media(g) == OCI_INDEX
    assert g.headers.get("Docker-Content-Digest") == digest(index)


def test_push_image_index_with_unknown_child_is_rejected(reg, repo):
    """Push: an index referencing a manifest absent from the repository may be rejected, and
    then with MANIFEST_BLOB_UNKNOWN (contract also allows MANIFEST_UNKNOWN)."""
    a = reg.push_image(repo)
    ghost = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "x": unique_bytes(4).hex()})
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, a.manifest), descriptor(OCI_MANIFEST, ghost)]})
    r = reg.put_manifest(repo, "broken", index, OCI_INDEX)
    assert_error(r, (400, 404), "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN")
    assert reg.head(f"/v2/{repo}/manifests/broken").status_code == 404


def test_push_nested_image_index(reg, repo):
    """Definitions: "A manifest may reference other manifests" - an index of an index."""
    a = reg.push_image(repo)
    inner = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [descriptor(OCI_MANIFEST, a.manifest)]})
    reg.push_manifest(repo, digest(inner), inner, OCI_INDEX)
    outer = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [descriptor(OCI_INDEX, inner)]})
    r = reg.put_manifest(repo, "outer", outer, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert reg.get(f"/v2/{repo}/manifests/outer").content == outer


# ---- Docker schema2 ------------------------------------------------------------------------

def docker_image(reg, repo):
    config = dumps({"architecture": "amd64", "os": "linux", "n": unique_bytes(8).hex()})
    layer = unique_bytes(150)
    reg.push_blob(repo, config)
    reg.push_blob(repo, layer)
    return dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                  "config": descriptor(DOCKER_CONFIG, config),
                  "layers": [descriptor(DOCKER_LAYER, layer)]})


def test_push_docker_schema2_manifest(reg, repo):
    """Pushing Manifests: legacy Docker v2 schema2 manifests
    (`application/vnd.docker.distribution.manifest.v2+json`) are accepted and served back
    unchanged with their media type."""
    body = docker_image(reg, repo)
    r = reg.put_manifest(repo, "docker", body, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers.get("Docker-Content-Digest") == digest(body)
    g = reg.get(f"/v2/{repo}/manifests/docker", headers={"Accept": DOCKER_MANIFEST})
    assert g.status_code == 200 and g.content == body and media(g) == DOCKER_MANIFEST


def test_push_docker_manifest_list(reg, repo):
    """Pushing Manifests: Docker manifest list
    (`application/vnd.docker.distribution.manifest.list.v2+json`) over schema2 children."""
    child = docker_image(reg, repo)
    reg.push_manifest(repo, digest(child), child, DOCKER_MANIFEST)
    lst = dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {**descriptor(DOCKER_MANIFEST, child), "platform": {"architecture": "amd64", "os": "linux"}}]})
    r = reg.put_manifest(repo, "list", lst, DOCKER_LIST)
    assert r.status_code == 201, r.text
    g = reg.get(f"/v2/{repo}/manifests/list", headers={"Accept": DOCKER_LIST})
    assert g.status_code == 200 and g.content == lst and media(g) == DOCKER_LIST


def test_push_docker_manifest_referencing_unknown_blob(reg, repo):
    """Push: MANIFEST_BLOB_UNKNOWN applies to Docker schema2 manifests as well."""
    config = dumps({"os": "linux", "n": unique_bytes(8).hex()})
    reg.push_blob(repo, config)
    body = dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                  "config": descriptor(DOCKER_CONFIG, config),
                  "layers": [descriptor(DOCKER_LAYER, unique_bytes(30))]})
    assert_error(reg.put_manifest(repo, "d", body, DOCKER_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")


# ---- Artifacts -----------------------------------------------------------------------------

def test_push_artifact_with_empty_config(reg, repo):
    """Definitions (object/artifact): an image manifest with `artifactType` and the empty config
    descriptor (`application/vnd.oci.empty.v1+json`, content `{}`, size 2) is accepted, and
    the empty blob is served as `{}`."""
    art = reg.push_artifact(repo, "application/vnd.example.thing.v1", tag="art",
                            payload=b"hello artifact")
    assert art.response.headers.get("Docker-Content-Digest") == art.digest
    g = reg.get(f"/v2/{repo}/manifests/art", headers={"Accept": OCI_MANIFEST})
    assert g.status_code == 200 and g.content == art.manifest
    assert json.loads(g.content)["artifactType"] == "application/vnd.example.thing.v1"
    e = reg.get(f"/v2/{repo}/blobs/{digest(EMPTY_JSON)}")
    assert e.status_code == 200 and e.content == b"{}"
    assert digest(EMPTY_JSON) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_push_artifact_with_empty_layer_descriptor(reg, repo):
    """Artifacts: the empty descriptor may also stand in as the single layer."""
    reg.push_blob(repo, EMPTY_JSON)
    body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "artifactType": "application/vnd.example.empty.v1",
                  "config": descriptor(OCI_EMPTY, EMPTY_JSON),
                  "layers": [descriptor(OCI_EMPTY, EMPTY_JSON)]})
    r = reg.put_manifest(repo, "emptylayer", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text


def test_push_artifact_with_custom_config_media_type(reg, repo):
    """Artifacts: a config with a non-image media type (e.g. a Helm chart config) is accepted."""
    cfg = dumps({"name": "chart", "version": "1.0.0"})
    reg.push_blob(repo, cfg)
    layer = unique_bytes(60)
    reg.push_blob(repo, layer)
    body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": descriptor("application/vnd.cncf.helm.config.v1+json", cfg),
                  "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", layer)]})
    assert reg.put_manifest(repo, "1.0.0", body, OCI_MANIFEST).status_code == 201


# ---- subject / OCI-Subject -----------------------------------------------------------------

def test_push_manifest_with_subject_returns_oci_subject_header(reg, repo):
    """Pushing Manifests with Subject: "a registry implementation that supports the referrers
    API MUST respond with the response header `OCI-Subject: <subject digest>`"."""
    base = reg.push_image(repo, "base")
    art = reg.push_artifact(repo, "application/vnd.example.sig.v1", subject=subject_of(base))
    assert art.response.status_code == 201
    assert art.response.headers.get("OCI-Subject") == base.digest


def test_push_manifest_with_absent_subject_is_accepted(reg, repo):
    """Push: "A registry MUST accept an otherwise valid manifest with a `subject` field that
    references a manifest that does not exist in the repository" (and still answers
    OCI-Subject)."""
    ghost = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "n": unique_bytes(4).hex()})
    subject = descriptor(OCI_MANIFEST, ghost)
    art = reg.push_artifact(repo, "application/vnd.example.sbom.v1", subject=subject)
    assert art.response.status_code == 201
    assert art.response.headers.get("OCI-Subject") == subject["digest"]
    assert reg.get(f"/v2/{repo}/manifests/{art.digest}").content == art.manifest


def test_push_image_manifest_with_subject_no_artifact_type(reg, repo):
    """Pushing Manifests with Subject: any image manifest (not only artifacts) may carry a
    subject; OCI-Subject is answered."""
    base = reg.push_image(repo)
    img = reg.push_image(repo, subject=subject_of(base))
    assert img.response.headers.get("OCI-Subject") == base.digest


def test_push_index_with_subject_returns_oci_subject_header(reg, repo):
    """Pushing Manifests with Subject: an image index with a `subject` is processed too."""
    base = reg.push_image(repo)
    child = reg.push_image(repo)
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "artifactType": "application/vnd.example.bundle.v1",
                   "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
                   "subject": subject_of(base)})
    r = reg.put_manifest(repo, digest(index), index, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers.get("OCI-Subject") == base.digest
