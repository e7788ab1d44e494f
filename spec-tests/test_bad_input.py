"""Bad input: malformed manifests, wrong media types, digest mismatches, truncated uploads, bad
Range / Content-Range headers, hostile names and paths, oversized headers and bodies.

For every case: a 4xx answer (never 5xx), nothing half-stored, and the server keeps answering
(the autouse fixture in conftest.py also checks the process is still alive after each test).
"""

from urllib.parse import urlsplit

import pytest

from ocispec import (
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, assert_error, descriptor,
    digest, dumps, raw_request, unique_bytes, unique_repo, with_query,
)


def assert_up(reg):
    r = reg.get("/v2/")
    assert r.status_code == 200, f"server no longer answers /v2/: {r.status_code}"


def assert_no_5xx(r, what=""):
    assert r is None or r.status_code < 500, f"{what}: server error {r.status_code}: {r.content[:300]!r}"


def raw_path(loc: str) -> str:
    s = urlsplit(loc)
    return s.path + (f"?{s.query}" if s.query else "")


@pytest.fixture
def blobs(reg, repo):
    config = dumps({"os": "linux", "n": unique_bytes(8).hex()})
    layer = unique_bytes(100)
    reg.push_blob(repo, config)
    reg.push_blob(repo, layer)
    return config, layer


def good_manifest(blobs, **extra):
    config, layer = blobs
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
         "layers": [descriptor(OCI_LAYER, layer)]}
    m.update(extra)
    return m


def assert_manifest_rejected(reg, repo, tag, body, content_type, *codes):
    r = reg.put_manifest(repo, tag, body, content_type)
    assert_no_5xx(r, tag)
    assert_error(r, 400, *(codes or ("MANIFEST_INVALID",)))
    assert reg.head(f"/v2/{repo}/manifests/{tag}").status_code == 404
    assert reg.head(f"/v2/{repo}/manifests/{digest(body)}").status_code == 404
    assert_up(reg)


# ---- Malformed manifests -------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"{", b"", b"null", b"[]", b"42", b'"string"', b"{\"schemaVersion\": 2,}", b"\xff\xfe{}",
    b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'"',
], ids=["open-brace", "empty", "null", "array", "number", "string", "trailing-comma",
        "bad-utf8", "unterminated"])
def test_malformed_json_manifest_is_manifest_invalid(reg, repo, blobs, body):
    """Error Codes code-6 MANIFEST_INVALID: a body that is not a JSON manifest -> 400."""
    assert_manifest_rejected(reg, repo, "bad", body, OCI_MANIFEST)


def test_deeply_nested_json_manifest_is_rejected(reg, repo, blobs):
    """MANIFEST_INVALID: pathological nesting (100k levels) is rejected, not a stack overflow."""
    body = b'{"schemaVersion":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_manifest_rejected(reg, repo, "deep", body, OCI_MANIFEST)


@pytest.mark.parametrize("mutation", [
    "schema1", "no-schema", "schema-string", "no-config", "config-not-object", "layers-not-list",
    "bad-config-digest", "negative-size", "size-string", "no-digest",
])
def test_structurally_invalid_image_manifest(reg, repo, blobs, mutation):
    """MANIFEST_INVALID: valid JSON that is not a valid OCI image manifest (schemaVersion must
    be 2, config a descriptor, layers a list of descriptors with valid digests and sizes)."""
    m = good_manifest(blobs)
    if mutation == "schema1":
        m["schemaVersion"] = 1
    elif mutation == "no-schema":
        del m["schemaVersion"]
    elif mutation == "schema-string":
        m["schemaVersion"] = "2"
    elif mutation == "no-config":
        del m["config"]
    elif mutation == "config-not-object":
        m["config"] = "sha256:abc"
    elif mutation == "layers-not-list":
        m["layers"] = {"a": 1}
    elif mutation == "bad-config-digest":
        m["config"]["digest"] = "sha256:not-hex"
    elif mutation == "negative-size":
        m["layers"][0]["size"] = -1
    elif mutation == "size-string":
        m["layers"][0]["size"] = "100"
    elif mutation == "no-digest":
        del m["layers"][0]["digest"]
    assert_manifest_rejected(reg, repo, "bad", dumps(m), OCI_MANIFEST,
                             "MANIFEST_INVALID", "DIGEST_INVALID")


