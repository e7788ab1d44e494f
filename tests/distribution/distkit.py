"""Helpers of the distribution tests: VIMs registered through the API, jobs awaited through
it, and a real Glance (tests/pysupport/glance.py) read directly."""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request

import requests

from catalogkit import api, disk, poll, uid, uploaded  # noqa: F401  (re-exported)

FINAL = {"active", "failed", "cancelled", "removed"}


def register(srv, body: dict, auth=None) -> dict:
    r = api(srv, "POST", "/api/v1/vims", auth=auth, json=body)
    assert r.status_code == 201, (r.status_code, r.text[:2000])
    v = r.json()
    assert r.headers["Location"] == f"/api/v1/vims/{v['id']}"
    return v


def glance_vim(srv, glance, auth=None, **extra) -> dict:
    """A VIM for `glance` (no Keystone), named uniquely."""
    return register(srv, {"name": uid("glance-"), "type": "openstack", "glance_url": glance.endpoint, **extra},
                    auth=auth)


def distribute(srv, images: list[str], vims: list[str], method: str = "push", auth=None, **extra) -> dict:
    r = api(srv, "POST", "/api/v1/distributions", auth=auth,
            json={"images": images, "vims": vims, "method": method, **extra})
    assert r.status_code == 202, (r.status_code, r.text[:2000])
    job = r.json()
    assert r.headers["Location"] == f"/api/v1/distributions/{job['id']}"
    return job


def job(srv, job_id: str, auth=None) -> dict:
    r = api(srv, "GET", f"/api/v1/distributions/{job_id}", auth=auth)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    return r.json()


def wait_job(srv, job_id: str, auth=None, timeout: float = 120.0, states=FINAL) -> dict:
    """The job once every target is in one of `states`."""
    seen = {}

    def done():
        seen["job"] = job(srv, job_id, auth=auth)
        return all(t["state"] in states for t in seen["job"]["targets"])

    try:
        poll(done, timeout=timeout, what=f"distribution {job_id} to finish")
    except AssertionError:
        raise AssertionError((seen.get("job"), srv.log()))
    return seen["job"]


def target(job: dict) -> dict:
    assert len(job["targets"]) == 1, job
    return job["targets"][0]


def vm_image(srv, tmp_path, name: str, version: str = "1", data: bytes | None = None, auth=None,
             virtual="64M", **params) -> tuple[dict, bytes]:
    """A qcow2 uploaded to the catalog: (entry, bytes)."""
    blob = disk(tmp_path / f"{name}-{version}.qcow2", "qcow2", virtual=virtual,
                data=data if data is not None else os.urandom(64 * 1024))
    p = {"name": name, "version": version, **{k: str(v) for k, v in params.items()}}
    return uploaded(srv, blob, p, auth=auth), blob


def glance_images(glance, **filters) -> list[dict]:
    """Every image of `glance` matching the filters (noauth: the admin view)."""
    out, url, params = [], f"{glance.endpoint}/v2/images", dict(filters, limit=100)
    while url:
        r = requests.get(url, params=params, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["images"]
        nxt = body.get("next")
        url, params = (f"{glance.endpoint}{nxt}" if nxt else None), None
    return out


def glance_image(glance, image_id: str) -> dict:
    r = requests.get(f"{glance.endpoint}/v2/images/{image_id}", timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


class ManglingProxy:
    """An HTTP proxy in front of `upstream` (our download links, a relay's upstream) that flips
    one byte in the middle of the GET bodies it relays: of the first one only (a link or a
    Glance that mangles data once), or of every one (`every=True`). HEAD is relayed faithfully.
    `gets` counts the GETs."""

    def __init__(self, upstream: str, every: bool = False):
        proxy = self
        self.gets = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self, method):
                req = urllib.request.Request(upstream + self.path, method=method)
                with urllib.request.urlopen(req) as up:
                    data, headers = bytearray(up.read()), up.headers
                if method == "GET":
                    proxy.gets += 1
                    if data and (every or proxy.gets == 1):
                        data[len(data) // 2] ^= 0xFF
                self.send_response(200)
                for k in ("Content-Length", "Docker-Content-Digest", "Content-Type"):
                    if headers.get(k) is not None:
                        self.send_header(k, headers.get(k))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(bytes(data))

            def do_GET(self):
                self._relay("GET")

            def do_HEAD(self):
                self._relay("HEAD")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
