"""Helpers of the catalog API tests: requests with problem+json checks, VM disk images made
with qemu-img, OCI content pushed through /v2, and servers with access control."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import requests

import imserver

ADMIN = ("root", "root-password-1")
PASSWORD = "password-123"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
VM_ARTIFACT = "application/vnd.image-manager.vm-image.v1"
DISK_LAYER = "application/vnd.image-manager.disk."
TITLE = "org.opencontainers.image.title"

digest = imserver.digest
poll = imserver.poll


def uid(prefix: str = "t") -> str:
    """A fresh lower-case name component."""
    return prefix + uuid.uuid4().hex[:10]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashes(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest(),
            "md5": hashlib.md5(data).hexdigest()}


def rfc3339(s: str) -> datetime:
    """Parse an RFC 3339 time (with Z or an offset); fails on anything else."""
    assert isinstance(s, str) and "T" in s, s
    t = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    assert t.tzinfo is not None, f"{s!r} has no offset"
    return t


# ----- HTTP ------------------------------------------------------------------------------------

def api(srv, method: str, path: str, auth=None, **kw) -> requests.Response:
    kw.setdefault("timeout", 60)
    return requests.request(method, srv.url + path, auth=auth, **kw)


def is_problem(r: requests.Response, status: int, code: str | None = None) -> dict:
    """`r` is an RFC 9457 problem with this status (and code); returns the body."""
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status, body
    assert body["type"] == "about:blank", body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["code"], str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def is_refused(r: requests.Response) -> list[str]:
    """A 422 REFUSED problem with a non-empty list of findings; returns the findings."""
    body = is_problem(r, 422, "REFUSED")
    problems = body.get("problems")
    assert isinstance(problems, list) and problems, body
    assert all(isinstance(p, str) and p for p in problems), body
    return problems


def upload(srv, data: bytes, params=None, auth=None, headers=None) -> requests.Response:
    """POST /api/v1/images with the raw bytes; `params` a dict or a list of pairs."""
    h = {"Content-Type": "application/octet-stream", **(headers or {})}
    return api(srv, "POST", "/api/v1/images", auth=auth, params=params, data=data, headers=h)


def uploaded(srv, data: bytes, params=None, auth=None, headers=None) -> dict:
    r = upload(srv, data, params=params, auth=auth, headers=headers)
    assert r.status_code == 201, (r.status_code, r.text[:2000], srv.log())
    e = r.json()
    assert r.headers["Location"] == f"/api/v1/images/{e['id']}"
    return e


def entry(srv, entry_id: str, auth=None) -> dict:
    r = api(srv, "GET", f"/api/v1/images/{entry_id}", auth=auth)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    return r.json()


def listing(srv, params=None, auth=None) -> dict:
    r = api(srv, "GET", "/api/v1/images", auth=auth, params=params)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    body = r.json()
    assert isinstance(body["items"], list) and "next_cursor" in body, body
    return body


def items(srv, params=None, auth=None) -> list[dict]:
    """Every entry of a listing, following next_cursor."""
    params = dict(params or {})
    out = []
    while True:
        page = listing(srv, params, auth=auth)
        out += page["items"]
        if not page["next_cursor"]:
            return out
        params["cursor"] = page["next_cursor"]


def wait_items(srv, params, predicate, what: str, auth=None, timeout: float = 30.0) -> list[dict]:
    """Poll a listing until `predicate(items)`; returns those items."""
    seen = []

    def check():
        seen[:] = items(srv, params, auth=auth)
        return predicate(seen)

    poll(check, timeout=timeout, what=what)
    return list(seen)


def wait_entry(srv, repo: str, tag: str, predicate=lambda e: True, auth=None) -> dict:
    """Poll until the catalog lists `repo:tag` (as indexed from /v2) and `predicate` holds."""
    ns, _, name = repo.partition("/")
    name = name or repo
    found = wait_items(srv, {"namespace": ns, "name": name, "version": tag},
                       lambda xs: len(xs) == 1 and predicate(xs[0]), f"catalog entry of {repo}:{tag}", auth=auth)
    return found[0]


def wait_gone(srv, repo: str, tag: str, auth=None) -> None:
    ns, _, name = repo.partition("/")
    wait_items(srv, {"namespace": ns, "name": name or repo, "version": tag}, lambda xs: xs == [],
               f"catalog entry of {repo}:{tag} to go", auth=auth)


# ----- /v2 ---------------------------------------------------------------------------------------

def push_blob(srv, repo: str, data: bytes, auth=None) -> str:
    r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data, auth=auth, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest(data)


def push_manifest(srv, repo: str, ref: str, body: bytes, media_type: str = MT_MANIFEST, auth=None) -> str:
    r = requests.put(f"{srv.url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type},
                     auth=auth, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest(body)


def manifest(srv, repo: str, ref: str, auth=None) -> tuple[bytes, dict, requests.Response]:
    r = requests.get(f"{srv.url}/v2/{repo}/manifests/{ref}", auth=auth, timeout=60,
                     headers={"Accept": f"{MT_MANIFEST}, {MT_INDEX}"})
    assert r.status_code == 200, (r.status_code, r.text)
    return r.content, r.json(), r


def push_image(srv, repo: str, tag: str | None, config: dict | None = None, layers: list[bytes] | None = None,
               auth=None, config_type: str = MT_CONFIG, layer_type: str = MT_LAYER,
               artifact_type: str | None = None, annotations: dict | None = None, subject: dict | None = None,
               media_type: str = MT_MANIFEST) -> dict:
    """Push an image manifest (config + layers) by tag (by digest if `tag` is None); returns
    what was pushed."""
    cfg = json.dumps(config if config is not None else {"architecture": "amd64", "os": "linux",
                                                        "n": uuid.uuid4().hex}).encode()
    layers = [uuid.uuid4().bytes * 8] if layers is None else layers
    push_blob(srv, repo, cfg, auth=auth)
    for layer in layers:
        push_blob(srv, repo, layer, auth=auth)
    m = {"schemaVersion": 2, "mediaType": media_type,
         "config": {"mediaType": config_type, "digest": digest(cfg), "size": len(cfg)},
         "layers": [{"mediaType": layer_type, "digest": digest(b), "size": len(b)} for b in layers]}
    if artifact_type:
        m["artifactType"] = artifact_type
    if annotations:
        m["annotations"] = annotations
    if subject:
        m["subject"] = subject
    body = json.dumps(m).encode()
    d = push_manifest(srv, repo, tag or digest(body), body, media_type, auth=auth)
    return {"manifest": body, "digest": d, "config": cfg, "layers": layers,
            "size": len(body) + len(cfg) + sum(len(b) for b in layers)}


# ----- disk images ---------------------------------------------------------------------------

def size_of(v) -> int:
    if isinstance(v, int):
        return v
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(v[:-1]) * units[v[-1]] if v[-1] in units else int(v)


def qemu_img(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, (args, r.stderr)
    return r


def qemu_info(path: Path) -> dict:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)


def disk(path: Path, fmt: str, virtual="64M", data: bytes = b"", opts: str | None = None) -> bytes:
    """A disk image of `fmt` (a qemu-img format name) and `virtual` size holding `data` at
    offset 0, written to `path`; returns its bytes. Sparse: only `data` costs space."""
    path = Path(path)
    src = path.with_name(path.name + ".src.raw")
    with open(src, "wb") as f:
        f.truncate(size_of(virtual))
        f.write(data)
    if fmt == "raw":
        src.replace(path)
    else:
        qemu_img("convert", "-f", "raw", "-O", fmt, *(["-o", opts] if opts else []), str(src), str(path))
        src.unlink()
    return path.read_bytes()


def iso_image(label: str = "CIDATA", extra: bytes = b"") -> bytes:
    """A minimal ISO 9660 image: 16 system-area sectors, a primary volume descriptor, a
    terminator, one data sector."""
    sector = 2048
    blocks = 19
    pvd = bytearray(sector)
    pvd[0] = 1
    pvd[1:6] = b"CD001"
    pvd[6] = 1
    pvd[8:40] = b"LINUX".ljust(32)
    pvd[40:72] = label.encode().ljust(32)
    pvd[80:84] = blocks.to_bytes(4, "little")
    pvd[84:88] = blocks.to_bytes(4, "big")
    pvd[120:122] = (1).to_bytes(2, "little")
    pvd[122:124] = (1).to_bytes(2, "big")
    pvd[124:126] = (1).to_bytes(2, "little")
    pvd[126:128] = (1).to_bytes(2, "big")
    pvd[128:130] = sector.to_bytes(2, "little")
    pvd[130:132] = sector.to_bytes(2, "big")
    pvd[881] = 1
    term = bytearray(sector)
    term[0] = 255
    term[1:6] = b"CD001"
    term[6] = 1
    data = bytes(16 * sector) + bytes(pvd) + bytes(term) + extra[:sector].ljust(sector, b"\0")
    assert len(data) == blocks * sector
    return data


# ----- access control ------------------------------------------------------------------------

cli = imserver.cli


def auth_server(env: dict | None = None) -> imserver.Server:
    """A started server with `--auth token` and the admin ADMIN."""
    srv = imserver.Server(args=["--auth", "token"], env=env)
    r = cli(srv, "user", "add", ADMIN[0], "--admin", "--password-stdin", stdin=ADMIN[1] + "\n")
    assert r.returncode == 0, r.stderr
    try:
        return srv.start()
    except Exception:
        srv.close()
        raise


def add_user(srv, name: str, ns: str | None = None, role: str | None = None) -> tuple[str, str]:
    r = api(srv, "POST", "/api/v1/admin/users", auth=ADMIN, json={"name": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    if ns:
        r = api(srv, "PUT", f"/api/v1/admin/namespaces/{ns}/members/{name}", auth=ADMIN, json={"role": role})
        assert r.status_code == 200, r.text
    return (name, PASSWORD)
