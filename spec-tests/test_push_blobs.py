"""Workflow category Push: blob uploads (end-4a, end-4b, end-5, end-6, end-11, end-13, end-14)."""

from urllib.parse import urlsplit

import pytest

from ocispec import (
    UUID_RE, assert_error, digest, parse_range, unique_bytes, unique_repo, with_query,
)

OCTET = {"Content-Type": "application/octet-stream"}


def assert_pullable(reg, location, data):
    """`<blob-location>` is a pullable blob URL."""
    assert location, "no Location header"
    r = reg.get(location)
    assert r.status_code == 200, (location, r.status_code)
    assert r.content == data


# ---- POST then PUT -------------------------------------------------------------------------

def test_post_then_put_post_returns_202_with_location(reg, repo):
    """POST then PUT (end-4a): "Upon success, the response MUST have a code of `202 Accepted`,
    and MUST include the following header: Location"."""
    r = reg.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    assert r.headers.get("Location")


def test_post_then_put_location_contains_unique_session_uuid(reg, repo):
    """POST then PUT: "The `<location>` MUST contain a UUID representing a unique session ID"."""
    a = reg.post(f"/v2/{repo}/blobs/uploads/").headers.get("Location", "")
    b = reg.post(f"/v2/{repo}/blobs/uploads/").headers.get("Location", "")
    assert UUID_RE.search(a), a
    assert UUID_RE.search(b), b
    assert a != b


def test_post_then_put_put_returns_201_with_pullable_location(reg, repo):
    """POST then PUT (end-6): "Upon successful completion of the request, the response MUST have
    code `201 Created` and MUST have the following header: Location: <blob-location>" - a
    pullable blob URL."""
    data = unique_bytes(300)
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=digest(data)), data=data, headers=OCTET)
    assert r.status_code == 201, r.text
    assert_pullable(reg, r.headers.get("Location"), data)
    assert reg.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_post_then_put_docker_content_digest_if_present_matches(reg, repo):
    """Push: a Docker-Content-Digest on the completed upload, if present, is the blob digest."""
    data = unique_bytes(50)
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=digest(data)), data=data, headers=OCTET)
    assert r.status_code == 201
    dcd = r.headers.get("Docker-Content-Digest")
    assert dcd is None or dcd == digest(data)


def test_post_then_put_with_digest_mismatch_is_rejected(reg, repo):
    """POST then PUT: `<digest>` is the digest of the blob being uploaded; a mismatch is
    DIGEST_INVALID (400) and nothing is stored under the claimed digest."""
    data = unique_bytes(80)
    claimed = digest(unique_bytes(80))
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=claimed), data=data, headers=OCTET)
    assert_error(r, 400, "DIGEST_INVALID")
    assert not reg.blob_exists(repo, claimed)
    assert not reg.blob_exists(repo, digest(data))


def test_post_then_put_without_digest_is_rejected(reg, repo):
    """PUT Blob Upload: "The closing `PUT` request MUST include the `<digest>` of the whole
    blob" - without it the upload cannot complete (400)."""
    loc = reg.start_upload(repo)
    r = reg.put(loc, data=b"abc", headers=OCTET)
    assert_error(r, 400, "DIGEST_INVALID", "BLOB_UPLOAD_INVALID")


def test_post_then_put_zero_length_blob(reg, repo):
    """POST then PUT: an empty blob is a valid blob (201, pullable)."""
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=digest(b"")), data=b"", headers=OCTET)
    assert r.status_code == 201
    assert_pullable(reg, r.headers.get("Location"), b"")


