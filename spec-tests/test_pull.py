"""Workflow category Pull: manifests (end-3), blobs (end-2), HEAD existence checks, Range."""

import pytest

from ocispec import (
    OCI_INDEX, OCI_MANIFEST, assert_error, digest, raw_request, unique_bytes, unique_repo,
)


@pytest.fixture
def image(reg, repo):
    return reg.push_image(repo, "v1", layers=2)


# ---- Pulling manifests -------------------------------------------------------------------

def test_pull_manifest_by_tag_returns_200_and_the_manifest(reg, image):
    """Pulling manifests: "A GET request to an existing manifest URL MUST provide the expected
    manifest, with a response code that MUST be `200 OK`" (reference = tag)."""
    r = reg.get(f"/v2/{image.repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.content == image.manifest


def test_pull_manifest_by_digest_returns_200_and_the_manifest(reg, image):
    """Pulling manifests: `<reference>` MUST be either the digest of the manifest or a tag; by
    digest the exact manifest is returned with 200."""
    r = reg.get(f"/v2/{image.repo}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.content == image.manifest


def test_pull_manifest_content_type_is_the_manifest_media_type(reg, image):
    """Pulling manifests: the `Content-Type` header indicates the type of the returned manifest;
    it should match the type the manifest was pushed with / its `mediaType` field."""
    for ref in ("v1", image.digest):
        r = reg.get(f"/v2/{image.repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.headers.get("Content-Type", "").split(";")[0].strip() == OCI_MANIFEST


def test_pull_manifest_docker_content_digest_matches_body(reg, image):
    """Pulling manifests: Docker-Content-Digest is the canonical digest of the returned
    manifest; a client using it MUST be able to verify it against the body."""
    for ref in ("v1", image.digest):
        r = reg.get(f"/v2/{image.repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.headers.get("Docker-Content-Digest") == digest(r.content) == image.digest


def test_pull_manifest_with_multi_type_accept_header(reg, image):
    """Pulling manifests: "The client SHOULD include an `Accept` header indicating which
    manifest content types it supports" - a list including the stored type yields 200."""
    accept = ", ".join([OCI_INDEX, OCI_MANIFEST,
                        "application/vnd.docker.distribution.manifest.v2+json"])
    r = reg.get(f"/v2/{image.repo}/manifests/v1", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.content == image.manifest


def test_pull_manifest_unknown_tag_returns_404_manifest_unknown(reg, image):
    """Pulling manifests: "If the manifest is not found in the registry, the response code MUST
    be `404 Not Found`" (MANIFEST_UNKNOWN)."""
    r = reg.get(f"/v2/{image.repo}/manifests/no-such-tag")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


def test_pull_manifest_unknown_digest_returns_404_manifest_unknown(reg, image):
    """Pulling manifests: unknown manifest by digest -> 404 MANIFEST_UNKNOWN."""
    r = reg.get(f"/v2/{image.repo}/manifests/{digest(unique_bytes())}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-lead", "has+plus",
                                       "sha256:not-hex", "md5:" + "a" * 32])
def test_pull_manifest_invalid_reference_returns_404_manifest_unknown(reg, image, reference):
    """Pulling manifests: a reference that is neither a tag nor a digest names no manifest, so
    GET and HEAD answer as for any manifest not found: 404 MANIFEST_UNKNOWN (what the OCI
    conformance suite expects), never a code outside the spec's table."""
    r = reg.get(f"/v2/{image.repo}/manifests/{reference}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    assert reg.head(f"/v2/{image.repo}/manifests/{reference}").status_code == 404


def test_pull_manifest_unknown_repository_returns_404(reg):
    """Push/Pull: "An attempt to pull a nonexistent repository MUST return response code
    `404 Not Found`" (NAME_UNKNOWN or MANIFEST_UNKNOWN)."""
    r = reg.get(f"/v2/{unique_repo('nosuch')}/manifests/latest")
    assert_error(r, 404, "NAME_UNKNOWN", "MANIFEST_UNKNOWN")


def test_pull_manifest_blob_digest_is_not_a_manifest(reg, image):
    """Pulling manifests: a blob (config) digest is not a manifest -> 404."""
    r = reg.get(f"/v2/{image.repo}/manifests/{digest(image.config)}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


# ---- Checking if content exists (HEAD) ---------------------------------------------------

def test_head_manifest_returns_200_with_digest_and_length(reg, image):
    """Checking if content exists: "A HEAD request to an existing blob or manifest URL MUST
    return `200 OK`", with Docker-Content-Digest and the exact Content-Length."""
    for ref in ("v1", image.digest):
        r = reg.head(f"/v2/{image.repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.headers.get("Docker-Content-Digest") == image.digest
        assert r.headers.get("Content-Length") == str(len(image.manifest))
        assert r.headers.get("Content-Type", "").split(";")[0].strip() == OCI_MANIFEST


def test_head_manifest_unknown_returns_404(reg, image):
    """Checking if content exists: "If the blob or manifest is not found in the registry, the
    response code MUST be `404 Not Found`"."""
    assert reg.head(f"/v2/{image.repo}/manifests/nope").status_code == 404
    assert reg.head(f"/v2/{image.repo}/manifests/{digest(b'x')}").status_code == 404
    assert reg.head(f"/v2/{unique_repo('nosuch')}/manifests/latest").status_code == 404


def test_head_manifest_response_has_no_body(reg, image):
    """Checking if content exists: a HEAD answer carries headers only (checked on the wire)."""
    r = raw_request(reg, "HEAD", f"/v2/{image.repo}/manifests/v1",
                    headers={"Accept": OCI_MANIFEST})
    assert r is not None and r.status_code == 200
    assert r.body == b""


def test_head_blob_returns_200_with_digest_and_length(reg, image):
    """Checking if content exists: HEAD on an existing blob -> 200, Docker-Content-Digest and
    Content-Length = blob size."""
    layer = image.layers[0]
    r = reg.head(f"/v2/{image.repo}/blobs/{digest(layer)}")
    assert r.status_code == 200
    assert r.headers.get("Docker-Content-Digest") == digest(layer)
    assert r.headers.get("Content-Length") == str(len(layer))


def test_head_blob_unknown_returns_404(reg, image):
    """Checking if content exists: HEAD on an unknown blob -> 404."""
    assert reg.head(f"/v2/{image.repo}/blobs/{digest(unique_bytes())}").status_code == 404


def test_head_blob_response_has_no_body(reg, image):
    """Checking if content exists: a HEAD answer carries headers only (checked on the wire)."""
    r = raw_request(reg, "HEAD", f"/v2/{image.repo}/blobs/{digest(image.layers[0])}")
    assert r is not None and r.status_code == 200
    assert r.body == b""


# ---- Pulling blobs -------------------------------------------------------------------------

def test_pull_blob_returns_200_and_the_blob(reg, image):
    """Pulling blobs: "A GET request to an existing blob URL MUST provide the expected blob,
    with a response code that MUST be `200 OK`"."""
    for blob in [image.config, *image.layers]:
        r = reg.get(f"/v2/{image.repo}/blobs/{digest(blob)}")
        assert r.status_code == 200
        assert r.content == blob


def test_pull_blob_docker_content_digest_matches_body(reg, image):
    """Pulling blobs: Docker-Content-Digest, "If present, the value of this header MUST be a
    digest matching that of the response body"."""
    r = reg.get(f"/v2/{image.repo}/blobs/{digest(image.layers[1])}")
    assert r.status_code == 200
    assert r.headers.get("Docker-Content-Digest") == digest(r.content)


def test_pull_blob_headers_length_and_octet_stream(reg, image):
    """Pulling blobs: Content-Length is the blob size; blobs are served as
    application/octet-stream (server contract)."""
    layer = image.layers[0]
    r = reg.get(f"/v2/{image.repo}/blobs/{digest(layer)}")
    assert r.headers.get("Content-Length") == str(len(layer))
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/octet-stream"


def test_pull_blob_unknown_returns_404_blob_unknown(reg, image):
    """Pulling blobs: "If the blob is not found in the registry, the response code MUST be
    `404 Not Found`" (BLOB_UNKNOWN)."""
    r = reg.get(f"/v2/{image.repo}/blobs/{digest(unique_bytes())}")
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_pull_blob_unknown_repository_returns_404(reg, image):
    """Pulling blobs: a blob asked for through a repository that does not exist -> 404."""
    r = reg.get(f"/v2/{unique_repo('nosuch')}/blobs/{digest(image.layers[0])}")
    assert_error(r, 404, "BLOB_UNKNOWN", "NAME_UNKNOWN")


def test_pull_blob_is_scoped_to_its_repository(reg, image):
    """Definitions: a repository is "a scope for API calls ... (including manifests, blobs, and
    tags)": a blob pushed to repo A is not readable through repo B (contract: 404
    BLOB_UNKNOWN) until pushed or mounted there."""
    other = unique_repo()
    reg.push_blob(other, unique_bytes())  # make `other` exist
    d = digest(image.layers[0])
    assert_error(reg.get(f"/v2/{other}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert reg.head(f"/v2/{other}/blobs/{d}").status_code == 404


def test_pull_empty_blob(reg, repo):
    """Pulling blobs: a zero-length blob is a blob like any other (digest of the empty
    string), pullable with 200 and Content-Length 0."""
    d = reg.push_blob(repo, b"")
    r = reg.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers.get("Docker-Content-Digest") == d


# ---- Range requests on blobs ---------------------------------------------------------------

@pytest.fixture
def blob(reg, repo):
    data = unique_bytes(1000)
    return repo, reg.push_blob(repo, data), data


def test_range_closed_returns_206_with_content_range(reg, blob):
    """Pulling blobs / Resumable Pull: registries SHOULD support `Range` (RFC 9110);
    `bytes=a-b` -> 206 Partial Content, `Content-Range: bytes a-b/size`, the slice."""
    repo, d, data = blob
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206, r.status_code
    assert r.content == data[10:20]
    assert r.headers.get("Content-Range") == f"bytes 10-19/{len(data)}"
    assert r.headers.get("Content-Length") == "10"


def test_range_open_ended_returns_rest_of_blob(reg, blob):
    """Resumable Pull: `bytes=a-` returns from a to the end (206)."""
    repo, d, data = blob
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=900-"})
    assert r.status_code == 206
    assert r.content == data[900:]
    assert r.headers.get("Content-Range") == f"bytes 900-999/{len(data)}"


def test_range_single_byte_and_last_byte(reg, blob):
    """RFC 9110 byte ranges are inclusive: `bytes=0-0` is the first byte, `bytes=999-999` the
    last."""
    repo, d, data = blob
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=0-0"})
    assert r.status_code == 206 and r.content == data[:1]
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=999-999"})
    assert r.status_code == 206 and r.content == data[999:]


def test_range_end_past_size_is_clamped(reg, blob):
    """RFC 9110: a last-pos beyond the representation is replaced by size-1 (206, not 416)."""
    repo, d, data = blob
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=995-5000"})
    assert r.status_code == 206
    assert r.content == data[995:]
    assert r.headers.get("Content-Range") == f"bytes 995-999/{len(data)}"


def test_range_suffix_form(reg, blob):
    """RFC 9110 suffix range `bytes=-n` (last n bytes): 206 with that slice, or the server may
    ignore the Range header and answer the full blob with 200."""
    repo, d, data = blob
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=-10"})
    assert r.status_code in (206, 200)
    if r.status_code == 206:
        assert r.content == data[-10:]
        assert r.headers.get("Content-Range") == f"bytes 990-999/{len(data)}"
    else:
        assert r.content == data


def test_range_unsatisfiable_returns_416(reg, blob):
    """RFC 9110 / server contract: a range starting at or past the end is unsatisfiable ->
    416, with `Content-Range: bytes */size` (RFC 9110 SHOULD)."""
    repo, d, data = blob
    for rng in (f"bytes={len(data)}-", f"bytes={len(data) + 5}-{len(data) + 10}"):
        r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": rng})
        assert r.status_code == 416, (rng, r.status_code)
        cr = r.headers.get("Content-Range")
        assert cr is None or cr == f"bytes */{len(data)}", cr


def test_range_on_unknown_blob_is_404(reg, blob):
    """Pulling blobs: a missing blob is 404 whatever the Range header."""
    repo, _, _ = blob
    r = reg.get(f"/v2/{repo}/blobs/{digest(unique_bytes())}", headers={"Range": "bytes=0-1"})
    assert_error(r, 404, "BLOB_UNKNOWN")
