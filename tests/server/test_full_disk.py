"""A full blob store is an answer, not a mystery: pushes get 507 with the OCI error body and
"blob store is full", reads go on, /readyz shows the free space (degraded below the floor),
nothing acknowledged is lost, and pushes work again once space is freed.

The blob store is a small tmpfs mounted for the test (the suite runs as root on this machine
kind; a failed mount fails the test). The test fills it with a file of its own, so freeing
space is removing that file."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
import requests

import imserver

pytestmark = pytest.mark.backend_independent

digest = imserver.digest
MIB = 1 << 20
FLOOR = 4 * MIB


@pytest.fixture
def small_store(tmp_path):
    mnt = tmp_path / "blobs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"mounting a tmpfs for the full-disk test failed (run as root): {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(mnt, leave: int) -> None:
    """Grow the filler file until `leave` bytes are free (to within a page)."""
    filler = mnt / "filler"
    current = filler.stat().st_size if filler.exists() else 0
    target = max(0, current + free(mnt) - leave)
    with open(filler, "ab") as f:
        f.truncate(target)
    # tmpfs allocates on write, not on truncate: write the new range.
    with open(filler, "r+b") as f:
        f.seek(current)
        left = target - current
        while left > 0:
            n = min(left, MIB)
            f.write(b"\0" * n)
            left -= n


def is_full_error(r: requests.Response) -> None:
    assert r.status_code == 507, (r.status_code, r.text)
    err = r.json()["errors"][0]
    assert err["code"] == "UNKNOWN" and "blob store is full" in err["message"], err


def test_full_blob_store(small_store):
    env = {"IMAGE_MANAGER_REGISTRY__MIN_FREE_BYTES": str(FLOOR)}
    with imserver.Server(env=env, args=["--storage", f"file://{small_store}"], matrix=False) as srv:
        repo = f"full/{uuid.uuid4().hex[:8]}"
        kept = os.urandom(64 * 1024)
        r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(kept)}", data=kept)
        assert r.status_code == 201, r.text
        config = b"{}"
        assert requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(config)}", data=config).status_code == 201
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(kept),
                        "size": len(kept)}]}).encode()
        r = requests.put(f"{srv.url}/v2/{repo}/manifests/v1", data=manifest,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 201, r.text

        # A chunked upload with one acknowledged chunk.
        loc = srv.url + requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/").headers["Location"]
        first, second = os.urandom(MIB), os.urandom(MIB)
        r = requests.patch(loc, data=first, headers={"Content-Range": f"0-{MIB - 1}"})
        assert r.status_code == 202, r.text

        # Below the floor: degraded, pushes refused before they start, reads served.
        fill_to(small_store, 2 * MIB)
        ready = requests.get(f"{srv.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded" and ready.json()["blobs_free_bytes"] < FLOOR
        is_full_error(requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/"))
        is_full_error(requests.patch(loc, data=second, headers={"Content-Range": f"{MIB}-{2 * MIB - 1}"}))
        assert requests.get(loc).headers["Range"] == f"0-{MIB - 1}", "the acknowledged chunk was lost"
        r = requests.get(f"{srv.url}/v2/{repo}/blobs/{digest(kept)}")
        assert r.status_code == 200 and r.content == kept
        assert requests.get(f"{srv.url}/v2/{repo}/manifests/v1",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content == manifest

        # Above the floor but too small for the blob: the write itself runs out of space.
        fill_to(small_store, FLOOR + MIB)
        before = free(small_store)
        big = os.urandom(8 * MIB)
        r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(big)}", data=big)
        assert r.status_code == 507, srv.log()
        is_full_error(r)
        assert free(small_store) >= before - 64 * 1024, "the failed push left its partial bytes"
        assert requests.head(f"{srv.url}/v2/{repo}/blobs/{digest(big)}").status_code == 404

        # Space freed: the interrupted upload goes on where it was acknowledged.
        (small_store / "filler").unlink()
        assert requests.get(f"{srv.url}/readyz").json()["status"] == "ok"
        r = requests.patch(loc, data=second, headers={"Content-Range": f"{MIB}-{2 * MIB - 1}"})
        assert r.status_code == 202, r.text
        r = requests.put(f"{loc}&digest={digest(first + second)}" if "?" in loc else f"{loc}?digest={digest(first + second)}")
        assert r.status_code == 201, r.text
        r = requests.get(f"{srv.url}/v2/{repo}/blobs/{digest(first + second)}")
        assert r.status_code == 200 and digest(r.content) == digest(first + second)