def test_content_type_index_with_manifest_body(reg, repo, blobs):
    """Wrong media type: declared an image index but the body is an image manifest (no
    `manifests`, mediaType differs) -> 400 MANIFEST_INVALID."""
    body = dumps(good_manifest(blobs))
    assert_manifest_rejected(reg, repo, "bad", body, OCI_INDEX)


def test_content_type_manifest_with_index_body(reg, repo, blobs):
    """Wrong media type: declared an image manifest but the body is an image index."""
    body = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    assert_manifest_rejected(reg, repo, "bad", body, OCI_MANIFEST)


def test_content_type_differs_from_media_type_field(reg, repo, blobs):
    """Pushing Manifests: "If a manifest includes a `mediaType` field, clients MUST set the
    `Content-Type` header to the value specified by the `mediaType` field" - a Docker
    Content-Type on an OCI-typed body is MANIFEST_INVALID."""
    body = dumps(good_manifest(blobs))
    assert_manifest_rejected(reg, repo, "bad", body, DOCKER_MANIFEST)


def test_index_with_non_descriptor_entries(reg, repo, blobs):
    """MANIFEST_INVALID: an index whose `manifests` entries are not descriptors."""
    body = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ["sha256:abc", 3]})
    assert_manifest_rejected(reg, repo, "bad", body, OCI_INDEX)


def test_subject_that_is_not_a_descriptor(reg, repo, blobs):
    """MANIFEST_INVALID: a `subject` that is not a descriptor."""
    body = dumps(good_manifest(blobs, subject="sha256:" + "a" * 64))
    assert_manifest_rejected(reg, repo, "bad", body, OCI_MANIFEST)


def test_huge_manifest_body_is_413(reg, repo, blobs):
    """end-7 failure 413: a 16 MiB manifest is refused as too large (JSON error) and the server
    carries on."""
    body = dumps(good_manifest(blobs, annotations={"pad": "x" * (16 * 1024 * 1024)}))
    r = reg.put_manifest(repo, "huge", body, OCI_MANIFEST)
    assert_no_5xx(r)
    assert_error(r, 413, "SIZE_INVALID", "MANIFEST_INVALID")
    assert_up(reg)


# ---- Digest mismatches on upload -----------------------------------------------------------

def test_monolithic_upload_digest_mismatch_stores_nothing(reg, repo):
    """DIGEST_INVALID: "provided digest did not match uploaded content" - 400, and afterwards
    neither digest is present (HEAD 404)."""
    data = unique_bytes(4096)
    claimed = digest(unique_bytes(4096))
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=claimed), data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "DIGEST_INVALID")
    assert reg.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404
    assert reg.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
    assert_up(reg)


