"""The Python Glance harness (tests/pysupport/glance.py) the distribution suites use: a real
Glance 33 with no auth, and one behind a real Keystone 30, each on its own ports."""

import hashlib
import subprocess

import pytest
import requests

from glance import Glance
from imserver import poll

pytestmark = pytest.mark.backend_independent


def qcow2(tmp_path, mib=4) -> bytes:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{mib}M"], check=True)
    return path.read_bytes()


def test_noauth_upload_and_hashes(tmp_path):
    data = qcow2(tmp_path)
    with Glance(mode="noauth") as g:
        r = requests.post(f"{g.endpoint}/v2/images", timeout=30, json={
            "name": "harness", "disk_format": "qcow2", "container_format": "bare"})
        assert r.status_code == 201, r.text
        image = r.json()["id"]
        r = requests.put(f"{g.endpoint}/v2/images/{image}/file", data=data, timeout=60,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 204, r.text

        def active():
            return requests.get(f"{g.endpoint}/v2/images/{image}", timeout=30).json()["status"] == "active"
        poll(active, timeout=60, what="image active")
        info = requests.get(f"{g.endpoint}/v2/images/{image}", timeout=30).json()
        assert info["os_hash_algo"] == "sha512"
        assert info["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert info["checksum"] == hashlib.md5(data).hexdigest()
    # stopped: the port no longer answers
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{g.endpoint}/versions", timeout=5)


def test_keystone_application_credential():
    with Glance(mode="keystone") as g:
        assert requests.get(f"{g.endpoint}/v2/images", timeout=30).status_code == 401
        app_id, secret = g.demo_app_credential("harness")
        r = requests.post(f"{g.auth_url}/auth/tokens", timeout=30, json={"auth": {"identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": app_id, "secret": secret}}}})
        assert r.status_code == 201, r.text
        catalog = {c["type"]: c for c in r.json()["token"]["catalog"]}
        assert {e["url"] for e in catalog["image"]["endpoints"]} == {g.endpoint}
        r = requests.get(f"{g.endpoint}/v2/images", timeout=30,
                         headers={"X-Auth-Token": r.headers["X-Subject-Token"]})
        assert r.status_code == 200 and r.json()["images"] == []
