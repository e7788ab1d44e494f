"""Workflow category Content Management: deleting tags, manifests (end-9) and blobs (end-10)."""

import pytest

import imserver
from ocispec import (
    OCI_MANIFEST, Registry, assert_error, digest, unique_bytes, unique_repo,
)


def tags_of(reg, repo):
    r = reg.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    return r.json().get("tags") or []


# ---- Deleting tags -------------------------------------------------------------------------

def test_delete_tag_returns_202(reg, repo):
    """Deleting tags (end-9): "Upon success, the registry MUST respond with a `202 Accepted`
    code"."""
    reg.push_image(repo, "gone")
    r = reg.delete(f"/v2/{repo}/manifests/gone")
    assert r.status_code == 202, (r.status_code, r.text)


def test_delete_tag_then_get_returns_404(reg, repo):
    """Deleting tags: "Once deleted, a `GET` to `/v2/<name>/manifests/<tag>` will return a
    404"; the tag leaves the tag list."""
    reg.push_image(repo, "gone")
    assert reg.delete(f"/v2/{repo}/manifests/gone").status_code == 202
    assert_error(reg.get(f"/v2/{repo}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    assert reg.head(f"/v2/{repo}/manifests/gone").status_code == 404
    assert "gone" not in tags_of(reg, repo)


def test_delete_tag_keeps_manifest_and_other_tags(reg, repo):
    """Deleting tags: only the tag named is deleted - the manifest stays pullable by digest and
    through its other tags."""
    img = reg.push_image(repo, "one")
    reg.push_manifest(repo, "two", img.manifest, OCI_MANIFEST)
    assert reg.delete(f"/v2/{repo}/manifests/one").status_code == 202
    assert reg.get(f"/v2/{repo}/manifests/{img.digest}").content == img.manifest
    assert reg.get(f"/v2/{repo}/manifests/two").content == img.manifest
    assert tags_of(reg, repo) == ["two"]


def test_delete_unknown_tag_returns_404(reg, repo):
    """Deleting tags (end-9 failure 404): a tag that does not exist -> 404 MANIFEST_UNKNOWN."""
    reg.push_image(repo, "present")
    assert_error(reg.delete(f"/v2/{repo}/manifests/absent"), 404, "MANIFEST_UNKNOWN")


# ---- Deleting manifests --------------------------------------------------------------------

def test_delete_manifest_by_digest_returns_202(reg, repo):
    """Deleting Manifests (end-9): "Upon success, the registry MUST respond with a
    `202 Accepted` code"."""
    img = reg.push_image(repo, "t")
    r = reg.delete(f"/v2/{repo}/manifests/{img.digest}")
    assert r.status_code == 202, (r.status_code, r.text)


def test_delete_manifest_removes_digest_and_its_tags(reg, repo):
    """Deleting Manifests: "Once deleted, a `GET` to `/v2/<name>/manifests/<digest>` and any tag
    pointing to that digest will return a 404"."""
    img = reg.push_image(repo, "t1")
    reg.push_manifest(repo, "t2", img.manifest, OCI_MANIFEST)
    other = reg.push_image(repo, "keep")
    assert reg.delete(f"/v2/{repo}/manifests/{img.digest}").status_code == 202
    assert_error(reg.get(f"/v2/{repo}/manifests/{img.digest}"), 404, "MANIFEST_UNKNOWN")
    for tag in ("t1", "t2"):
        assert_error(reg.get(f"/v2/{repo}/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
    assert reg.get(f"/v2/{repo}/manifests/keep").content == other.manifest
    assert tags_of(reg, repo) == ["keep"]


def test_delete_manifest_unknown_digest_returns_404(reg, repo):
    """Deleting Manifests (end-9 failure 404): an unknown manifest -> 404 MANIFEST_UNKNOWN."""
    reg.push_image(repo, "t")
    r = reg.delete(f"/v2/{repo}/manifests/{digest(unique_bytes())}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_unknown_repository_returns_404(reg):
    """Deleting Manifests: "If the repository does not exist, the response MUST return
    `404 Not Found`"."""
    r = reg.delete(f"/v2/{unique_repo('nosuch')}/manifests/{digest(b'x')}")
    assert_error(r, 404, "NAME_UNKNOWN", "MANIFEST_UNKNOWN")


def test_delete_manifest_twice_second_is_404(reg, repo):
    """Deleting Manifests: a deleted manifest no longer exists, so deleting it again is 404."""
    img = reg.push_image(repo, "t")
    assert reg.delete(f"/v2/{repo}/manifests/{img.digest}").status_code == 202
    assert_error(reg.delete(f"/v2/{repo}/manifests/{img.digest}"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_keeps_it_in_other_repositories(reg, repo):
    """Deleting Manifests: deletion is scoped to `<name>` - the same manifest in another
    repository stays."""
    img = reg.push_image(repo, "t")
    other = unique_repo()
    for blob in [img.config, *img.layers]:
        reg.push_blob(other, blob)
    reg.push_manifest(other, "t", img.manifest, OCI_MANIFEST)
    assert reg.delete(f"/v2/{repo}/manifests/{img.digest}").status_code == 202
    assert reg.get(f"/v2/{other}/manifests/{img.digest}").content == img.manifest


# ---- Deleting blobs ------------------------------------------------------------------------

def test_delete_blob_returns_202_and_blob_is_gone(reg, repo):
    """Deleting Blobs (end-10): "Upon success, the registry MUST respond with code
    `202 Accepted`"; afterwards the blob is 404 BLOB_UNKNOWN."""
    data = unique_bytes(100)
    d = reg.push_blob(repo, data)
    r = reg.delete(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 202, (r.status_code, r.text)
    assert_error(reg.get(f"/v2/{repo}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert reg.head(f"/v2/{repo}/blobs/{d}").status_code == 404


def test_delete_blob_unknown_returns_404(reg, repo):
    """Deleting Blobs: "If the blob is not found, a `404 Not Found` code MUST be returned"."""
    reg.push_blob(repo, unique_bytes())
    assert_error(reg.delete(f"/v2/{repo}/blobs/{digest(unique_bytes())}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_twice_second_is_404(reg, repo):
    """Deleting Blobs: once deleted the blob is not found, so a second DELETE is 404."""
    d = reg.push_blob(repo, unique_bytes())
    assert reg.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert_error(reg.delete(f"/v2/{repo}/blobs/{d}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_is_scoped_to_repository(reg, repo):
    """Deleting Blobs: deleting a blob from `<name>` leaves the same content in another
    repository readable."""
    data = unique_bytes(100)
    d = reg.push_blob(repo, data)
    other = unique_repo()
    reg.push_blob(other, data)
    assert reg.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert reg.get(f"/v2/{other}/blobs/{d}").content == data
    assert not reg.blob_exists(repo, d)


def test_delete_blob_then_push_again(reg, repo):
    """Deleting Blobs: a deleted blob can be pushed again and is then readable."""
    data = unique_bytes(100)
    d = reg.push_blob(repo, data)
    assert reg.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    reg.push_blob(repo, data)
    assert reg.get(f"/v2/{repo}/blobs/{d}").content == data


# ---- Deletion disabled ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodelete():
    """A second server with deletion disabled by configuration."""
    with imserver.Server(env={"IMAGE_MANAGER_REGISTRY__DELETE_ENABLED": "false"}) as srv:
        yield srv


@pytest.fixture
def nd(nodelete):
    return Registry(nodelete.url)


def test_delete_disabled_tag_returns_400_or_405(nd):
    """Deleting tags: "If tag deletion is disabled, the registry MUST respond with either a
    `400 Bad Request` or a `405 Method Not Allowed`" (server contract: 405 UNSUPPORTED); the
    tag survives."""
    repo = unique_repo()
    img = nd.push_image(repo, "t")
    assert_error(nd.delete(f"/v2/{repo}/manifests/t"), (400, 405), "UNSUPPORTED")
    assert nd.get(f"/v2/{repo}/manifests/t").content == img.manifest


def test_delete_disabled_manifest_returns_400_or_405(nd):
    """Deleting Manifests: "If manifest deletion is disabled, the registry MUST respond with
    either a `400 Bad Request` or a `405 Method Not Allowed`"; the manifest survives."""
    repo = unique_repo()
    img = nd.push_image(repo, "t")
    assert_error(nd.delete(f"/v2/{repo}/manifests/{img.digest}"), (400, 405), "UNSUPPORTED")
    assert nd.get(f"/v2/{repo}/manifests/{img.digest}").content == img.manifest


def test_delete_disabled_blob_returns_400_or_405(nd):
    """Deleting Blobs: "If blob deletion is disabled, the registry MUST respond with either a
    `400 Bad Request` or a `405 Method Not Allowed`"; the blob survives."""
    repo = unique_repo()
    data = unique_bytes()
    d = nd.push_blob(repo, data)
    assert_error(nd.delete(f"/v2/{repo}/blobs/{d}"), (400, 405), "UNSUPPORTED")
    assert nd.get(f"/v2/{repo}/blobs/{d}").content == data


def test_delete_disabled_server_status_is_405_per_contract(nd):
    """Server contract: with deletion disabled, DELETE answers exactly 405 (UNSUPPORTED)."""
    repo = unique_repo()
    d = nd.push_blob(repo, unique_bytes())
    assert nd.delete(f"/v2/{repo}/blobs/{d}").status_code == 405
