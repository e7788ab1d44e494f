"""Distribution to OCI registries: a multi-arch image to CNCF Distribution (Debian's
docker-registry) and to a second Image Manager, pulled back there with skopeo byte-identical;
idempotence; a VM image as a KubeVirt containerDisk."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import requests

import imserver
from catalogkit import MT_INDEX, MT_MANIFEST, digest, push_image, push_manifest, wait_entry
from distkit import api, distribute, poll, register, target, uid, vm_image, wait_job


class Distribution:
    """A CNCF Distribution registry (docker-registry) on a free port, storage in a temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="im-dist-")
        self.port = imserver.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = Path(self.dir) / "config.yml"
        cfg.write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.dir}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
""")
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.log = open(Path(self.dir) / "log", "wb")
        self.proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)

        def up():
            try:
                return requests.get(self.url + "/v2/", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        poll(up, timeout=30, what="docker-registry to answer")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def srv():
    with imserver.Server(env={"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "200"}) as s:
        yield s


def multi_arch(srv, repo: str, tag: str) -> dict:
    """A two-platform OCI index pushed through /v2: {index digest, index bytes, children}."""
    children = []
    for arch in ("amd64", "arm64"):
        img = push_image(srv, repo, None, config={"architecture": arch, "os": "linux", "n": uid()},
                         layers=[os.urandom(200_000), os.urandom(1000)])
        children.append({"mediaType": MT_MANIFEST, "digest": img["digest"], "size": len(img["manifest"]),
                         "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": children}).encode()
    d = push_manifest(srv, repo, tag, index, MT_INDEX)
    return {"digest": d, "bytes": index, "children": children}


def pulled_blobs(url_host: str, repo: str, tag: str, tmp: Path) -> dict[str, str]:
    """skopeo copies repo:tag (every platform) into an OCI layout; digest -> sha256 of the file."""
    out = tmp / uid("layout-")
    r = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{url_host}/{repo}:{tag}",
                        f"oci:{out}:x"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    blobs = {}
    for f in (out / "blobs" / "sha256").iterdir():
        blobs["sha256:" + f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return blobs


@pytest.mark.parametrize("kind", ["distribution", "image-manager"])
def test_multi_arch_image_to_registries_byte_identical(srv, tmp_path, kind):
    repo, tag = f"{uid('ns')}/app", "1.0"
    pushed = multi_arch(srv, repo, tag)
    e = wait_entry(srv, repo, tag)
    if kind == "distribution":
        dst = Distribution()
        host = f"127.0.0.1:{dst.port}"
    else:
        dst = imserver.Server(matrix=False).start()
        host = dst.host
    try:
        v = register(srv, {"name": uid("reg-"), "type": "oci-registry", "url": dst.url})
        assert api(srv, "POST", f"/api/v1/vims/{v['id']}/test").json()["health"]["state"] == "ok"
        t = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]])["id"]))
        assert (t["state"], t["skipped"], t["remote_id"]) == ("active", False, f"{repo}:{tag}"), t
        # The index arrives as pushed, byte for byte, and every blob with it.
        r = requests.get(f"{dst.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MT_INDEX}, timeout=30)
        assert r.status_code == 200 and r.content == pushed["bytes"]
        theirs = pulled_blobs(host, repo, tag, tmp_path)
        ours = pulled_blobs(srv.host, repo, tag, tmp_path)
        assert theirs == ours and all(k == "sha256:" + v for k, v in theirs.items())
        # Again: everything is there, nothing is sent.
        again = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]])["id"]))
        assert (again["state"], again["skipped"]) == ("active", True), again
        # A blob lost at the target is noticed and sent again.
        child = pushed["children"][1]["digest"]
        m = requests.get(f"{srv.url}/v2/{repo}/manifests/{child}", headers={"Accept": MT_MANIFEST}, timeout=30).json()
        lost = m["layers"][0]["digest"]
        assert requests.delete(f"{dst.url}/v2/{repo}/blobs/{lost}", timeout=30).status_code == 202
        fixed = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]])["id"]))
        assert (fixed["state"], fixed["skipped"]) == ("active", False), fixed
        assert requests.head(f"{dst.url}/v2/{repo}/blobs/{lost}", timeout=30).status_code == 200
    finally:
        dst.close()


def test_vm_image_as_a_kubevirt_container_disk(srv, tmp_path):
    dst = Distribution()
    try:
        e, blob = vm_image(srv, tmp_path, uid("cd-"))
        v = register(srv, {"name": uid("reg-"), "type": "oci-registry", "url": dst.url})
        t = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]], container_disk=True)["id"]))
        assert t["state"] == "active" and t["method"] == "container-disk", t
        repo, tag = e["repository"], e["tag"]
        m = requests.get(f"{dst.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MT_MANIFEST}, timeout=30).json()
        assert len(m["layers"]) == 1, m
        layer = requests.get(f"{dst.url}/v2/{repo}/blobs/{m['layers'][0]['digest']}", timeout=60).content
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            files = [x for x in tar.getmembers() if x.isfile()]
            assert len(files) == 1 and files[0].name.startswith("disk/") and files[0].name.endswith(".qcow2"), files
            assert (files[0].uid, files[0].gid) == (107, 107), files[0]
            assert tar.extractfile(files[0]).read() == blob
    finally:
        dst.close()