def test_upload_session_is_closed_after_put(reg, repo):
    """PUT Blob Upload: after a successful closing PUT the session is gone; its location then
    answers 404 BLOB_UPLOAD_UNKNOWN."""
    data = unique_bytes(40)
    loc = reg.start_upload(repo)
    assert reg.put(with_query(loc, digest=digest(data)), data=data, headers=OCTET).status_code == 201
    assert_error(reg.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    r = reg.put(with_query(loc, digest=digest(data)), data=data, headers=OCTET)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_same_blob_twice_is_idempotent(reg, repo):
    """Layer Upload De-duplication: uploading content that already exists is accepted again
    (201) and the blob stays readable."""
    data = unique_bytes(64)
    reg.push_blob(repo, data)
    reg.push_blob(repo, data)
    assert reg.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


# ---- Single POST ---------------------------------------------------------------------------

def test_single_post_monolithic_upload(reg, repo):
    """Single POST (end-4b): "Successful completion of the request MUST return a `201 Created`
    and MUST include ... Location"; registries that do not support it SHOULD return 202 with a
    Location, and the client proceeds with PUT."""
    data = unique_bytes(200)
    d = digest(data)
    r = reg.post(with_query(f"/v2/{repo}/blobs/uploads/", digest=d), data=data, headers=OCTET)
    assert r.status_code in (201, 202), r.text
    assert r.headers.get("Location")
    if r.status_code == 202:
        loc = reg.abs(r.headers["Location"])
        r = reg.put(with_query(loc, digest=d), data=data, headers=OCTET)
        assert r.status_code == 201
    assert_pullable(reg, r.headers.get("Location"), data)


def test_single_post_digest_mismatch_is_rejected(reg, repo):
    """Single POST: "the `<digest>` MUST match the blob's digest" - else 400 DIGEST_INVALID and
    nothing is stored."""
    data = unique_bytes(200)
    claimed = digest(unique_bytes(200))
    r = reg.post(with_query(f"/v2/{repo}/blobs/uploads/", digest=claimed), data=data, headers=OCTET)
    if r.status_code == 202:  # single POST unsupported: the mismatch shows on the PUT
        r = reg.put(with_query(reg.abs(r.headers["Location"]), digest=claimed), data=data,
                    headers=OCTET)
    assert_error(r, 400, "DIGEST_INVALID")
    assert not reg.blob_exists(repo, claimed)


# ---- Chunked upload ------------------------------------------------------------------------

def patch_chunk(reg, loc, chunk, start):
    end = start + len(chunk) - 1
    return reg.patch(loc, data=chunk, headers={**OCTET, "Content-Range": f"{start}-{end}"})


def test_chunked_upload_patch_returns_202_with_location_and_range(reg, repo):
    """Pushing a blob in chunks (end-5): "The response for each successful chunk upload MUST be
    `202 Accepted`, and MUST have the following headers: Location, Range: 0-<end-of-range>",
    then the closing PUT (end-6) MUST answer 201 with a pullable Location."""
    data = unique_bytes(3000)
    chunks = [data[0:1000], data[1000:2000], data[2000:]]
    loc = reg.start_upload(repo)
    offset = 0
    for chunk in chunks:
        r = patch_chunk(reg, loc, chunk, offset)
        assert r.status_code == 202, (offset, r.status_code, r.text)
        offset += len(chunk)
        assert r.headers.get("Location"), "PATCH answer without Location"
        assert parse_range(r.headers.get("Range")) == (0, offset - 1)
        loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=digest(data)))
    assert r.status_code == 201, r.text
    assert_pullable(reg, r.headers.get("Location"), data)


def test_chunked_upload_final_chunk_in_put(reg, repo):
    """Pushing a blob in chunks: "The final chunk MAY be uploaded using a `PATCH` request or it
    MAY be uploaded in the closing `PUT` request"."""
    data = unique_bytes(1500)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data[:1000], 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=digest(data)), data=data[1000:],
                headers={**OCTET, "Content-Range": f"1000-{len(data) - 1}"})
    assert r.status_code == 201, r.text
    assert_pullable(reg, r.headers.get("Location"), data)


