"""Helpers for the OCI Distribution Spec conformance suite.

Only the standard library and `requests`. Nothing here asserts spec behaviour on its own except
`assert_error` (the error body format of the "Error Codes" section); the tests do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"

# "Error Codes": the `code` field MUST be one of these.
SPEC_ERROR_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
}
# "Legacy Docker support error codes": a client MAY encounter these, but this registry answers
# with codes from the spec's table only, so none is allowed here.
LEGACY_ERROR_CODES: set[str] = set()

TIMEOUT = 30

UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_repo(prefix: str = "spec") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:16]}"


def unique_bytes(size: int = 64) -> bytes:
    """Random-ish content, unique per call, so blobs never collide between tests."""
    seed = uuid.uuid4().bytes
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    d = {"mediaType": media_type, "digest": digest(data), "size": len(data)}
    d.update(extra)
    return d


def with_query(url: str, **params: str) -> str:
    """Append query parameters, keeping any the registry put in `url` (spec: the location
    "MAY contain critical query parameters")."""
    parts = [f"{k}={quote(str(v), safe=':/')}" for k, v in params.items()]
    if not parts:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(parts)


def link_next(resp: requests.Response) -> str | None:
    link = resp.headers.get("Link")
    if not link:
        return None
    m = LINK_NEXT_RE.search(link)
    assert m, f"Link header present but not of the form <url>; rel=\"next\": {link!r}"
    return m.group(1)


def parse_range(value: str) -> tuple[int, int]:
    """Parse an upload `Range: 0-<end>` header (tolerating a `bytes=` prefix)."""
    m = re.fullmatch(r"\s*(?:bytes=)?(\d+)-(\d+)\s*", value or "")
    assert m, f"Range header not of the form 0-<end-of-range>: {value!r}"
    return int(m.group(1)), int(m.group(2))


def error_codes(resp: requests.Response) -> list[str]:
    try:
        body = resp.json()
    except ValueError:
        return []
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return []
    return [e.get("code") for e in body["errors"] if isinstance(e, dict)]


def assert_error_body(resp) -> list[str]:
    """"Error Codes": a JSON error body MUST be {"errors": [{"code", "message", "detail"}...]},
    `code` only uppercase letters and underscores, one of the spec's codes; `message`, if
    present, a string. The contract of the server under test is to always answer JSON."""
    raw = resp.content if hasattr(resp, "content") else resp.body
    try:
        body = json.loads(raw)
    except ValueError:
        raise AssertionError(f"error body is not JSON (status {resp.status_code}): {raw[:300]!r}")
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, f"error body has no non-empty 'errors' list: {body!r}"
    codes = []
    for e in errors:
        assert isinstance(e, dict), f"error entry is not an object: {e!r}"
        code = e.get("code")
        assert isinstance(code, str) and re.fullmatch(r"[A-Z_]+", code), \
            f"code must contain only uppercase letters and underscores: {code!r}"
        assert code in SPEC_ERROR_CODES | LEGACY_ERROR_CODES, f"code {code!r} is not a spec error code"
        if "message" in e:
            assert isinstance(e["message"], str), f"message must be a string: {e!r}"
        codes.append(code)
    return codes


def assert_error(resp, status, *codes: str) -> list[str]:
    """Assert an error status (int or tuple of ints) and a spec-format JSON body carrying one of
    `codes` (any spec code if none given)."""
    statuses = status if isinstance(status, tuple) else (status,)
    text = resp.content[:300] if hasattr(resp, "content") else resp.body[:300]
    assert resp.status_code in statuses, \
        f"expected status {statuses}, got {resp.status_code}: {text!r}"
    got = assert_error_body(resp)
    if codes:
        assert set(got) & set(codes), f"expected one of codes {codes}, got {got}"
    return got


@dataclass
class Image:
    repo: str
    manifest: bytes
    digest: str
    media_type: str
    config: bytes
    layers: list[bytes] = field(default_factory=list)
    tag: str | None = None
    response: requests.Response | None = None


class Registry:
    """Thin HTTP client bound to one server's base URL."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        split = urlsplit(self.base)
        self.host = split.hostname
        self.port = split.port
        self.s = requests.Session()

    def abs(self, location: str) -> str:
        """Resolve a (possibly relative) URL against the base, as the spec allows."""
        return urljoin(self.base + "/", location)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("allow_redirects", False)
        return self.s.request(method, self.abs(path), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # ---- blobs -------------------------------------------------------------------------

    def start_upload(self, repo: str) -> str:
        """POST /v2/<name>/blobs/uploads/ and return the absolute upload location."""
        r = self.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        assert r.status_code == 202, f"POST upload: expected 202, got {r.status_code}: {r.text[:300]}"
        loc = r.headers.get("Location")
        assert loc, "POST upload: no Location header"
        return self.abs(loc)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic POST then PUT; returns the digest."""
        d = digest(data)
        loc = self.start_upload(repo)
        r = self.put(with_query(loc, digest=d), data=data,
                     headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, f"PUT upload: expected 201, got {r.status_code}: {r.text[:300]}"
        return d

    def blob_exists(self, repo: str, d: str) -> bool:
        r = self.head(f"/v2/{repo}/blobs/{d}")
        assert r.status_code in (200, 404), f"HEAD blob: unexpected {r.status_code}"
        return r.status_code == 200

    # ---- manifests ---------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str | None):
        headers = {"Content-Type": media_type} if media_type else {}
        return self.put(f"/v2/{repo}/manifests/{reference}", data=body, headers=headers)

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str):
        r = self.put_manifest(repo, reference, body, media_type)
        assert r.status_code == 201, f"PUT manifest: expected 201, got {r.status_code}: {r.text[:300]}"
        return r

    def push_image(self, repo: str, tag: str | None = None, *, layers: int = 1,
                   annotations: dict | None = None, subject: dict | None = None,
                   artifact_type: str | None = None, config_media_type: str = OCI_CONFIG,
                   extra: dict | None = None) -> Image:
        """Push config + layers + an OCI image manifest (by tag, or by digest when no tag)."""
        config = dumps({"architecture": "amd64", "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": []},
                        "nonce": uuid.uuid4().hex})
        self.push_blob(repo, config)
        layer_blobs = []
        for _ in range(layers):
            data = unique_bytes(97)
            self.push_blob(repo, data)
            layer_blobs.append(data)
        m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
             "config": descriptor(config_media_type, config),
             "layers": [descriptor(OCI_LAYER, b) for b in layer_blobs]}
        if artifact_type:
            m["artifactType"] = artifact_type
        if subject:
            m["subject"] = subject
        if annotations:
            m["annotations"] = annotations
        if extra:
            m.update(extra)
        body = dumps(m)
        d = digest(body)
        r = self.push_manifest(repo, tag or d, body, OCI_MANIFEST)
        return Image(repo, body, d, OCI_MANIFEST, config, layer_blobs, tag, r)

    def push_artifact(self, repo: str, artifact_type: str, *, subject: dict | None = None,
                      annotations: dict | None = None, tag: str | None = None,
                      payload: bytes | None = None) -> Image:
        """An artifact per image-spec guidance: image manifest with `artifactType`, the empty
        config descriptor (`application/vnd.oci.empty.v1+json`, content `{}`)."""
        self.push_blob(repo, EMPTY_JSON)
        layers = []
        if payload is not None:
            self.push_blob(repo, payload)
            layers = [descriptor("application/octet-stream", payload)]
        m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
             "config": descriptor(OCI_EMPTY, EMPTY_JSON), "layers": layers}
        if subject:
            m["subject"] = subject
        if annotations:
            m["annotations"] = annotations
        body = dumps(m)
        d = digest(body)
        r = self.push_manifest(repo, tag or d, body, OCI_MANIFEST)
        return Image(repo, body, d, OCI_MANIFEST, EMPTY_JSON, [payload] if payload else [], tag, r)


def subject_of(img: Image) -> dict:
    return {"mediaType": img.media_type, "digest": img.digest, "size": len(img.manifest)}


# ---- raw HTTP, for requests that `requests` would normalise or refuse to send -------------

@dataclass
class RawResponse:
    status_code: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content(self) -> bytes:
        return self.body


def raw_request(reg: Registry, method: str, path: str, headers: dict | None = None,
                body: bytes = b"", *, content_length: int | None = None,
                half_close: bool = False, send_length: bool = True,
                timeout: float = 15.0) -> RawResponse | None:
    """Send one request over a fresh socket exactly as given (no path normalisation).

    `content_length` overrides the Content-Length header (to announce more than is sent);
    `half_close` shuts down our write side after sending so the server sees EOF;
    `send_length=False` omits Content-Length (e.g. for a hand-made chunked body).
    Returns None if the server closed the connection without answering.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {reg.host}:{reg.port}", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if send_length and content_length is None and (body or method in ("PUT", "POST", "PATCH")):
        content_length = len(body)
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    sock = socket.create_connection((reg.host, reg.port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (e.g. 431) before reading everything; read it below
        resp = http.client.HTTPResponse(sock, method=method)
        try:
            resp.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine):
            return None
        try:
            content = resp.read()
        except http.client.IncompleteRead as e:
            content = e.partial
        except ConnectionResetError:
            content = b""
        return RawResponse(resp.status, resp.headers, content)
    finally:
        sock.close()