def test_single_post_digest_mismatch_stores_nothing(reg, repo):
    """DIGEST_INVALID on a single-POST upload: 400 and nothing stored."""
    data = unique_bytes(4096)
    claimed = digest(b"something else " + data)
    r = reg.post(with_query(f"/v2/{repo}/blobs/uploads/", digest=claimed), data=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert_no_5xx(r)
    if r.status_code == 202:
        r = reg.put(with_query(reg.abs(r.headers["Location"]), digest=claimed), data=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert reg.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404
    assert reg.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404


# ---- Truncated uploads (Content-Length larger than the body) -------------------------------

def test_truncated_monolithic_put_stores_nothing(reg, repo):
    """Single POST/PUT: "The `Content-Length` header MUST match the blob's actual content length"
    - a body cut short (EOF after half the announced bytes) is never stored; the answer, if
    any, is 4xx."""
    data = unique_bytes(2000)
    loc = reg.start_upload(repo)
    r = raw_request(reg, "PUT", raw_path(with_query(loc, digest=digest(data))),
                    headers={"Content-Type": "application/octet-stream"},
                    body=data[:1000], content_length=len(data), half_close=True)
    assert_no_5xx(r, "truncated PUT")
    assert r is None or 400 <= r.status_code < 500
    assert reg.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
    assert reg.head(f"/v2/{repo}/blobs/{digest(data[:1000])}").status_code == 404
    assert_up(reg)


def test_truncated_single_post_stores_nothing(reg, repo):
    """Single POST: a truncated body is never stored (4xx or connection closed)."""
    data = unique_bytes(2000)
    r = raw_request(reg, "POST", with_query(f"/v2/{repo}/blobs/uploads/", digest=digest(data)),
                    headers={"Content-Type": "application/octet-stream"},
                    body=data[:10], content_length=len(data), half_close=True)
    assert_no_5xx(r, "truncated POST")
    assert r is None or 400 <= r.status_code < 500
    assert reg.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
    assert_up(reg)


def test_truncated_patch_does_not_advance_past_received_bytes(reg, repo):
    """PATCH: a truncated chunk never makes the upload claim bytes it did not receive; the
    session's Range (end-13) stays within what arrived, and the answer is never 5xx."""
    data = unique_bytes(2000)
    loc = reg.start_upload(repo)
    r = raw_request(reg, "PATCH", raw_path(loc),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"0-{len(data) - 1}"},
                    body=data[:700], content_length=len(data), half_close=True)
    assert_no_5xx(r, "truncated PATCH")
    assert r is None or 400 <= r.status_code < 500
    st = reg.get(loc)
    assert_no_5xx(st)
    assert st.status_code in (204, 404)
    if st.status_code == 204 and st.headers.get("Range"):
        end = int(st.headers["Range"].split("-")[-1])
        assert end < 700, st.headers["Range"]
    r = reg.put(with_query(loc, digest=digest(data)))
    assert_no_5xx(r)
    assert r.status_code != 201
    assert reg.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
    assert_up(reg)


def test_truncated_manifest_put_stores_nothing(reg, repo, blobs):
    """Manifest PUT with a truncated body: never stored, never 5xx."""
    body = dumps(good_manifest(blobs))
    r = raw_request(reg, "PUT", f"/v2/{repo}/manifests/trunc",
                    headers={"Content-Type": OCI_MANIFEST}, body=body[:50],
                    content_length=len(body), half_close=True)
    assert_no_5xx(r, "truncated manifest PUT")
    assert reg.head(f"/v2/{repo}/manifests/trunc").status_code == 404
    assert_up(reg)


def test_malformed_chunked_transfer_encoding(reg, repo):
    """A broken `Transfer-Encoding: chunked` body (bad chunk size) is refused (4xx or closed),
    never 5xx, nothing stored."""
    loc = reg.start_upload(repo)
    body = b"zz\r\nhello\r\n0\r\n\r\n"
    r = raw_request(reg, "PUT", raw_path(with_query(loc, digest=digest(b"hello"))),
                    headers={"Transfer-Encoding": "chunked"}, body=body, half_close=True,
                    send_length=False)
    assert_no_5xx(r, "bad chunked")
    assert reg.head(f"/v2/{repo}/blobs/{digest(b'hello')}").status_code == 404
    assert_up(reg)


# ---- Bad Range headers on blob GET ---------------------------------------------------------

@pytest.mark.parametrize("rng", [
    "bytes=abc", "bytes=5-2", "items=0-1", "bytes=", "bytes=-", "bytes=--1", "bytes=0-1,3-4",
    "bytes=99999999999999999999999999-", "bytes=0-99999999999999999999999999", "bytes=-0",
    "bytes= 1 - 2", "bytes=1-2-3",
])
def test_bad_range_header_on_blob_get(reg, repo, rng):
    """Range (RFC 9110): a Range header the server cannot or will not satisfy is either ignored
    (200 with the full blob), answered 206 with a correct slice, or refused (416/400) - never
    5xx, never wrong bytes."""
    data = unique_bytes(100)
    d = reg.push_blob(repo, data)
    r = reg.get(f"/v2/{repo}/blobs/{d}", headers={"Range": rng})
    assert_no_5xx(r, rng)
    assert r.status_code in (200, 206, 400, 416), (rng, r.status_code)
    if r.status_code == 200:
        assert r.content == data
    elif r.status_code == 206:
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/"):
            cr = r.headers.get("Content-Range", "")
            start, end = (int(x) for x in cr.split(" ")[1].split("/")[0].split("-"))
            assert r.content == data[start:end + 1]
    assert_up(reg)


# ---- Bad Content-Range on PATCH ------------------------------------------------------------

@pytest.mark.parametrize("content_range", [
    "abc", "5-2", "0-", "-5", "0-4-9", "x-y", "0-99999999999999999999999999",
    # the largest end a u64 holds: its length (end + 1) does not fit, and must not overflow
    "0-18446744073709551615", "bytes 0-18446744073709551615/*",
])
def test_bad_content_range_on_patch(reg, repo, content_range):
    """PATCH: the Content-Range "MUST match the following regular expression ^[0-9]+-[0-9]+$" -
    a malformed one is refused with 400 (BLOB_UPLOAD_INVALID) or 416, never 202/5xx."""
    loc = reg.start_upload(repo)
    r = reg.patch(loc, data=b"hello", headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": content_range})
    assert_no_5xx(r, content_range)
    assert r.status_code in (400, 416), (content_range, r.status_code)
    if r.status_code == 400:
        assert_error(r, 400, "BLOB_UPLOAD_INVALID", "SIZE_INVALID")
    assert_up(reg)


def test_content_range_length_mismatch_on_patch(reg, repo):
    """PATCH: the range must describe the chunk sent - `0-9` with 5 bytes is refused (400
    SIZE_INVALID / BLOB_UPLOAD_INVALID, or 416), and the upload does not advance."""
    loc = reg.start_upload(repo)
    r = reg.patch(loc, data=b"hello", headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": "0-9"})
    assert_no_5xx(r)
    assert r.status_code in (400, 416), r.status_code
    if r.status_code == 400:
        assert_error(r, 400, "SIZE_INVALID", "BLOB_UPLOAD_INVALID")
    st = reg.get(loc)
    if st.status_code == 204 and st.headers.get("Range"):
        assert int(st.headers["Range"].split("-")[-1]) < 5


def test_content_range_not_at_current_offset_is_416(reg, repo):
    """PATCH: "If a chunk is uploaded out of order, the registry MUST respond with a `416`"."""
    loc = reg.start_upload(repo)
    r = reg.patch(loc, data=b"hello", headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": "0-4"})
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    r = reg.patch(loc, data=b"world", headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": "6-10"})
    assert r.status_code == 416
    assert_up(reg)


# ---- Hostile names and paths ---------------------------------------------------------------

def test_overlong_name_is_name_invalid(reg):
    """Name length (> 255 characters total): 400 NAME_INVALID on every endpoint kind."""
    name = "/".join(["a" * 50] * 6)  # 305 chars
    for method, path in [("POST", f"/v2/{name}/blobs/uploads/"), ("GET", f"/v2/{name}/tags/list"),
                         ("PUT", f"/v2/{name}/manifests/t"),
                         ("GET", f"/v2/{name}/blobs/{digest(b'x')}")]:
        r = reg.request(method, path)
        assert_error(r, 400, "NAME_INVALID")
    assert_up(reg)


def test_very_long_name_10k(reg):
    """A 10,000-character name: refused with 4xx (400 NAME_INVALID, or 414 URI too long)."""
    name = "a" * 10_000
    r = raw_request(reg, "GET", f"/v2/{name}/tags/list")
    assert r is not None
    assert_no_5xx(r)
    assert r.status_code in (400, 414, 431), r.status_code
    assert_up(reg)


@pytest.mark.parametrize("path", [
    "/v2/a/../b/tags/list", "/v2/../../etc/passwd",
    "/v2/a/..%2F..%2Fetc/tags/list", "/v2/%2e%2e/a/tags/list", "/v2/a/%2e%2e/b/tags/list",
    "/v2/./a/tags/list",
])
def test_dot_dot_in_name_is_refused(reg, path):
    """Name grammar: `..` and `.` are not valid path components (each component begins with
    [a-z0-9]) - 400 NAME_INVALID or 404, never a traversal, never 5xx."""
    r = raw_request(reg, "GET", path)
    assert r is not None
    assert_no_5xx(r, path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.body
    assert_up(reg)


def test_dot_dot_push_is_refused(reg):
    """A push to a name containing `..` is refused (400/404), so no repository escapes its
    directory."""
    for path in ("/v2/a/../b/blobs/uploads/", "/v2/a/..%2F..%2Fx/blobs/uploads/",
                 "/v2/%2e%2e/x/blobs/uploads/"):
        r = raw_request(reg, "POST", path)
        assert r is not None
        assert_no_5xx(r, path)
        assert r.status_code in (400, 404), (path, r.status_code)


def test_percent_encoded_slash_in_name(reg):
    """Name grammar: components are separated by literal `/`; a `%2F`-encoded slash is not a
    separator and not a name character -> 400 NAME_INVALID or 404, never an alias of the real
    repository."""
    repo = unique_repo()
    reg.push_image(repo, "t")
    encoded = repo.replace("/", "%2F")
    for method, path in [("GET", f"/v2/{encoded}/tags/list"),
                         ("GET", f"/v2/{encoded}/manifests/t"),
                         ("POST", f"/v2/{encoded}/blobs/uploads/"),
                         ("GET", f"/v2/{repo.replace('/', '%2f')}/tags/list")]:
        r = raw_request(reg, method, path)
        assert r is not None
        assert_no_5xx(r, path)
        assert r.status_code in (400, 404), (method, path, r.status_code)
    assert_up(reg)


@pytest.mark.parametrize("path", [
    "/v2/%FF%FE/tags/list", "/v2/a%00b/tags/list", "/v2/a/manifests/a%00b",
    "/v2/a/blobs/sha256:%00", "/v2/a/manifests/%FF", "/v2/a%20b/tags/list",
])
def test_garbage_bytes_in_path(reg, path):
    """Percent-encoded NUL / invalid UTF-8 in names or references: 4xx, never 5xx."""
    r = raw_request(reg, "GET", path)
    assert r is not None
    assert_no_5xx(r, path)
    assert r.status_code in (400, 404), (path, r.status_code)


@pytest.mark.parametrize("query", ["n=-1", "n=abc", "n=99999999999999999999999", "n=",
                                   "last=%00", "n=1&n=2"])
def test_bad_pagination_parameters(reg, query):
    """Listing Tags (end-8b): `n` is an integer; a malformed one is 400 (or ignored, 200),
    never 5xx."""
    repo = unique_repo()
    reg.push_image(repo, "t")
    r = reg.get(f"/v2/{repo}/tags/list?{query}")
    assert_no_5xx(r, query)
    assert r.status_code in (200, 400), (query, r.status_code)
    r = reg.get(f"/v2/_catalog?{query}")
    assert_no_5xx(r, query)
    assert r.status_code in (200, 400), (query, r.status_code)


# ---- Oversized headers ---------------------------------------------------------------------

def test_huge_header_is_431_or_400(reg):
    """A 100 KB request header is refused with 431 (Request Header Fields Too Large) or 400,
    never 5xx; the server then still answers /v2/."""
    r = raw_request(reg, "GET", "/v2/", headers={"X-Huge": "a" * 100_000})
    assert r is not None, "connection closed without an answer"
    assert r.status_code in (400, 431), r.status_code
    assert_up(reg)


def test_many_headers(reg):
    """Thousands of small headers: 431/400, or served normally - never 5xx, server stays up."""
    headers = {f"X-H{i}": "v" for i in range(2000)}
    r = raw_request(reg, "GET", "/v2/", headers=headers)
    assert_no_5xx(r)
    assert r is None or r.status_code in (200, 400, 431), r.status_code
    assert_up(reg)


def test_huge_content_range_header(reg, repo):
    """A 100 KB Content-Range on PATCH: 4xx, never 5xx."""
    loc = reg.start_upload(repo)
    r = raw_request(reg, "PATCH", raw_path(loc), headers={"Content-Range": "0-" + "9" * 100_000},
                    body=b"abc")
    assert r is not None
    assert_no_5xx(r)
    assert 400 <= r.status_code < 500
    assert_up(reg)


# ---- Unknown methods -----------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("BREW", "/v2/"), ("PATCH", "/v2/a/manifests/t"), ("POST", "/v2/a/manifests/t"),
    ("PUT", "/v2/a/blobs/sha256:" + "a" * 64), ("DELETE", "/v2/a/tags/list"),
])
def test_unsupported_method_is_4xx(reg, method, path):
    """Methods the API does not define on a route: 404/405 (or 400), never 5xx."""
    r = raw_request(reg, method, path)
    assert r is not None
    assert_no_5xx(r, f"{method} {path}")
    assert r.status_code in (400, 404, 405), (method, path, r.status_code)
    assert_up(reg)