def test_chunked_upload_single_byte_chunks(reg, repo):
    """Pushing a blob in chunks: the range is inclusive on both ends, so a one-byte chunk is
    `n-n`."""
    data = b"xyz"
    loc = reg.start_upload(repo)
    for i, byte in enumerate(data):
        r = patch_chunk(reg, loc, bytes([byte]), i)
        assert r.status_code == 202, (i, r.text)
        assert parse_range(r.headers.get("Range")) == (0, i)
        loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=digest(data)))
    assert r.status_code == 201
    assert reg.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_chunked_upload_out_of_order_chunk_returns_416(reg, repo):
    """Pushing a blob in chunks: "If a chunk is uploaded out of order, the registry MUST respond
    with a `416 Requested Range Not Satisfiable` code"."""
    data = unique_bytes(300)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data[:100], 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    r = patch_chunk(reg, loc, data[200:300], 200)  # gap: skips 100..199
    assert r.status_code == 416, r.status_code


def test_chunked_upload_overlapping_chunk_returns_416(reg, repo):
    """Pushing a blob in chunks: "the first byte of a chunk being the last chunk's
    `<end-of-range>` plus one" - resending an earlier range is out of order -> 416."""
    data = unique_bytes(300)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data[:100], 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    r = patch_chunk(reg, loc, data[50:150], 50)
    assert r.status_code == 416, r.status_code


def test_chunked_upload_first_chunk_must_start_at_zero(reg, repo):
    """Pushing a blob in chunks: "The first chunk's range MUST begin with `0`" - otherwise 416."""
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, b"abcdef", 10)
    assert r.status_code == 416, r.status_code


def test_chunked_upload_resumes_after_416(reg, repo):
    """Pushing a blob in chunks: "To get the current status after a 416 error, issue a `GET`
    request to a URL `<location>`" (end-13): 204, Location, Range 0-<end>; the upload then
    continues from there and completes."""
    data = unique_bytes(300)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data[:100], 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    assert patch_chunk(reg, loc, data[150:300], 150).status_code == 416
    st = reg.get(loc)
    assert st.status_code == 204, st.status_code
    assert st.headers.get("Location")
    assert parse_range(st.headers.get("Range")) == (0, 99)
    loc = reg.abs(st.headers["Location"])
    r = patch_chunk(reg, loc, data[100:], 100)
    assert r.status_code == 202, r.text
    loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=digest(data)))
    assert r.status_code == 201
    assert reg.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_chunked_upload_wrong_digest_on_close_is_rejected(reg, repo):
    """Pushing a blob in chunks: the closing PUT's digest is that of the whole blob; a digest
    not matching the uploaded bytes -> 400 DIGEST_INVALID and no blob stored."""
    data = unique_bytes(200)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data, 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    wrong = digest(data[:100])  # digest of the first half only
    assert_error(reg.put(with_query(loc, digest=wrong)), 400, "DIGEST_INVALID")
    assert not reg.blob_exists(repo, wrong)
    assert not reg.blob_exists(repo, digest(data))


# ---- Upload status (end-13) and cancel (end-14) --------------------------------------------

def test_get_upload_status_returns_204_with_location_and_range(reg, repo):
    """end-13: "The response to an active upload `<location>` MUST be a `204 No Content`
    response code, and MUST have the following headers: Location, Range: 0-<end-of-range>"."""
    data = unique_bytes(256)
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, data, 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    st = reg.get(loc)
    assert st.status_code == 204, st.status_code
    assert st.headers.get("Location")
    assert parse_range(st.headers.get("Range")) == (0, len(data) - 1)
    assert st.content == b""


def test_get_upload_status_of_fresh_session_is_204(reg, repo):
    """end-13: a session that has received no bytes yet is still active: 204 with Location."""
    loc = reg.start_upload(repo)
    st = reg.get(loc)
    assert st.status_code == 204, st.status_code
    assert st.headers.get("Location")


