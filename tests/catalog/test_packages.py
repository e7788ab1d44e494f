"""VNF package onboarding (`POST /api/v1/packages`, ETSI SOL004 CSAR): the package entry and
its SOL004 description, the software images inside it becoming linked vm-image entries, the
VNFD compared with the real images, and every refusal of a hostile or inconsistent package."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import oras.client
import pytest
import requests

import imserver
from catalogkit import (api, digest, disk, entry, hashes, is_problem, is_refused, items, manifest, qemu_img, sha256_hex,
                        uid)
from csarkit import IMAGE_PATH, Signer, csar, set_encrypted, sw_image_data, vdu, zip_bytes


@pytest.fixture(scope="module")
def srv():
    with imserver.Server() as s:
        yield s


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> Signer:
    return Signer.create(tmp_path_factory.mktemp("signer"))


@pytest.fixture(scope="module")
def cirros(tmp_path_factory) -> bytes:
    """A qcow2 of 64 MiB virtual holding 64 KiB of data."""
    return disk(tmp_path_factory.mktemp("cirros") / "cirros.qcow2", "qcow2", "64M", os.urandom(64 * 1024))


def onboard(srv, data: bytes, params=None, auth=None) -> requests.Response:
    return api(srv, "POST", "/api/v1/packages", auth=auth, params=params, data=data,
               headers={"Content-Type": "application/zip"})


def onboarded(srv, data: bytes, params=None) -> dict:
    r = onboard(srv, data, params)
    assert r.status_code == 201, (r.status_code, r.text[:3000], srv.log())
    e = r.json()
    assert r.headers["Location"] == f"/api/v1/images/{e['id']}"
    return e


def strings(v) -> set[str]:
    """Every string anywhere in a JSON value (keys and values)."""
    if isinstance(v, str):
        return {v}
    if isinstance(v, dict):
        return set(v) | set().union(*(strings(x) for x in v.values())) if v else set()
    if isinstance(v, list):
        return set().union(*(strings(x) for x in v)) if v else set()
    return set()


def named(problems: list[str], path: str) -> bool:
    """Whether a finding names the file `path`."""
    return any(path in p for p in problems)


def nothing_onboarded(srv, ns: str) -> None:
    assert items(srv, {"namespace": ns}) == [], "a refused package must leave no entries behind"


def test_onboard_package_with_an_image(srv, signer, cirros, tmp_path, monkeypatch):
    ns = uid("vnf")
    data = csar(cirros, signer)
    pkg = onboarded(srv, data, {"namespace": ns})

    assert pkg["type"] == "vnf-package" and pkg["status"] == "available" and pkg["source"] == "upload"
    assert pkg["namespace"] == ns
    assert pkg["name"].lower() == "vfirewall" and pkg["version"] == "1.0.0"
    assert pkg["vendor"] == "Acme"
    assert pkg["reference"] == f"{pkg['repository']}:{pkg['tag']}@{pkg['digest']}"
    raw, _, r = manifest(srv, pkg["repository"], pkg["tag"])
    assert digest(raw) == pkg["digest"]

    p = pkg["details"]["package"]
    md = p["metadata"]
    assert (md["vnf_provider_id"], md["vnf_product_name"], md["vnf_package_version"]) == ("Acme", "vFirewall", "1.0.0")
    assert md["vnf_release_date_time"] == "2024-01-01T00:00:00+00:00"
    assert {"Definitions/vnfd.yaml", IMAGE_PATH, "Files/ChangeLog.txt", "Files/vnfd.cert",
            "TOSCA-Metadata/TOSCA.meta"} <= strings(p["files"]), p["files"]
    assert {"Definitions/vnfd.yaml", IMAGE_PATH, "Files/ChangeLog.txt", "Files/vnfd.cert"} <= \
        strings(p["manifest_entries"]), p["manifest_entries"]
    assert isinstance(p["signatures"], list)
    assert p["manifest_signature"], "the manifest carries a CMS signature"
    certs = {c["path"]: c["content"] for c in p["certificates"]}
    assert certs["Files/vnfd.cert"] == signer.cert_pem.decode()

    [sw] = p["software_images"]
    assert (sw["node"], sw["name"], sw["version"]) == ("VDU1", "cirros", "0.6.2")
    assert sha256_hex(cirros) in json.dumps(sw["checksum"])
    assert (sw["disk_format"], sw["container_format"]) == ("qcow2", "bare")
    assert (sw["min_disk"], sw["min_ram"]) == (10**9, 512 * 10**6), "TOSCA: 1 GB = 10^9 bytes, 512 MB = 512 * 10^6"
    assert sw["size"] == len(cirros)
    assert sw["file"] == IMAGE_PATH and sw["in_package"] is True and sw["reference"] is False
    assert sw["mismatches"] == []

    # The image inside became a vm-image entry PKG/IMAGE, linked both ways.
    img = entry(srv, sw["entry_id"])
    assert img["type"] == "vm-image" and img["source"] == "package"
    assert img["namespace"] == ns and img["name"] == f"{pkg['name']}/cirros"
    assert img["disk_format"] == "qcow2" and img["checksums"] == hashes(cirros)
    assert img["details"]["vm"]["virtual_size"] == 64 << 20
    assert img["details"]["vm"]["file_size"] == len(cirros)
    assert "vnfd-mismatch" not in img["labels"] and not img["details"]["vm"].get("vnfd_mismatches")
    assert [(c["id"], c["path"]) for c in img["contained_in"]] == [(pkg["id"], IMAGE_PATH)]
    full = entry(srv, pkg["id"])
    assert [(c["id"], c["path"]) for c in full["contains"]] == [(img["id"], IMAGE_PATH)]
    assert full["contained_in"] == []

    listed = items(srv, {"namespace": ns})
    assert {(x["id"], x["type"]) for x in listed} == {(pkg["id"], "vnf-package"), (img["id"], "vm-image")}
    assert [x["id"] for x in items(srv, {"namespace": ns, "type": "vnf-package", "vendor": "Acme"})] == [pkg["id"]]

    # The image pulls back byte-identical with ORAS.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    client = oras.client.OrasClient(hostname=srv.host, insecure=True)
    out = client.pull(target=f"{srv.host}/{img['repository']}:{img['tag']}", outdir=str(tmp_path / "out"))
    assert len(out) == 1 and sha256_hex(Path(out[0]).read_bytes()) == sha256_hex(cirros)

    # The same version again is a conflict.
    is_problem(onboard(srv, data, {"namespace": ns}), 409)
    assert len(items(srv, {"namespace": ns})) == 2


def test_name_version_description_and_labels_from_parameters(srv, signer, cirros):
    ns = uid("vnfp")
    pkg = onboarded(srv, csar(cirros, signer), [("namespace", ns), ("name", "fw"), ("version", "2.0.0-rc1"),
                                                ("description", "release candidate"), ("label", "stage=rc"),
                                                ("label", "owner=netops")])
    assert (pkg["name"], pkg["version"], pkg["repository"], pkg["tag"]) == ("fw", "2.0.0-rc1", f"{ns}/fw", "2.0.0-rc1")
    assert pkg["description"] == "release candidate" and pkg["labels"] == {"stage": "rc", "owner": "netops"}
    img = entry(srv, pkg["details"]["package"]["software_images"][0]["entry_id"])
    assert img["name"] == "fw/cirros" and img["namespace"] == ns
    is_problem(onboard(srv, csar(cirros, signer), {"namespace": ns, "colour": "red"}), 400)


def test_deleting_a_contained_image_needs_force(srv, signer, cirros):
    ns = uid("vnfd")
    pkg = onboarded(srv, csar(cirros, signer), {"namespace": ns})
    img_id = pkg["details"]["package"]["software_images"][0]["entry_id"]
    img = entry(srv, img_id)
    r = api(srv, "DELETE", f"/api/v1/images/{img_id}")
    body = is_problem(r, 409)
    assert pkg["name"] in body["detail"] or pkg["id"] in body["detail"], body
    assert entry(srv, img_id)["digest"] == img["digest"]
    assert requests.get(f"{srv.url}/v2/{img['repository']}/manifests/{img['tag']}").status_code == 200

    assert api(srv, "DELETE", f"/api/v1/images/{img_id}", params={"force": "true"}).status_code == 204
    is_problem(api(srv, "GET", f"/api/v1/images/{img_id}"), 404, "ENTRY_UNKNOWN")
    assert requests.get(f"{srv.url}/v2/{img['repository']}/manifests/{img['tag']}").status_code == 404
    assert entry(srv, pkg["id"])["type"] == "vnf-package"


def test_once_the_package_is_gone_its_images_delete_without_force(srv, signer, cirros):
    ns = uid("vnfg")
    pkg = onboarded(srv, csar(cirros, signer), {"namespace": ns})
    img_id = pkg["details"]["package"]["software_images"][0]["entry_id"]
    is_problem(api(srv, "DELETE", f"/api/v1/images/{img_id}"), 409)
    assert api(srv, "DELETE", f"/api/v1/images/{pkg['id']}").status_code == 204
    is_problem(api(srv, "GET", f"/api/v1/images/{pkg['id']}"), 404, "ENTRY_UNKNOWN")
    assert requests.get(f"{srv.url}/v2/{pkg['repository']}/manifests/{pkg['tag']}").status_code == 404
    assert entry(srv, img_id)["contained_in"] == []
    assert api(srv, "DELETE", f"/api/v1/images/{img_id}").status_code == 204
    assert items(srv, {"namespace": ns}) == []


def test_concurrent_onboarding_of_one_version_keeps_exactly_one(srv, signer, tmp_path):
    ns = uid("vnfc")
    n = 3
    packages = [csar(disk(tmp_path / f"i{i}", "qcow2", "64M", os.urandom(128 * 1024)), signer) for i in range(n)]
    barrier = threading.Barrier(n)

    def go(data):
        barrier.wait()
        return onboard(srv, data, {"namespace": ns, "name": "fw", "version": "1.0.0"})
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(go, packages))
    codes = [r.status_code for r in results]
    assert sorted(codes) == [201] + [409] * (n - 1), [(r.status_code, r.text[:200]) for r in results]
    won = results[codes.index(201)].json()
    listed = items(srv, {"namespace": ns, "type": "vnf-package"})
    assert [(x["id"], x["digest"]) for x in listed] == [(won["id"], won["digest"])]
    raw, _, _ = manifest(srv, f"{ns}/fw", "1.0.0")
    assert digest(raw) == won["digest"], "the tag must hold the package of the onboarding that won"


def test_vnfd_disagreeing_with_the_image_is_flagged(srv, signer, cirros):
    ns = uid("vnfm")
    sw = sw_image_data(cirros, hash=hashlib.sha256(b"another image").hexdigest(), disk_format="raw",
                       size=f"{len(cirros) + 4096} B")
    pkg = onboarded(srv, csar(cirros, signer, sw=sw), {"namespace": ns})
    [info] = pkg["details"]["package"]["software_images"]
    assert info["in_package"] is True and info["entry_id"]
    img = entry(srv, info["entry_id"])
    assert img["disk_format"] == "qcow2" and img["checksums"] == hashes(cirros)
    assert img["labels"].get("vnfd-mismatch") == "true"
    for where in (img["details"]["vm"]["vnfd_mismatches"], info["mismatches"]):
        text = [json.dumps(m).lower() for m in where]
        assert len(where) >= 3, where
        assert any("checksum" in t for t in text), where
        assert any("disk_format" in t or "disk format" in t for t in text), where
        assert any("size" in t for t in text), where
    assert [x["id"] for x in items(srv, {"namespace": ns, "label": "vnfd-mismatch=true"})] == [img["id"]]


def test_referenced_images_are_listed_not_ingested(srv, signer, cirros):
    ns = uid("vnfr")
    remote = sw_image_data(b"remote", name="ubuntu", version="22.04", size="2361393152 B", min_disk="10 GB")
    extra = [vdu("VDU2", "https://images.example.com/ubuntu-22.04.qcow2", remote)]
    pkg = onboarded(srv, csar(cirros, signer, extra_vdus=extra), {"namespace": ns})
    by_node = {s["node"]: s for s in pkg["details"]["package"]["software_images"]}
    assert set(by_node) == {"VDU1", "VDU2"}
    ref = by_node["VDU2"]
    assert ref["reference"] is True and ref["in_package"] is False and not ref.get("entry_id")
    assert ref["name"] == "ubuntu" and ref["size"] == 2361393152 and ref["min_disk"] == 10 * 10**9
    assert by_node["VDU1"]["reference"] is False and by_node["VDU1"]["entry_id"]
    full = entry(srv, pkg["id"])
    assert [c["id"] for c in full["contains"]] == [by_node["VDU1"]["entry_id"]]
    assert {x["type"] for x in items(srv, {"namespace": ns})} == {"vnf-package", "vm-image"}
    assert len(items(srv, {"namespace": ns})) == 2


# ----- refusals -------------------------------------------------------------------------------

def test_tampered_files_are_all_listed(srv, signer, cirros):
    ns = uid("tamp")
    evil_image = bytearray(cirros)
    # Change the last data byte (guest data; the qcow2 metadata is at the start): still a
    # valid qcow2, no longer the one hashed in the manifest.
    evil_image[len(cirros.rstrip(b"\0")) - 1] ^= 0xFF
    data = csar(cirros, signer, tamper={"Files/ChangeLog.txt": b"1.0.0: trust me\n", IMAGE_PATH: bytes(evil_image)})
    r = onboard(srv, data, {"namespace": ns})
    problems = is_refused(r)
    for path in ("Files/ChangeLog.txt", IMAGE_PATH):
        assert named(problems, path), (path, problems)
    nothing_onboarded(srv, ns)


def test_manifest_listing_a_missing_file(srv, signer, cirros):
    ns = uid("miss")
    data = csar(cirros, signer, listed_only={"Files/missing.txt": b"not here\n"})
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, "Files/missing.txt"), problems
    nothing_onboarded(srv, ns)


@pytest.mark.parametrize("name", ["../evil", "/abs", "Files/../../evil"])
def test_entry_names_escaping_the_package(srv, signer, cirros, name):
    ns = uid("path")
    data = csar(cirros, signer, add=[(name, b"#!/bin/sh\nrm -rf /\n")])
    assert name in zipfile.ZipFile(io.BytesIO(data)).namelist()
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, name), problems
    nothing_onboarded(srv, ns)


def test_duplicate_entry_names(srv, signer, cirros):
    ns = uid("dupe")
    data = csar(cirros, signer, add=[("Files/ChangeLog.txt", b"1.0.0 2024-01-01: first release\n")])
    assert zipfile.ZipFile(io.BytesIO(data)).namelist().count("Files/ChangeLog.txt") == 2
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, "Files/ChangeLog.txt"), problems
    nothing_onboarded(srv, ns)


def test_encrypted_entry(srv, signer, cirros):
    ns = uid("enc")
    data = set_encrypted(csar(cirros, signer, stored={"Files/ChangeLog.txt"}), "Files/ChangeLog.txt")
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("Files/ChangeLog.txt").flag_bits & 1
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, "Files/ChangeLog.txt"), problems
    nothing_onboarded(srv, ns)


def test_zip_bomb(srv, signer, cirros):
    ns = uid("bomb")
    zeros = bytes(101 << 20)
    data = csar(cirros, signer, files={"Files/zeros.bin": zeros})
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("Files/zeros.bin")
    assert info.file_size // info.compress_size > 200, "more than the default ratio limit of 200:1"
    del zeros
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, "Files/zeros.bin"), problems
    nothing_onboarded(srv, ns)


def test_unsafe_image_inside_a_package(srv, signer, cirros, tmp_path):
    # The images inside a package go through the same inspection as uploads; one unsafe image
    # refuses the whole package, and the images before it are not left behind.
    qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "64M", cwd=tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", cwd=tmp_path)
    top = (tmp_path / "top.qcow2").read_bytes()
    ns = uid("unsafe")
    extra = [vdu("VDU2", "../Files/images/top.qcow2", sw_image_data(top, name="top", version="1.0"))]
    data = csar(cirros, signer, extra_vdus=extra, files={"Files/images/top.qcow2": top})
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    left = items(srv, {"namespace": ns})
    assert any("backing" in p.lower() for p in problems), problems
    assert named(problems, "Files/images/top.qcow2") and left == [], (
        "the findings must name the bad file, and a refused package must leave no entries behind", problems, left)


def test_not_a_zip(srv):
    ns = uid("nozip")
    is_refused(onboard(srv, os.urandom(64 * 1024), {"namespace": ns}))
    is_refused(onboard(srv, b"PK\x03\x04 truncated", {"namespace": ns}))
    nothing_onboarded(srv, ns)


def test_every_problem_is_reported(srv, signer, cirros):
    # Two kinds of problem at once: every one is reported, not just the first.
    ns = uid("many")
    data = csar(cirros, signer, tamper={"Files/ChangeLog.txt": b"changed\n"},
                listed_only={"Files/gone.txt": b"gone\n"})
    problems = is_refused(onboard(srv, data, {"namespace": ns}))
    assert named(problems, "Files/ChangeLog.txt") and named(problems, "Files/gone.txt"), problems
    nothing_onboarded(srv, ns)


def test_zip_without_a_vnfd_is_refused(srv):
    # A zip with no TOSCA-Metadata and no manifest is not a SOL004 package.
    ns = uid("bare")
    data = zip_bytes([("readme.txt", b"hello\n")])
    r = onboard(srv, data, {"namespace": ns})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    is_problem(r, r.status_code)
    nothing_onboarded(srv, ns)
