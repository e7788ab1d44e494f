"""VM image upload (`POST /api/v1/images`): the three ways of giving metadata (query, headers,
multipart), the disk format decided from the bytes, refusals of unsafe or contradictory images,
checksums, storage as an OCI artifact that `oras pull` gives back unchanged, deduplication, and
the 400/409 answers. Images are small qemu-img sparse images."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import oras.client
import pytest
import requests

import imserver
from catalogkit import (DISK_LAYER, MT_EMPTY, TITLE, VM_ARTIFACT, api, digest, disk, entry, hashes, is_problem,
                        is_refused, iso_image, items, manifest, qemu_img, qemu_info, rfc3339, sha256_hex, uid,
                        upload, uploaded)


@pytest.fixture(scope="module")
def srv():
    with imserver.Server() as s:
        yield s


@pytest.fixture(scope="module")
def small_qcow2(tmp_path_factory) -> bytes:
    return disk(tmp_path_factory.mktemp("small") / "small.qcow2", "qcow2", "64M", os.urandom(8192))


def usage(srv, ns: str) -> int:
    r = api(srv, "GET", f"/api/v1/admin/namespaces/{ns}")
    assert r.status_code == 200, r.text
    return r.json()["usage_bytes"]


def nothing_stored(srv, ns: str, name: str, version: str, data: bytes) -> None:
    """A refused or invalid upload left no entry, no tag and no blob behind."""
    assert items(srv, {"namespace": ns, "name": name}) == []
    assert requests.get(f"{srv.url}/v2/{ns}/{name}/manifests/{version}").status_code == 404
    assert requests.head(f"{srv.url}/v2/{ns}/{name}/blobs/{digest(data)}").status_code == 404


def text_of(r: requests.Response) -> str:
    body = r.json()
    return (body.get("detail", "") + " " + " ".join(body.get("problems") or [])).lower()


def test_upload_with_query_metadata_stores_an_oci_artifact(srv, tmp_path):
    data = disk(tmp_path / "u.qcow2", "qcow2", "64M", os.urandom(256 * 1024))
    ns = uid("vm")
    params = [("namespace", ns), ("name", "ubuntu"), ("version", "22.04.1"), ("disk_format", "qcow2"),
              ("container_format", "bare"), ("min_disk", str(2 << 30)), ("min_ram", str(512 << 20)),
              ("os_type", "linux"), ("os_distro", "ubuntu"), ("os_version", "22.04"), ("architecture", "x86_64"),
              ("vendor", "Canonical"), ("description", "Ubuntu server image"), ("label", "tier=gold"),
              ("label", "team=net"), ("file_name", "ubuntu-22.04.qcow2")]
    before = datetime.now(timezone.utc)
    e = uploaded(srv, data, params)
    after = datetime.now(timezone.utc)

    assert (e["namespace"], e["name"], e["version"]) == (ns, "ubuntu", "22.04.1")
    assert (e["type"], e["status"], e["source"]) == ("vm-image", "available", "upload")
    assert (e["repository"], e["tag"]) == (f"{ns}/ubuntu", "22.04.1")
    assert e["reference"] == f"{ns}/ubuntu:22.04.1@{e['digest']}"
    assert e["disk_format"] == "qcow2"
    assert e["vendor"] == "Canonical" and e["description"] == "Ubuntu server image"
    assert e["architecture"] == "x86_64"
    assert e["labels"] == {"tier": "gold", "team": "net"}
    assert e["predecessor"] is None
    assert e["checksums"] == hashes(data)
    vm = e["details"]["vm"]
    assert vm["disk_format"] == "qcow2" and vm["container_format"] == "bare"
    assert vm["virtual_size"] == 64 << 20
    assert vm["file_size"] == len(data)
    assert (vm["min_disk"], vm["min_ram"]) == (2 << 30, 512 << 20)
    assert (vm["os_type"], vm["os_distro"], vm["os_version"]) == ("linux", "ubuntu", "22.04")
    assert vm["architecture"] == "x86_64"
    assert vm["checksums"] == hashes(data)
    assert vm["file_name"] == "ubuntu-22.04.qcow2"
    slack = timedelta(seconds=30)
    assert before - slack <= rfc3339(e["created_at"]) <= after + slack
    assert rfc3339(e["updated_at"]) >= rfc3339(e["created_at"])

    # Stored as an OCI artifact under NS/NAME:VERSION: empty config, one layer with the bytes.
    raw, m, r = manifest(srv, f"{ns}/ubuntu", "22.04.1")
    assert digest(raw) == e["digest"] == r.headers["Docker-Content-Digest"]
    assert m["artifactType"] == VM_ARTIFACT
    assert m["config"]["mediaType"] == MT_EMPTY
    assert m["config"]["digest"] == digest(b"{}") and m["config"]["size"] == 2
    assert len(m["layers"]) == 1
    layer = m["layers"][0]
    assert layer["mediaType"] == DISK_LAYER + "qcow2"
    assert layer["digest"] == digest(data) and layer["size"] == len(data)
    assert layer["annotations"][TITLE] == "ubuntu-22.04.qcow2"
    assert e["size"] == len(raw) + m["config"]["size"] + len(data)
    blob = requests.get(f"{srv.url}/v2/{ns}/ubuntu/blobs/{digest(data)}", timeout=60)
    assert blob.status_code == 200 and blob.content == data

    # The entry reads back the same, with its surroundings, and is listed at once.
    d = entry(srv, e["id"])
    for k, v in e.items():
        assert d[k] == v, k
    assert d["referrers"] == [] and d["contained_in"] == [] and d["contains"] == []
    assert [(v["id"], v["version"], v["status"]) for v in d["versions"]] == [(e["id"], "22.04.1", "available")]
    assert rfc3339(d["versions"][0]["created_at"]) == rfc3339(e["created_at"])
    assert [x["id"] for x in items(srv, {"namespace": ns})] == [e["id"]]


def test_oras_pull_gives_the_file_back_byte_identical(srv, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ns = uid("oras")
    data = disk(tmp_path / "c.qcow2", "qcow2", "128M", os.urandom(512 * 1024))
    uploaded(srv, data, {"namespace": ns, "name": "cirros", "version": "0.6.2", "file_name": "cirros-0.6.2.qcow2"})
    client = oras.client.OrasClient(hostname=srv.host, insecure=True)
    out = client.pull(target=f"{srv.host}/{ns}/cirros:0.6.2", outdir=str(tmp_path / "out"))
    assert [os.path.basename(p) for p in out] == ["cirros-0.6.2.qcow2"]
    assert sha256_hex(Path(out[0]).read_bytes()) == sha256_hex(data)

    # Without a file name the layer still has a title, and the bytes come back the same.
    raw_data = os.urandom(300 * 1024)
    e = uploaded(srv, raw_data, {"namespace": ns, "name": "blank", "version": "1"})
    assert e["details"]["vm"]["file_name"]
    out = client.pull(target=f"{srv.host}/{e['repository']}@{e['digest']}", outdir=str(tmp_path / "out2"))
    assert len(out) == 1 and os.path.basename(out[0]) == e["details"]["vm"]["file_name"]
    assert sha256_hex(Path(out[0]).read_bytes()) == sha256_hex(raw_data)


def make_format(case: str, path: Path) -> tuple[bytes, str, int]:
    """(bytes, expected disk_format, expected virtual size) of a test image."""
    payload = os.urandom(16 * 1024)
    if case == "qcow2":
        data = disk(path, "qcow2", "64M", payload)
    elif case == "qcow2-compat-0.10":
        data = disk(path, "qcow2", "64M", payload, "compat=0.10")
    elif case == "raw":
        data = disk(path, "raw", 192 * 1024, payload)
    elif case == "vmdk":
        data = disk(path, "vmdk", "64M", payload)
    elif case == "vmdk-stream-optimized":
        data = disk(path, "vmdk", "64M", payload, "subformat=streamOptimized")
    elif case == "vhd":
        data = disk(path, "vpc", "64M", payload, "force_size=on")
    elif case == "vhdx":
        qemu_img("create", "-q", "-f", "vhdx", "-o", "log_size=1M", str(path), "64M")
        data = path.read_bytes()
    elif case == "iso":
        data = iso_image(extra=payload)
        path.write_bytes(data)
        return data, "iso", len(data)
    else:
        raise AssertionError(case)
    expected = {"vmdk-stream-optimized": "vmdk", "qcow2-compat-0.10": "qcow2"}.get(case, case)
    return data, expected, qemu_info(path)["virtual-size"]


@pytest.mark.parametrize("case", ["qcow2", "qcow2-compat-0.10", "raw", "vmdk", "vmdk-stream-optimized", "vhd", "vhdx", "iso"])
def test_disk_format_is_decided_from_the_bytes_not_the_name(srv, tmp_path, case):
    data, expected, virtual = make_format(case, tmp_path / "img")
    misleading = "disk.raw" if expected == "qcow2" else "disk.qcow2"
    ns, name = uid("fmt"), case
    e = uploaded(srv, data, {"namespace": ns, "name": name, "version": "1", "file_name": misleading})
    assert e["disk_format"] == expected, e
    assert e["details"]["vm"]["disk_format"] == expected
    assert e["details"]["vm"]["virtual_size"] == virtual
    assert e["details"]["vm"]["file_size"] == len(data)
    assert e["details"]["vm"]["file_name"] == misleading
    assert e["checksums"] == hashes(data)
    _, m, _ = manifest(srv, f"{ns}/{name}", "1")
    assert m["layers"][0]["mediaType"] == DISK_LAYER + expected
    # Declaring the format the bytes have is accepted.
    e2 = uploaded(srv, data, {"namespace": ns, "name": name, "version": "2", "disk_format": expected})
    assert e2["disk_format"] == expected and e2["checksums"] == e["checksums"]
    assert {x["id"] for x in items(srv, {"namespace": ns, "disk_format": expected})} == {e["id"], e2["id"]}


@pytest.mark.parametrize("declared,actual", [("raw", "qcow2"), ("qcow2", "raw"), ("vmdk", "qcow2"), ("iso", "raw"),
                                             ("vhdx", "qcow2")])
def test_declared_format_contradicting_the_bytes_is_refused(srv, tmp_path, declared, actual):
    payload = os.urandom(32 * 1024)
    data = disk(tmp_path / "img", actual, "64M" if actual != "raw" else 128 * 1024, payload)
    ns, name = uid("bad"), "liar"
    r = upload(srv, data, {"namespace": ns, "name": name, "version": "1", "disk_format": declared})
    is_refused(r)
    text = text_of(r)
    assert declared in text and actual in text, text
    nothing_stored(srv, ns, name, "1", data)


def unsafe_image(case: str, d: Path) -> tuple[bytes, tuple[str, ...]]:
    """(bytes, words one of which the refusal should use) of an image that must be refused."""
    if case == "backing-file":
        qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "64M", cwd=d)
        qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=d)
        return (d / "top.qcow2").read_bytes(), ("backing",)
    if case == "external-data-file":
        qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=x.raw", "x.qcow2", "64M", cwd=d)
        return (d / "x.qcow2").read_bytes(), ("data file", "data_file", "data-file", "external")
    if case == "vmdk-with-parent":
        qemu_img("create", "-q", "-f", "vmdk", "base.vmdk", "64M", cwd=d)
        qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "top.vmdk", cwd=d)
        return (d / "top.vmdk").read_bytes(), ("parent", "backing")
    if case == "vmdk-descriptor":
        qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "x.vmdk", "64M", cwd=d)
        assert (d / "x-flat.vmdk").exists()
        return (d / "x.vmdk").read_bytes(), ("descriptor", "extent")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["backing-file", "external-data-file", "vmdk-with-parent", "vmdk-descriptor"])
def test_unsafe_images_are_refused(srv, tmp_path, case):
    data, words = unsafe_image(case, tmp_path)
    ns, name = uid("unsafe"), case
    r = upload(srv, data, {"namespace": ns, "name": name, "version": "1"})
    is_refused(r)
    text = text_of(r)
    assert any(w in text for w in words), (words, text)
    nothing_stored(srv, ns, name, "1", data)


def test_virtual_size_beyond_the_limit_is_refused(tmp_path):
    limit = 1 << 20
    with imserver.Server(env={"IMAGE_MANAGER_CATALOG__MAX_VIRTUAL_SIZE_BYTES": str(limit)}) as s:
        ns = uid("limit")
        big = disk(tmp_path / "big.qcow2", "qcow2", "64M", os.urandom(4096))
        r = upload(s, big, {"namespace": ns, "name": "big", "version": "1"})
        is_refused(r)
        assert "virtual" in text_of(r) or "size" in text_of(r), r.text
        nothing_stored(s, ns, "big", "1", big)
        # Raw: the virtual size is the file size; one byte over is refused, the limit itself is not.
        over = os.urandom(limit + 1)
        is_refused(upload(s, over, {"namespace": ns, "name": "over", "version": "1"}))
        nothing_stored(s, ns, "over", "1", over)
        at = uploaded(s, os.urandom(limit), {"namespace": ns, "name": "at", "version": "1"})
        assert at["details"]["vm"]["virtual_size"] == limit
        small = disk(tmp_path / "small.qcow2", "qcow2", 512 * 1024, os.urandom(4096))
        e = uploaded(s, small, {"namespace": ns, "name": "small", "version": "1"})
        assert e["disk_format"] == "qcow2" and e["details"]["vm"]["virtual_size"] == 512 * 1024


def test_existing_version_is_a_conflict(srv, tmp_path, small_qcow2):
    ns = uid("dup")
    first = uploaded(srv, small_qcow2, {"namespace": ns, "name": "app", "version": "1.0"})
    other = disk(tmp_path / "o.qcow2", "qcow2", "64M", os.urandom(8192))
    is_problem(upload(srv, other, {"namespace": ns, "name": "app", "version": "1.0"}), 409)
    _, m, _ = manifest(srv, f"{ns}/app", "1.0")
    assert m["layers"][0]["digest"] == digest(small_qcow2)
    assert entry(srv, first["id"])["digest"] == first["digest"]
    assert [x["id"] for x in items(srv, {"namespace": ns})] == [first["id"]]
    assert requests.head(f"{srv.url}/v2/{ns}/app/blobs/{digest(other)}").status_code == 404


BAD = {
    "unknown-parameter": ({"colour": "red"}, {}),
    "unknown-header": ({}, {"X-Image-Meta-Colour": "red"}),
    "no-name": ({"name": None}, {}),
    "no-version": ({"version": None}, {}),
    "bad-disk-format": ({"disk_format": "floppy"}, {}),
    "bad-container-format": ({"container_format": "crate"}, {}),
    "min-disk-not-a-number": ({"min_disk": "lots"}, {}),
    "negative-min-ram": ({"min_ram": "-1"}, {}),
    "bad-version": ({"version": "bad tag!"}, {}),
    "upper-case-name": ({"name": "Ubuntu"}, {}),
    "two-segment-namespace": ({"namespace": "a/b"}, {}),
    "label-without-value": ({"label": "novalue"}, {}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_metadata_is_a_400(srv, small_qcow2, case):
    ns, name = uid("inv"), uid("img")
    params, headers = BAD[case]
    query = {"namespace": ns, "name": name, "version": "1"}
    query.update(params)
    query = {k: v for k, v in query.items() if v is not None}
    is_problem(upload(srv, small_qcow2, query, headers=headers), 400)
    assert items(srv, {"q": name}) == [] and items(srv, {"namespace": ns}) == []
    assert requests.get(f"{srv.url}/v2/{ns}/{name}/manifests/1").status_code == 404


def test_multipart_upload(srv, tmp_path):
    ns = uid("mp")
    data = disk(tmp_path / "m.qcow2", "qcow2", "64M", os.urandom(64 * 1024))
    fields = [("namespace", (None, ns)), ("name", (None, "cirros")), ("version", (None, "0.6.2")),
              ("disk_format", (None, "qcow2")), ("os_distro", (None, "cirros")), ("min_ram", (None, "268435456")),
              ("label", (None, "via=multipart")), ("description", (None, "from a form")),
              ("file", ("cirros-mp.qcow2", data, "application/octet-stream"))]
    r = requests.post(f"{srv.url}/api/v1/images", files=fields, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    e = r.json()
    assert r.headers["Location"] == f"/api/v1/images/{e['id']}"
    assert (e["namespace"], e["name"], e["version"], e["type"]) == (ns, "cirros", "0.6.2", "vm-image")
    assert e["details"]["vm"]["file_name"] == "cirros-mp.qcow2"
    assert e["details"]["vm"]["os_distro"] == "cirros" and e["details"]["vm"]["min_ram"] == 268435456
    assert e["labels"] == {"via": "multipart"} and e["description"] == "from a form"
    assert e["checksums"] == hashes(data)
    _, m, _ = manifest(srv, f"{ns}/cirros", "0.6.2")
    assert m["layers"][0]["annotations"][TITLE] == "cirros-mp.qcow2"
    assert m["layers"][0]["digest"] == digest(data)

    # A form with an unknown field, or without the file part, is invalid and stores nothing.
    r = requests.post(f"{srv.url}/api/v1/images", files=[("namespace", (None, ns)), ("name", (None, "odd")),
                                                          ("version", (None, "1")), ("colour", (None, "red")),
                                                          ("file", ("odd.qcow2", data, "application/octet-stream"))],
                      timeout=60)
    is_problem(r, 400)
    assert items(srv, {"namespace": ns, "name": "odd"}) == []
    r = requests.post(f"{srv.url}/api/v1/images", files=[("namespace", (None, ns)), ("name", (None, "nofile")),
                                                          ("version", (None, "1"))], timeout=60)
    is_problem(r, 400)
    assert items(srv, {"namespace": ns, "name": "nofile"}) == []


def test_metadata_as_headers(srv, tmp_path):
    ns = uid("hdr")
    data = disk(tmp_path / "h.qcow2", "qcow2", "64M", os.urandom(32 * 1024))
    headers = {"X-Image-Meta-Namespace": ns, "X-Image-Meta-Name": "debian", "X-Image-Meta-Version": "12.5",
               "X-Image-Meta-Disk-Format": "qcow2", "X-Image-Meta-Container-Format": "bare",
               "X-Image-Meta-Os-Distro": "debian", "X-Image-Meta-Os-Version": "12",
               "X-Image-Meta-Min-Ram": "1073741824", "X-Image-Meta-Min-Disk": "4294967296",
               "X-Image-Meta-Architecture": "aarch64", "X-Image-Meta-File-Name": "debian-12.qcow2"}
    e = uploaded(srv, data, headers=headers)
    assert (e["namespace"], e["name"], e["version"], e["disk_format"]) == (ns, "debian", "12.5", "qcow2")
    vm = e["details"]["vm"]
    assert (vm["os_distro"], vm["os_version"], vm["architecture"]) == ("debian", "12", "aarch64")
    assert (vm["min_ram"], vm["min_disk"]) == (1 << 30, 4 << 30)
    assert vm["file_name"] == "debian-12.qcow2" and e["architecture"] == "aarch64"
    # A header contradicting the bytes is refused like a query parameter.
    r = upload(srv, data, headers={**headers, "X-Image-Meta-Version": "12.6", "X-Image-Meta-Disk-Format": "raw"})
    is_refused(r)
    assert items(srv, {"namespace": ns, "version": "12.6"}) == []


def test_namespace_defaults_to_library(srv, small_qcow2):
    name = uid("deflt")
    e = uploaded(srv, small_qcow2, {"name": name, "version": "1"})
    assert e["namespace"] == "library" and e["repository"] == f"library/{name}"
    _, m, _ = manifest(srv, f"library/{name}", "1")
    assert m["layers"][0]["digest"] == digest(small_qcow2)


def test_same_bytes_under_another_version_are_stored_once(srv, tmp_path):
    ns = uid("dedup")
    data = disk(tmp_path / "d.qcow2", "qcow2", "256M", os.urandom(1 << 20))
    assert len(data) > 1 << 20
    e1 = uploaded(srv, data, {"namespace": ns, "name": "img", "version": "1"})
    u1 = usage(srv, ns)
    assert u1 >= len(data)
    e2 = uploaded(srv, data, {"namespace": ns, "name": "img", "version": "2"})
    u2 = usage(srv, ns)
    e3 = uploaded(srv, data, {"namespace": ns, "name": "copy", "version": "1"})
    u3 = usage(srv, ns)
    assert u2 - u1 < len(data) // 10 and u3 - u2 < len(data) // 10, (u1, u2, u3, len(data))
    layers = [manifest(srv, e["repository"], e["tag"])[1]["layers"][0]["digest"] for e in (e1, e2, e3)]
    assert layers == [digest(data)] * 3
    assert e1["checksums"] == e2["checksums"] == e3["checksums"] == hashes(data)
    assert e2["predecessor"] == e1["id"] and e3["predecessor"] is None


def test_streamed_body_without_content_length(srv, tmp_path):
    ns = uid("chunk")
    data = disk(tmp_path / "s.qcow2", "qcow2", "1G", os.urandom(768 * 1024))

    def chunks():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]
    r = requests.post(f"{srv.url}/api/v1/images", params={"namespace": ns, "name": "streamed", "version": "1"},
                      data=chunks(), headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["checksums"] == hashes(data) and e["details"]["vm"]["virtual_size"] == 1 << 30
    assert e["details"]["vm"]["file_size"] == len(data)


def test_nested_name(srv, small_qcow2):
    ns = uid("nest")
    e = uploaded(srv, small_qcow2, {"namespace": ns, "name": "tools/debian", "version": "12"})
    assert (e["namespace"], e["name"], e["repository"]) == (ns, "tools/debian", f"{ns}/tools/debian")
    _, m, _ = manifest(srv, f"{ns}/tools/debian", "12")
    assert m["layers"][0]["digest"] == digest(small_qcow2)
    assert [x["id"] for x in items(srv, {"namespace": ns, "name": "tools/debian"})] == [e["id"]]


def test_concurrent_uploads_of_one_version_keep_exactly_one(srv, tmp_path):
    ns = uid("race")
    n = 4
    datas = [disk(tmp_path / f"r{i}", "qcow2", "64M", os.urandom(256 * 1024)) for i in range(n)]
    barrier = threading.Barrier(n)

    def go(data):
        barrier.wait()
        return upload(srv, data, {"namespace": ns, "name": "img", "version": "1"})
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(go, datas))
    codes = [r.status_code for r in results]
    assert sorted(codes) == [201] + [409] * (n - 1), [(r.status_code, r.text[:200]) for r in results]
    for r in results:
        if r.status_code == 409:
            is_problem(r, 409)
    winner = codes.index(201)
    e = results[winner].json()
    _, m, _ = manifest(srv, f"{ns}/img", "1")
    assert m["layers"][0]["digest"] == digest(datas[winner]), "the tag must hold the bytes of the upload that won"
    assert [(x["id"], x["digest"]) for x in items(srv, {"namespace": ns})] == [(e["id"], e["digest"])]
    assert entry(srv, e["id"])["checksums"] == hashes(datas[winner])


def test_uploads_are_recorded_as_uploads(srv):
    # The upload records its entry while the indexer, woken by the same manifest push, derives
    # one from the registry: whichever comes first, the entry must say where it came from. The
    # race is lost in a few percent of uploads, hence many small ones.
    ns = uid("src")
    wrong = []
    for i in range(120):
        e = uploaded(srv, os.urandom(1024), {"namespace": ns, "name": "img", "version": str(i), "label": "k=v",
                                             "description": "d"})
        got = entry(srv, e["id"])
        if (e["source"], got["source"], got["labels"], got["description"]) != ("upload", "upload", {"k": "v"}, "d"):
            wrong.append((i, e["source"], got["source"], got["labels"], got["description"]))
    assert wrong == [], wrong


def test_other_content_types_get_415(srv):
    r = requests.post(srv.url + "/api/v1/images", params={"name": uid("ct"), "version": "1"}, data=b"x" * 512,
                      headers={"Content-Type": "text/plain"}, timeout=30)
    is_problem(r, 415, "UNSUPPORTED")