def test_get_upload_status_unknown_session_returns_404(reg, repo):
    """end-13: failure 404 - an unknown upload id is BLOB_UPLOAD_UNKNOWN."""
    reg.push_blob(repo, unique_bytes())
    r = reg.get(f"/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_patch_and_put_unknown_session_return_404(reg, repo):
    """end-5/end-6: failure 404 BLOB_UPLOAD_UNKNOWN for an upload id the registry never issued."""
    reg.push_blob(repo, unique_bytes())
    path = f"/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000"
    r = reg.patch(path, data=b"abc", headers={**OCTET, "Content-Range": "0-2"})
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    r = reg.put(with_query(path, digest=digest(b"abc")), data=b"abc", headers=OCTET)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_session_is_scoped_to_its_repository(reg, repo):
    """Definitions (repository = scope of API calls): an upload id issued for repo A is
    unknown under repo B."""
    loc = reg.start_upload(repo)
    other = unique_repo()
    reg.push_blob(other, unique_bytes())
    path = urlsplit(loc).path.replace(f"/v2/{repo}/", f"/v2/{other}/", 1)
    assert path != urlsplit(loc).path
    assert_error(reg.get(path), 404, "BLOB_UPLOAD_UNKNOWN")


def test_cancel_upload_returns_204_and_forgets_session(reg, repo):
    """Cancel a blob upload (end-14): "If successful, the response SHOULD be a `204 No Content`";
    afterwards the session is unknown (404 BLOB_UPLOAD_UNKNOWN)."""
    loc = reg.start_upload(repo)
    r = patch_chunk(reg, loc, b"partial", 0)
    assert r.status_code == 202
    loc = reg.abs(r.headers["Location"])
    r = reg.delete(loc)
    assert r.status_code == 204, r.status_code
    assert_error(reg.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert not reg.blob_exists(repo, digest(b"partial"))


def test_cancel_unknown_upload_returns_404(reg, repo):
    """end-14: failure 404 for an unknown session (BLOB_UPLOAD_UNKNOWN)."""
    reg.push_blob(repo, unique_bytes())
    r = reg.delete(f"/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


# ---- Mounting a blob from another repository (end-11) --------------------------------------

@pytest.fixture
def source(reg):
    src = unique_repo("src")
    data = unique_bytes(500)
    return src, reg.push_blob(src, data), data


def test_mount_returns_201_with_blob_location(reg, source):
    """Mounting a blob (end-11): "The response to a successful mount MUST be `201 Created`, and
    MUST contain the following header: Location: <blob-location>"."""
    src, d, data = source
    dst = unique_repo("dst")
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d, **{"from": src}))
    assert r.status_code == 201, r.text
    loc = r.headers.get("Location")
    assert loc and urlsplit(reg.abs(loc)).path == f"/v2/{dst}/blobs/{d}", loc
    assert_pullable(reg, loc, data)
    dcd = r.headers.get("Docker-Content-Digest")
    assert dcd is None or dcd == d


def test_mount_makes_blob_readable_in_target_repository(reg, source):
    """Mounting a blob: after the mount the blob is available through the target repository
    (HEAD 200), and still through the source."""
    src, d, data = source
    dst = unique_repo("dst")
    assert not reg.blob_exists(dst, d)
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d, **{"from": src}))
    assert r.status_code == 201
    assert reg.blob_exists(dst, d)
    assert reg.get(f"/v2/{dst}/blobs/{d}").content == data
    assert reg.blob_exists(src, d)


def test_mount_unknown_blob_falls_back_to_upload_session(reg, source):
    """Mounting a blob: "if a registry ... is unable to mount the requested blob, it SHOULD
    return a `202`. This indicates that the upload session has begun" - the Location then
    works as an upload URL."""
    src, _, _ = source
    dst = unique_repo("dst")
    data = unique_bytes(123)
    d = digest(data)
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d, **{"from": src}))
    assert r.status_code == 202, r.status_code
    assert r.headers.get("Location")
    loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=d), data=data, headers=OCTET)
    assert r.status_code == 201
    assert reg.get(f"/v2/{dst}/blobs/{d}").content == data


