"""Helpers of the distribution tests: VIMs registered through the API, jobs awaited through
it, and a real Glance (tests/pysupport/glance.py) read directly."""

from __future__ import annotations

import os

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
