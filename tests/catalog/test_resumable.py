"""Resumable VM image uploads (/api/v1/images/uploads): sessions with offsets for multi-GB files
over unreliable links, surviving a server restart, with the same inspection and hashes as a
single upload."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import requests

import imserver


def qcow2(tmp_path, name="disk.qcow2", size="256M", data_mib=3) -> bytes:
    """A real qcow2 with some written data, made by qemu-img."""
    raw = tmp_path / (name + ".raw")
    with open(raw, "wb") as f:
        f.write(hashlib.sha256(name.encode()).digest() * (data_mib * 32768))
        f.truncate(int(size[:-1]) << 20)
    out = tmp_path / name
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out.read_bytes()


def problem(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    if code:
        assert r.json()["code"] == code, r.text
    return r.json()


@pytest.fixture(scope="module")
def srv():
    with imserver.Server() as s:
        yield s


def start(srv, **params):
    r = requests.post(srv.url + "/api/v1/images/uploads", params=params, timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/api/v1/images/uploads/{r.json()['id']}"
    assert r.json()["offset"] == 0 and r.json()["status"] == "uploading"
    return srv.url + r.headers["Location"]


def test_chunks_resume_and_finish_into_an_entry(srv, tmp_path):
    data = qcow2(tmp_path)
    url = start(srv, name="resumed", version="1.0", os_type="linux", label="site=edge")
    # The catalog shows the image at once, as uploading.
    listed = requests.get(srv.url + "/api/v1/images", params={"name": "resumed"}, timeout=30).json()["items"]
    assert [(e["status"], e["version"], e["labels"]) for e in listed] == [("uploading", "1.0", {"site": "edge"})]
    third = len(data) // 3
    r = requests.patch(url, data=data[:third], headers={"Content-Range": f"0-{third - 1}"}, timeout=30)
    assert r.status_code == 202 and r.json()["offset"] == third
    # A chunk that overlaps or skips is refused, and the answer says where to resume.
    r = requests.patch(url, data=data[third + 5:], headers={"Content-Range": f"{third + 5}-{len(data) - 1}"},
                       timeout=30)
    assert problem(r, 416)
    r = requests.get(url, timeout=30)
    assert r.json()["offset"] == third and r.headers["Upload-Offset"] == str(third)
    r = requests.patch(url, data=data[third:2 * third], headers={"Upload-Offset": str(third)}, timeout=30)
    assert r.status_code == 202 and r.json()["offset"] == 2 * third
    # The last chunk comes with the PUT.
    r = requests.put(url, data=data[2 * third:], headers={"Content-Range": f"{2 * third}-{len(data) - 1}"},
                     timeout=60)
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["type"] == "vm-image" and e["disk_format"] == "qcow2" and e["labels"] == {"site": "edge"}
    assert e["checksums"] == {"sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest(),
                              "md5": hashlib.md5(data).hexdigest()}
    assert e["details"]["vm"]["virtual_size"] == 256 << 20
    # The session is gone; the entry is the same one, now available; the image is pullable
    # byte-identical through /v2.
    assert e["id"] == listed[0]["id"] and e["status"] == "available"
    problem(requests.get(url, timeout=30), 404, "ENTRY_UNKNOWN")
    layer = e["details"]["layers"][0]["digest"]
    assert requests.get(f"{srv.url}/v2/{e['repository']}/blobs/{layer}", timeout=30).content == data


def test_session_survives_a_restart(tmp_path):
    data = qcow2(tmp_path, "restart.qcow2", "64M", 1)
    s = imserver.Server()
    try:
        s.start()
        url = start(s, name="restarted", version="2")
        half = len(data) // 2
        assert requests.patch(url, data=data[:half], timeout=30).json()["offset"] == half
        s.stop()
        s.start()
        assert requests.get(url, timeout=30).json()["offset"] == half
        r = requests.put(url, data=data[half:], timeout=60)
        assert r.status_code == 201, r.text
        assert r.json()["checksums"]["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        s.close()


def test_unsafe_image_is_refused_at_finish_and_the_session_ends(srv, tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "64M"], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)], check=True,
                   capture_output=True)
    url = start(srv, name="backed", version="1")
    assert requests.patch(url, data=top.read_bytes(), timeout=30).status_code == 202
    body = problem(requests.put(url, timeout=30), 422, "REFUSED")
    assert "backing" in body["detail"].lower()
    problem(requests.get(url, timeout=30), 404)
    r = requests.get(srv.url + "/api/v1/images", params={"name": "backed"}, timeout=30)
    assert r.json()["items"] == []  # the uploading entry went with the session


def test_bad_requests_get_problems(srv, tmp_path):
    problem(requests.post(srv.url + "/api/v1/images/uploads", params={"name": "x"}, timeout=30), 400)
    problem(requests.post(srv.url + "/api/v1/images/uploads", params={"name": "x", "version": "bad tag"},
                          timeout=30), 400)
    problem(requests.get(srv.url + "/api/v1/images/uploads/nope", timeout=30), 404)
    url = start(srv, name="empty", version="1")
    problem(requests.patch(url, data=b"x", headers={"Content-Range": "5-1"}, timeout=30), 400)
    # an end of u64::MAX has no length that fits (end + 1 overflowed before)
    problem(requests.patch(url, data=b"x", headers={"Content-Range": "0-18446744073709551615"}, timeout=30), 400)
    problem(requests.put(url, timeout=30), 400)  # nothing uploaded
    assert requests.delete(url, timeout=30).status_code == 204
    problem(requests.delete(url, timeout=30), 404)
    assert requests.get(srv.url + "/api/v1/images", params={"name": "empty"}, timeout=30).json()["items"] == []
    # A version that exists cannot get a session.
    data = qcow2(tmp_path, "dup.qcow2", "64M", 1)
    r = requests.post(srv.url + "/api/v1/images", params={"name": "dup", "version": "1"}, data=data,
                      headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 201, r.text
    problem(requests.post(srv.url + "/api/v1/images/uploads", params={"name": "dup", "version": "1"}, timeout=30),
            409)


def test_chunks_on_two_replicas_finish_without_reading_the_image_back(tmp_path):
    """Every chunk's sha256, sha512 and md5 states are kept with the session, so chunks can land
    on different replicas and the end reads back only what the disk inspector looks at (the
    first 4 MiB and the last 1536 bytes of a qcow2), not the 24 MiB image."""
    data = qcow2(tmp_path, "replicas.qcow2", "64M", 24)
    assert len(data) > 20 << 20
    read_ops = ("upload_read", "upload_read_range")

    def upload_reads(s):
        m = imserver.scrape_metrics(s)
        return sum(imserver.metric(m, "image_manager_store_read_bytes_total", op=op) for op in read_ops)

    with imserver.Server() as a:
        b = a.replica()
        try:
            b.start()
            url = start(a, name="two-replicas", version="1")
            third = len(data) // 3
            chunks = [(a, 0, third), (b, third, 2 * third)]
            for s, lo, hi in chunks:
                r = requests.patch(url.replace(a.url, s.url), data=data[lo:hi],
                                   headers={"Content-Range": f"{lo}-{hi - 1}"}, timeout=60)
                assert r.status_code == 202 and r.json()["offset"] == hi, r.text
            before = (upload_reads(a), upload_reads(b))
            r = requests.put(url.replace(a.url, b.url), data=data[2 * third:],
                             headers={"Content-Range": f"{2 * third}-{len(data) - 1}"}, timeout=60)
            assert r.status_code == 201, r.text
            assert r.json()["checksums"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                             "sha512": hashlib.sha512(data).hexdigest(),
                                             "md5": hashlib.md5(data).hexdigest()}
            assert r.json()["disk_format"] == "qcow2"
            read_back = upload_reads(b) - before[1]
            assert upload_reads(a) == before[0]
            assert 0 < read_back <= (4 << 20) + 1536, read_back
            layer = r.json()["details"]["layers"][0]["digest"]
            assert requests.get(f"{a.url}/v2/{r.json()['repository']}/blobs/{layer}", timeout=60).content == data
        finally:
            b.close()