def test_mount_from_unknown_repository_falls_back_to_upload_session(reg):
    """Mounting a blob: source repository unknown -> cannot mount -> 202 with an upload
    Location (not an error)."""
    dst = unique_repo("dst")
    d = digest(unique_bytes())
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d,
                            **{"from": unique_repo("nosuch")}))
    assert r.status_code == 202, r.status_code
    assert r.headers.get("Location")
    assert not reg.blob_exists(dst, d)


def test_mount_from_repository_lacking_the_blob(reg, source):
    """Mounting a blob: when `from` names a repository that does not hold the blob, the registry
    either answers 202 (upload session, blob not mounted) or - since it "MAY treat the `from`
    parameter as optional, and it MAY cross-mount the blob if it can be found" - 201."""
    _, d, data = source
    empty_src = unique_repo("src")
    reg.push_blob(empty_src, unique_bytes())
    dst = unique_repo("dst")
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d, **{"from": empty_src}))
    assert r.status_code in (201, 202), r.status_code
    assert r.headers.get("Location")
    if r.status_code == 201:
        assert reg.get(f"/v2/{dst}/blobs/{d}").content == data
    else:
        assert not reg.blob_exists(dst, d)


def test_mount_without_from(reg, source):
    """Mounting a blob: "The registry MAY treat the `from` parameter as optional" - without it
    the answer is 201 (mounted, pullable) or 202 (an upload session)."""
    _, d, data = source
    dst = unique_repo("dst")
    r = reg.post(with_query(f"/v2/{dst}/blobs/uploads/", mount=d))
    assert r.status_code in (201, 202), r.status_code
    assert r.headers.get("Location")
    if r.status_code == 201:
        assert_pullable(reg, r.headers["Location"], data)
    else:
        loc = reg.abs(r.headers["Location"])
        r = reg.put(with_query(loc, digest=d), data=data, headers=OCTET)
        assert r.status_code == 201


# ---- Optional features, checked only as far as the registry advertises them ----------------

def test_chunk_min_length_header_if_present_is_honoured(reg, repo):
    """Pushing a blob in chunks: "If the registry has a minimum chunk size, the `POST` response
    SHOULD include the following header: OCI-Chunk-Min-Length: <size>" - if advertised it is a
    positive integer and chunks of that size are accepted (202)."""
    r = reg.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202
    value = r.headers.get("OCI-Chunk-Min-Length")
    size = 64
    if value is not None:
        assert value.isdigit() and int(value) > 0, value
        size = int(value)
    data = unique_bytes(size * 2 + 1)
    loc = reg.abs(r.headers["Location"])
    for start in (0, size):
        r = patch_chunk(reg, loc, data[start:start + size], start)
        assert r.status_code == 202, r.status_code
        loc = reg.abs(r.headers["Location"])
    r = reg.put(with_query(loc, digest=digest(data)), data=data[2 * size:],
                headers={**OCTET, "Content-Range": f"{2 * size}-{2 * size}"})
    assert r.status_code == 201, r.text
    assert reg.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_non_sha256_digest_upload(reg, repo):
    """Content digests: "Compliant implementations SHOULD use sha256"; other algorithms (here
    sha512) are either supported - 201 and pullable under that digest - or refused with 400
    (DIGEST_INVALID / UNSUPPORTED). Never a 5xx, never stored under a wrong digest."""
    import hashlib
    data = unique_bytes(100)
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    loc = reg.start_upload(repo)
    r = reg.put(with_query(loc, digest=d512), data=data, headers=OCTET)
    assert r.status_code in (201, 400), r.status_code
    if r.status_code == 201:
        g = reg.get(f"/v2/{repo}/blobs/{d512}")
        assert g.status_code == 200 and g.content == data
    else:
        assert_error(r, 400, "DIGEST_INVALID", "UNSUPPORTED")
        assert not reg.blob_exists(repo, d512)
