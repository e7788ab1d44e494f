"""Error Codes section, and the `<name>` grammar (NAME_INVALID)."""

import pytest

from ocispec import (
    OCI_MANIFEST, assert_error, assert_error_body, digest, raw_request, unique_bytes, unique_repo,
    with_query,
)


# ---- Error body format ---------------------------------------------------------------------

def test_error_body_format_blob_unknown(reg, repo):
    """Error Codes: "If the response body is in JSON format, it MUST have the following format:
    {"errors": [{"code": ..., "message": ..., "detail": ...}]}"; `code` "MUST be a unique
    identifier, containing only uppercase alphabetic characters and underscores"."""
    reg.push_blob(repo, unique_bytes())
    r = reg.get(f"/v2/{repo}/blobs/{digest(unique_bytes())}")
    assert r.status_code == 404
    assert assert_error_body(r) == ["BLOB_UNKNOWN"]


@pytest.mark.parametrize("case", [
    "manifest_unknown", "name_unknown", "blob_upload_unknown", "digest_invalid",
    "manifest_invalid", "manifest_blob_unknown", "name_invalid",
])
def test_error_codes_are_from_the_spec_table(reg, repo, case):
    """Error Codes: "The `code` field MUST be one of" the table's codes; each failure class
    answers its code (code-1 .. code-14) in the JSON format."""
    img = reg.push_image(repo, "t")
    if case == "manifest_unknown":
        r, status, code = reg.get(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN"
    elif case == "name_unknown":
        r, status, code = reg.get(f"/v2/{unique_repo('nosuch')}/tags/list"), 404, "NAME_UNKNOWN"
    elif case == "blob_upload_unknown":
        r = reg.get(f"/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000")
        status, code = 404, "BLOB_UPLOAD_UNKNOWN"
    elif case == "digest_invalid":
        loc = reg.start_upload(repo)
        r = reg.put(with_query(loc, digest=digest(b"other")), data=b"content")
        status, code = 400, "DIGEST_INVALID"
    elif case == "manifest_invalid":
        r, status, code = reg.put_manifest(repo, "bad", b"{", OCI_MANIFEST), 400, "MANIFEST_INVALID"
    elif case == "manifest_blob_unknown":
        body = img.manifest.replace(digest(img.layers[0]).encode(), digest(b"nope").encode())
        r, status, code = reg.put_manifest(repo, "mbu", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN"
    else:
        r, status, code = reg.post("/v2/UPPER/blobs/uploads/"), 400, "NAME_INVALID"
    codes = assert_error(r, status, code)
    body = r.json()
    for e in body["errors"]:
        assert isinstance(e.get("message", ""), str)
    assert code in codes


# ---- Repository name grammar ---------------------------------------------------------------

VALID_NAMES = ["a", "a0/b1", "a.b", "a_b", "a__b", "a-b", "a---b", "a.b-c_d__e/f/g/h", "0/1/2"]
INVALID_NAMES = ["UPPER", "a/B", "a..b", "a___b", "a.-b", "-a", "a-", "_a", "a_", ".a", "a.",
                 "a/-b", "a/b-", "a b", "a$b", "a:b"]


@pytest.mark.parametrize("suffix", VALID_NAMES)
def test_name_grammar_valid_names_accepted(reg, suffix):
    """Pulling manifests: `<name>` MUST match
    `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*` - names that
    do are usable (upload starts with 202)."""
    name = f"{unique_repo('ok')}/{suffix}"
    r = reg.post(f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 202, (name, r.status_code, r.text[:200])


@pytest.mark.parametrize("suffix", INVALID_NAMES)
def test_name_grammar_invalid_names_rejected(reg, suffix):
    """Name grammar: a `<name>` not matching the regular expression is NAME_INVALID (400)."""
    name = f"{unique_repo('bad')}/{suffix}"
    r = raw_request(reg, "POST", f"/v2/{name.replace(' ', '%20')}/blobs/uploads/")
    assert r is not None
    assert_error(r, 400, "NAME_INVALID")


@pytest.mark.parametrize("path", ["/v2/a//b/blobs/uploads/", "/v2//a/blobs/uploads/",
                                  "/v2/a/b//blobs/uploads/"])
def test_name_grammar_empty_component_rejected(reg, path):
    """Name grammar: path components are separated by single slashes; an empty component is
    not a valid name (400 NAME_INVALID, or 404 if the route does not match) - never 202."""
    r = raw_request(reg, "POST", path)
    assert r is not None
    assert_error(r, (400, 404))


def test_name_of_255_characters_is_accepted(reg):
    """Implementer note: clients limit `<name>` (with host) to 255 characters; the server
    contract accepts names up to 255 characters total."""
    name = "n" + "a" * 99 + "/" + "b" * 100 + "/" + "c" * 53
    assert len(name) == 255
    r = reg.post(f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 202, (r.status_code, r.text[:200])


def test_name_of_256_characters_is_name_invalid(reg):
    """Name length: "The total length of a repository name, including slashes, MUST be less
    than 256 characters" -> a 256-character name is NAME_INVALID (400)."""
    name = "n" + "a" * 99 + "/" + "b" * 100 + "/" + "c" * 54
    assert len(name) == 256
    assert_error(reg.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")
    assert_error(reg.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(reg.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")


def test_name_invalid_on_every_endpoint(reg):
    """Name grammar "throughout this document": NAME_INVALID also on manifests, blobs, tags and
    referrers endpoints."""
    d = digest(b"x")
    for method, path in [("GET", f"/v2/Bad/manifests/latest"), ("HEAD", f"/v2/Bad/blobs/{d}"),
                         ("GET", f"/v2/Bad/blobs/{d}"), ("GET", "/v2/Bad/tags/list"),
                         ("GET", f"/v2/Bad/referrers/{d}"), ("PUT", "/v2/Bad/manifests/t"),
                         ("DELETE", f"/v2/Bad/blobs/{d}")]:
        r = reg.request(method, path)
        assert r.status_code == 400, (method, path, r.status_code)
        if method != "HEAD":
            assert_error(r, 400, "NAME_INVALID")


# ---- Digest grammar ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["sha256:xyz", "sha256:" + "A" * 64, "sha256", "sha256:",
                                 "nodigest", "sha256:" + "a" * 63])
def test_malformed_digest_in_blob_path(reg, repo, bad):
    """Content digests: `algorithm ":" encoded`; sha256 encodings are 64 lowercase hex. A
    malformed digest is never found: 400 DIGEST_INVALID or 404 BLOB_UNKNOWN."""
    reg.push_blob(repo, unique_bytes())
    r = reg.get(f"/v2/{repo}/blobs/{bad}")
    assert r.status_code in (400, 404), (bad, r.status_code)
    assert_error(r, r.status_code, "DIGEST_INVALID" if r.status_code == 400 else "BLOB_UNKNOWN")


@pytest.mark.parametrize("bad", ["sha256:zz", "md5:d41d8cd98f00b204e9800998ecf8427e", "nope"])
def test_malformed_digest_on_upload_close(reg, repo, bad):
    """PUT Blob Upload (end-6 failure 400): a `digest` parameter that is not a valid (supported)
    digest is rejected with 400 DIGEST_INVALID (or UNSUPPORTED for an unknown algorithm)."""
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=bad), data=b"abc")
    assert_error(r, 400, "DIGEST_INVALID", "UNSUPPORTED")
