"""Catalog entries: content pushed through /v2 indexed by type, tag deletes and moves, search
filters, sorted pagination with cursors, PATCH, DELETE, versions and predecessors, and who sees
what with access control."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta

import pytest
import requests

import imserver
from catalogkit import (ADMIN, MT_EMPTY, MT_INDEX, MT_MANIFEST, add_user, api, auth_server, digest, disk,
                        entry, is_problem, items, listing, push_image, push_manifest, rfc3339, uid, upload,
                        uploaded, wait_entry, wait_gone, wait_items)
from csarkit import Signer, csar

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


@pytest.fixture(scope="module")
def srv():
    with imserver.Server() as s:
        yield s


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory):
    """Makes small distinct qcow2 images."""
    d = tmp_path_factory.mktemp("disks")

    def make(virtual="64M", n=4096):
        return disk(d / uid("d"), "qcow2", virtual, os.urandom(n))
    return make


# ----- content pushed through /v2 --------------------------------------------------------------

def test_container_image_is_indexed(srv):
    repo = f"{uid('ci')}/app"
    config = {"architecture": "arm64", "os": "linux", "created": "2024-01-02T03:04:05Z",
              "config": {"Labels": {"org.opencontainers.image.vendor": "acme"}},
              "rootfs": {"type": "layers", "diff_ids": []}}
    pushed = push_image(srv, repo, "1.0", config, [os.urandom(1500), os.urandom(700)])
    e = wait_entry(srv, repo, "1.0")
    assert (e["namespace"], e["name"], e["version"]) == (repo.split("/")[0], "app", "1.0")
    assert (e["type"], e["status"], e["source"]) == ("container-image", "available", "registry")
    assert (e["repository"], e["tag"], e["digest"]) == (repo, "1.0", pushed["digest"])
    assert e["reference"] == f"{repo}:1.0@{pushed['digest']}"
    assert (e["os"], e["architecture"], e["vendor"]) == ("linux", "arm64", "acme")
    assert e["size"] == pushed["size"]
    assert e["details"]["layer_count"] == 2
    assert e.get("checksums") is None and e["disk_format"] is None
    assert e["predecessor"] is None and e["labels"] == {}
    rfc3339(e["created_at"])
    rfc3339(e["updated_at"])
    d = entry(srv, e["id"])
    assert [layer["digest"] for layer in d["details"]["layers"]] == [digest(b) for b in pushed["layers"]]
    assert d["details"]["config_labels"] == {"org.opencontainers.image.vendor": "acme"}
    assert [v["id"] for v in d["versions"]] == [e["id"]]


def test_index_with_two_platforms_is_a_multi_platform_container_image(srv):
    repo = f"{uid('multi')}/app"
    children = []
    for arch in ("amd64", "arm64"):
        children.append((arch, push_image(srv, repo, None, {"architecture": arch, "os": "linux"}, [os.urandom(900)])))
    index = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_MANIFEST, "digest": c["digest"], "size": len(c["manifest"]),
         "platform": {"architecture": arch, "os": "linux"}} for arch, c in children]}).encode()
    d = push_manifest(srv, repo, "2.1", index, MT_INDEX)
    e = wait_entry(srv, repo, "2.1")
    assert e["type"] == "container-image" and e["digest"] == d
    assert e["os"] == "multi"
    platforms = e["details"]["platforms"]
    assert len(platforms) == 2 and {p["architecture"] for p in platforms} == {"amd64", "arm64"}
    assert e["size"] == len(index) + sum(c["size"] for _, c in children)
    # Manifests without a tag are not entries of their own.
    assert [x["id"] for x in items(srv, {"namespace": repo.split("/")[0]})] == [e["id"]]


def test_helm_chart(srv):
    repo = f"{uid('helm')}/charts/nginx"
    chart = {"name": "nginx", "version": "15.1.0", "apiVersion": "v2", "description": "NGINX"}
    pushed = push_image(srv, repo, "15.1.0", chart, [os.urandom(2048)], config_type=HELM_CONFIG, layer_type=HELM_LAYER)
    e = wait_entry(srv, repo, "15.1.0")
    assert e["type"] == "helm-chart" and e["name"] == "charts/nginx" and e["digest"] == pushed["digest"]
    assert e["size"] == pushed["size"]


def test_other_artifact(srv):
    repo = f"{uid('art')}/sbom"
    pushed = push_image(srv, repo, "v1", {}, [b'{"spdxVersion": "SPDX-2.3"}'], config_type=MT_EMPTY,
                        layer_type="application/spdx+json", artifact_type="application/vnd.example.sbom")
    e = wait_entry(srv, repo, "v1")
    assert e["type"] == "artifact" and e["digest"] == pushed["digest"]


def test_docker_schema2_image(srv):
    repo = f"{uid('dkr')}/tool"
    pushed = push_image(srv, repo, "latest", {"architecture": "ppc64le", "os": "linux"}, [os.urandom(400)],
                        config_type="application/vnd.docker.container.image.v1+json",
                        layer_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
                        media_type="application/vnd.docker.distribution.manifest.v2+json")
    e = wait_entry(srv, repo, "latest")
    assert (e["type"], e["architecture"], e["os"]) == ("container-image", "ppc64le", "linux")
    assert e["digest"] == pushed["digest"] and e["size"] == pushed["size"]


def test_referrers_of_an_entry(srv):
    repo = f"{uid('ref')}/app"
    subject = push_image(srv, repo, "1.0")
    e = wait_entry(srv, repo, "1.0")
    sig = push_image(srv, repo, None, {}, [b"signature bytes"], config_type=MT_EMPTY,
                     layer_type="application/vnd.example.signature", artifact_type="application/vnd.example.sig",
                     subject={"mediaType": MT_MANIFEST, "digest": subject["digest"], "size": len(subject["manifest"])})
    refs = entry(srv, e["id"])["referrers"]
    assert [(r["digest"], r["artifactType"]) for r in refs] == [(sig["digest"], "application/vnd.example.sig")]


def test_one_segment_repository(srv):
    repo = uid("solo")
    push_image(srv, repo, "t1")
    e = wait_entry(srv, repo, "t1")
    assert (e["namespace"], e["name"], e["repository"], e["version"]) == (repo, repo, repo, "t1")


def test_deleting_the_tag_removes_the_entry(srv):
    repo = f"{uid('del')}/app"
    pushed = push_image(srv, repo, "gone")
    e = wait_entry(srv, repo, "gone")
    assert requests.delete(f"{srv.url}/v2/{repo}/manifests/gone").status_code == 202
    wait_gone(srv, repo, "gone")
    is_problem(api(srv, "GET", f"/api/v1/images/{e['id']}"), 404, "ENTRY_UNKNOWN")

    # Deleting the manifest by digest removes the entries of every tag pointing at it.
    for tag in ("a", "b"):
        push_manifest(srv, repo, tag, pushed["manifest"])
    wait_items(srv, {"namespace": repo.split("/")[0]}, lambda xs: {x["version"] for x in xs} == {"a", "b"},
               "two tags indexed")
    assert requests.delete(f"{srv.url}/v2/{repo}/manifests/{pushed['digest']}").status_code == 202
    wait_items(srv, {"namespace": repo.split("/")[0]}, lambda xs: xs == [], "both entries removed")


def test_moving_the_tag_updates_the_entry_and_keeps_its_labels(srv):
    repo = f"{uid('mv')}/app"
    first = push_image(srv, repo, "stable", {"architecture": "amd64", "os": "linux"}, [os.urandom(100)])
    e = wait_entry(srv, repo, "stable")
    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", json={"set_labels": {"approved": "yes"},
                                                               "description": "blessed"})
    assert r.status_code == 200, r.text
    second = push_image(srv, repo, "stable", {"architecture": "arm64", "os": "linux"}, [os.urandom(300)])
    assert second["digest"] != first["digest"]
    moved = wait_entry(srv, repo, "stable", lambda x: x["digest"] == second["digest"])
    assert moved["id"] == e["id"]
    assert moved["labels"] == {"approved": "yes"}
    assert moved["architecture"] == "arm64" and moved["size"] == second["size"]
    assert moved["reference"] == f"{repo}:stable@{second['digest']}"


# ----- search --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def population(srv, qcow2, tmp_path_factory):
    """One namespace holding entries of every kind, with known attributes."""
    ns = uid("srch")
    e = {}
    e["alpha1"] = uploaded(srv, qcow2(), [("namespace", ns), ("name", "alpha"), ("version", "1"), ("vendor", "acme"),
                                          ("architecture", "x86_64"), ("label", "env=prod"), ("label", "tier=gold")])
    e["alpha2"] = uploaded(srv, os.urandom(64 * 1024), [("namespace", ns), ("name", "alpha"), ("version", "2"),
                                                        ("vendor", "acme"), ("label", "env=dev")])
    vmdk = disk(tmp_path_factory.mktemp("vmdk") / "b.vmdk", "vmdk", "64M", os.urandom(4096))
    e["beta"] = uploaded(srv, vmdk, [("namespace", ns), ("name", "beta-db"), ("version", "1"), ("vendor", "other"),
                                     ("architecture", "aarch64"), ("label", "env=prod")])
    cfg = {"architecture": "arm64", "os": "linux", "config": {"Labels": {"org.opencontainers.image.vendor": "acme"}}}
    push_image(srv, f"{ns}/web", "1.0", cfg, [os.urandom(5000)])
    push_image(srv, f"{ns}/webtool", "2.0", {"architecture": "amd64", "os": "windows"}, [os.urandom(200)])
    push_image(srv, f"{ns}/zz/webxui", "3", {"architecture": "riscv64", "os": "linux"}, [os.urandom(250)])
    push_image(srv, f"{ns}/web_ui", "3", {"architecture": "riscv64", "os": "linux"}, [os.urandom(260)])
    push_image(srv, f"{ns}/chart", "0.1.0", {"name": "chart", "version": "0.1.0"}, [os.urandom(300)],
               config_type=HELM_CONFIG, layer_type=HELM_LAYER)
    found = wait_items(srv, {"namespace": ns}, lambda xs: len(xs) == 8, "the population indexed")
    by_name = {(x["name"], x["version"]): x for x in found}
    e["web"], e["webtool"], e["chart"] = by_name[("web", "1.0")], by_name[("webtool", "2.0")], by_name[("chart", "0.1.0")]
    e["webxui"], e["web_ui"] = by_name[("zz/webxui", "3")], by_name[("web_ui", "3")]
    r = api(srv, "PATCH", f"/api/v1/images/{e['alpha2']['id']}", json={"status": "deprecated"})
    assert r.status_code == 200, r.text
    e["alpha2"] = r.json()
    return ns, e


SEARCHES = [
    ({"q": "web"}, {"web", "webtool", "webxui", "web_ui"}),
    ({"q": "b_u"}, {"web_ui"}),
    ({"q": "%"}, set()),
    ({"name_prefix": "web_"}, {"web_ui"}),
    ({"q": "lph"}, {"alpha1", "alpha2"}),
    ({"name": "web"}, {"web"}),
    ({"name_prefix": "be"}, {"beta"}),
    ({"name_prefix": "web"}, {"web", "webtool", "web_ui"}),
    ({"name_prefix": "zz/"}, {"webxui"}),
    ({"version": "1"}, {"alpha1", "beta"}),
    ({"type": "vm-image"}, {"alpha1", "alpha2", "beta"}),
    ({"type": "container-image"}, {"web", "webtool", "webxui", "web_ui"}),
    ({"type": "helm-chart"}, {"chart"}),
    ({"type": "vnf-package"}, set()),
    ({"status": "deprecated"}, {"alpha2"}),
    ({"status": "available"}, {"alpha1", "beta", "web", "webtool", "chart", "webxui", "web_ui"}),
    ({"vendor": "acme"}, {"alpha1", "alpha2", "web"}),
    ({"os": "windows"}, {"webtool"}),
    ({"architecture": "arm64"}, {"web"}),
    ({"architecture": "riscv64", "os": "linux"}, {"webxui", "web_ui"}),
    ({"architecture": "aarch64"}, {"beta"}),
    ({"disk_format": "vmdk"}, {"beta"}),
    ({"disk_format": "raw"}, {"alpha2"}),
    ({"label": "env=prod"}, {"alpha1", "beta"}),
    ({"label": "tier"}, {"alpha1"}),
    ({"label": ["env=prod", "tier=gold"]}, {"alpha1"}),
    ({"label": ["env=prod", "tier=silver"]}, set()),
    ({"label": "env"}, {"alpha1", "alpha2", "beta"}),
    ({"vendor": "acme", "type": "vm-image", "status": "available"}, {"alpha1"}),
]


@pytest.mark.parametrize("params,expected", SEARCHES, ids=[json.dumps(p) for p, _ in SEARCHES])
def test_search_filters(srv, population, params, expected):
    ns, e = population
    got = {x["id"] for x in items(srv, {"namespace": ns, **params})}
    assert got == {e[k]["id"] for k in expected}, {k: v["id"] for k, v in e.items()}


def test_size_and_time_filters(srv, population):
    ns, e = population
    entries = items(srv, {"namespace": ns, "limit": 1000})
    sizes = sorted({x["size"] for x in entries})
    assert len(sizes) >= 4
    mid = sizes[len(sizes) // 2]
    ids = lambda params: {x["id"] for x in items(srv, {"namespace": ns, **params})}  # noqa: E731
    assert ids({"min_size": mid}) == {x["id"] for x in entries if x["size"] >= mid}
    assert ids({"max_size": mid - 1}) == {x["id"] for x in entries if x["size"] < mid}
    assert ids({"min_size": sizes[1], "max_size": sizes[-2]}) == \
        {x["id"] for x in entries if sizes[1] <= x["size"] <= sizes[-2]}
    assert ids({"min_size": sizes[-1] + 1}) == set()

    assert ids({"created_after": "1990-01-01T00:00:00Z", "created_before": "2100-01-01T00:00:00Z"}) == \
        {x["id"] for x in entries}
    assert ids({"created_after": "2100-01-01T00:00:00Z"}) == set()
    assert ids({"created_before": "1990-01-01T00:00:00+02:00"}) == set()
    # A time strictly between two entries' creation times splits them.
    times = sorted({rfc3339(x["created_at"]) for x in entries})
    gaps = [(b - a, a, b) for a, b in zip(times, times[1:]) if b - a >= timedelta(milliseconds=4)]
    assert gaps, times
    _, a, b = max(gaps)
    cut = a + (b - a) / 2
    cut = cut.replace(microsecond=cut.microsecond // 1000 * 1000)
    stamp = cut.isoformat().replace("+00:00", "Z")
    assert ids({"created_after": stamp}) == {x["id"] for x in entries if rfc3339(x["created_at"]) > cut}
    assert ids({"created_before": stamp}) == {x["id"] for x in entries if rfc3339(x["created_at"]) < cut}


BAD_QUERIES = [
    {"type": "vm"}, {"sort": "colour"}, {"sort": "-"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"},
    {"min_size": "-1"}, {"max_size": "big"}, {"created_after": "yesterday"}, {"created_before": "2024-13-01T00:00:00Z"},
    {"cursor": "not-a-cursor"}, {"colour": "red"},
]


@pytest.mark.parametrize("params", BAD_QUERIES, ids=[json.dumps(p) for p in BAD_QUERIES])
def test_bad_search_parameters_are_400(srv, params):
    is_problem(api(srv, "GET", "/api/v1/images", params=params), 400)


# ----- pagination ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pages(srv):
    """23 container images with ties in name, size and config creation time."""
    ns = uid("page")
    n = 0
    for name in ("aa", "bb", "cc", "dd"):
        for v in range(6 if name != "dd" else 5):
            created = ["2021-05-05T05:05:05Z", "2023-03-03T03:03:03Z"][n % 2]
            cfg = {"architecture": "amd64", "os": "linux", "created": created, "n": uid("x")}
            layer = (b"%06d" % n) * (100 if n % 3 else 50)
            push_image(srv, f"{ns}/{name}", f"{v}.0", cfg, [layer])
            n += 1
    found = wait_items(srv, {"namespace": ns}, lambda xs: len(xs) == 23, "23 entries indexed")
    assert len({x["size"] for x in found}) < 23, "sizes must tie for the test to mean something"
    return ns, found


def walk(srv, params) -> tuple[list[dict], int]:
    """All pages via next_cursor: (items in order, number of pages)."""
    out, n, params = [], 0, dict(params)
    while True:
        r = api(srv, "GET", "/api/v1/images", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        n += 1
        assert len(page["items"]) <= params["limit"]
        out += page["items"]
        if page["next_cursor"] is None:
            assert "next" not in r.headers.get("Link", ""), r.headers.get("Link")
            return out, n
        assert page["items"], "a page with a next cursor is not empty"
        assert 'rel="next"' in r.headers["Link"]
        params["cursor"] = page["next_cursor"]


def walk_links(srv, first_url: str) -> list[dict]:
    out, url = [], first_url
    while url:
        r = requests.get(url, timeout=60)
        assert r.status_code == 200, r.text
        out += r.json()["items"]
        m = re.search(r'<([^>]+)>;\s*rel="next"', r.headers.get("Link", ""))
        url = (srv.url + m.group(1) if m.group(1).startswith("/") else m.group(1)) if m else None
    return out


ORDER = {
    "name": lambda x: x["name"],
    "created": lambda x: rfc3339(x["created_at"]),
    "size": lambda x: x["size"],
}


@pytest.mark.parametrize("sort", [None, "name", "-name", "created", "-created", "size", "-size"])
def test_pagination_visits_every_entry_exactly_once(srv, pages, sort):
    ns, found = pages
    base = {"namespace": ns, **({"sort": sort} if sort else {})}
    whole = listing(srv, {**base, "limit": 1000})
    assert whole["next_cursor"] is None and len(whole["items"]) == 23
    paged, n = walk(srv, {**base, "limit": 5})
    assert n in (5, 6), n
    assert [x["id"] for x in paged] == [x["id"] for x in whole["items"]]
    assert len({x["id"] for x in paged}) == 23 and {x["id"] for x in paged} == {x["id"] for x in found}
    if sort:
        key = ORDER[sort.lstrip("-")]
        keys = [key(x) for x in paged]
        assert keys == sorted(keys, reverse=sort.startswith("-")), keys
    # Following the Link headers gives the same sequence.
    qs = requests.compat.urlencode({**base, "limit": 4})
    assert [x["id"] for x in walk_links(srv, f"{srv.url}/api/v1/images?{qs}")] == [x["id"] for x in paged]
    # A page size of one: still every entry once.
    single, n = walk(srv, {**base, "limit": 1})
    assert [x["id"] for x in single] == [x["id"] for x in paged] and n in (23, 24)


def test_cursor_belongs_to_its_sort_order(srv, pages):
    ns, _ = pages
    page = listing(srv, {"namespace": ns, "sort": "name", "limit": 3})
    assert page["next_cursor"]
    is_problem(api(srv, "GET", "/api/v1/images", params={"namespace": ns, "sort": "size", "limit": 3,
                                                         "cursor": page["next_cursor"]}), 400)
    is_problem(api(srv, "GET", "/api/v1/images", params={"namespace": ns, "sort": "name", "limit": 3,
                                                         "cursor": page["next_cursor"][:-3] + "!!!"}), 400)


# ----- PATCH, DELETE, versions -------------------------------------------------------------

def test_patch_changes_what_maintainers_may_change(srv, qcow2):
    ns = uid("patch")
    e = uploaded(srv, qcow2(), [("namespace", ns), ("name", "img"), ("version", "1"), ("description", "old"),
                                ("label", "a=1"), ("label", "b=2")])
    change = {"status": "deprecated", "description": "new", "set_labels": {"a": "10", "c": "3", "b": None},
              "min_disk": 10 << 30, "min_ram": 2 << 30, "os_type": "linux", "os_distro": "alpine",
              "os_version": "3.19", "architecture": "aarch64", "vendor": "Acme"}
    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", json=change)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["id"] == e["id"] and p["digest"] == e["digest"]
    assert (p["status"], p["description"], p["vendor"], p["architecture"]) == ("deprecated", "new", "Acme", "aarch64")
    assert p["labels"] == {"a": "10", "c": "3"}
    vm = p["details"]["vm"]
    assert (vm["min_disk"], vm["min_ram"]) == (10 << 30, 2 << 30)
    assert (vm["os_type"], vm["os_distro"], vm["os_version"]) == ("linux", "alpine", "3.19")
    assert vm["checksums"] == e["details"]["vm"]["checksums"]
    assert rfc3339(p["updated_at"]) > rfc3339(e["updated_at"]), "a change advances updated_at"
    assert rfc3339(p["created_at"]) == rfc3339(e["created_at"])
    got = entry(srv, e["id"])
    for k in ("status", "description", "labels", "vendor", "architecture", "details"):
        assert got[k] == p[k], k
    assert [x["id"] for x in items(srv, {"namespace": ns, "status": "deprecated", "label": "c=3"})] == [e["id"]]

    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", json={"labels": {"only": "this"}, "status": "available"})
    assert r.status_code == 200 and r.json()["labels"] == {"only": "this"} and r.json()["status"] == "available"
    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", json={"status": "quarantined"})
    assert r.status_code == 200 and entry(srv, e["id"])["status"] == "quarantined"


@pytest.mark.parametrize("body", [
    {"colour": "red"}, {"status": "uploading"}, {"status": "validating"}, {"status": "bogus"},
    {"labels": "env=prod"}, {"min_disk": "lots"}, {"min_disk": -1}, {"labels": {"bad key!": "x"}},
], ids=lambda b: json.dumps(b))
def test_patch_refuses_invalid_changes(srv, qcow2, body):
    ns = uid("pbad")
    e = uploaded(srv, qcow2(), {"namespace": ns, "name": "img", "version": "1", "label": "k=v"})
    before = entry(srv, e["id"])
    is_problem(api(srv, "PATCH", f"/api/v1/images/{e['id']}", json=body), 400)
    after = entry(srv, e["id"])
    assert after == before


def test_patch_vm_fields_on_other_types_and_unknown_ids(srv):
    repo = f"{uid('pct')}/app"
    push_image(srv, repo, "1")
    e = wait_entry(srv, repo, "1")
    for body in ({"min_disk": 1 << 30}, {"min_ram": 1 << 30}, {"os_distro": "alpine"}, {"os_version": "3"}):
        is_problem(api(srv, "PATCH", f"/api/v1/images/{e['id']}", json=body), 400)
    assert entry(srv, e["id"])["details"] == e["details"]
    # What applies to every type is accepted.
    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", json={"status": "quarantined", "description": "cve",
                                                               "labels": {"cve": "CVE-2024-0001"}})
    assert r.status_code == 200 and r.json()["status"] == "quarantined" and r.json()["labels"] == {"cve": "CVE-2024-0001"}
    r = api(srv, "PATCH", f"/api/v1/images/{e['id']}", data="{nope", headers={"Content-Type": "application/json"})
    is_problem(r, 400)
    is_problem(api(srv, "PATCH", "/api/v1/images/0123456789abcdef0123456789abcdef", json={"status": "available"}),
               404, "ENTRY_UNKNOWN")
    is_problem(api(srv, "GET", "/api/v1/images/0123456789abcdef0123456789abcdef"), 404, "ENTRY_UNKNOWN")
    is_problem(api(srv, "DELETE", "/api/v1/images/0123456789abcdef0123456789abcdef"), 404, "ENTRY_UNKNOWN")


def test_delete_removes_the_entry_and_its_tag(srv, qcow2):
    ns = uid("rm")
    data = qcow2()
    e = uploaded(srv, data, {"namespace": ns, "name": "img", "version": "1"})
    keep = uploaded(srv, data, {"namespace": ns, "name": "img", "version": "2"})
    assert api(srv, "DELETE", f"/api/v1/images/{e['id']}").status_code == 204
    is_problem(api(srv, "GET", f"/api/v1/images/{e['id']}"), 404, "ENTRY_UNKNOWN")
    assert requests.get(f"{srv.url}/v2/{ns}/img/manifests/1").status_code == 404
    assert [x["id"] for x in items(srv, {"namespace": ns})] == [keep["id"]]
    assert requests.get(f"{srv.url}/v2/{ns}/img/manifests/2").status_code == 200
    is_problem(api(srv, "DELETE", f"/api/v1/images/{e['id']}"), 404, "ENTRY_UNKNOWN")
    # The version can be uploaded again afterwards.
    again = uploaded(srv, data, {"namespace": ns, "name": "img", "version": "1"})
    assert again["id"] != e["id"]

    # Deleting the tag of an uploaded image through /v2 removes its entry too.
    assert requests.delete(f"{srv.url}/v2/{ns}/img/manifests/2").status_code == 202
    wait_gone(srv, f"{ns}/img", "2")
    is_problem(api(srv, "GET", f"/api/v1/images/{keep['id']}"), 404, "ENTRY_UNKNOWN")

    # An entry of content pushed through /v2: its tag goes, and the entry does not come back.
    repo = f"{ns}/pushed"
    push_image(srv, repo, "a")
    pushed = wait_entry(srv, repo, "a")
    assert api(srv, "DELETE", f"/api/v1/images/{pushed['id']}").status_code == 204
    assert requests.get(f"{srv.url}/v2/{repo}/manifests/a").status_code == 404
    push_image(srv, repo, "b")
    wait_entry(srv, repo, "b")  # indexed after the delete: the indexer has seen everything before it
    assert [x["version"] for x in items(srv, {"namespace": ns, "name": "pushed"})] == ["b"]


def test_versions_and_predecessors(srv, qcow2):
    ns = uid("ver")
    v = [uploaded(srv, qcow2(), {"namespace": ns, "name": "img", "version": ver}) for ver in ("1.0", "1.1", "2.0")]
    other = uploaded(srv, qcow2(), {"namespace": ns, "name": "other", "version": "1.0"})
    assert [x["predecessor"] for x in v] == [None, v[0]["id"], v[1]["id"]]
    assert other["predecessor"] is None
    assert api(srv, "PATCH", f"/api/v1/images/{v[1]['id']}", json={"status": "deprecated"}).status_code == 200
    want = [(v[0]["id"], "1.0", "available"), (v[1]["id"], "1.1", "deprecated"), (v[2]["id"], "2.0", "available")]
    for x in v:
        d = entry(srv, x["id"])
        assert [(y["id"], y["version"], y["status"]) for y in d["versions"]] == want
        assert [rfc3339(y["created_at"]) for y in d["versions"]] == [rfc3339(y["created_at"]) for y in v]
    assert [(y["id"], y["version"]) for y in entry(srv, other["id"])["versions"]] == [(other["id"], "1.0")]

    # Tags pushed through /v2 chain the same way.
    repo = f"{ns}/pushed"
    push_image(srv, repo, "1")
    first = wait_entry(srv, repo, "1")
    push_image(srv, repo, "2")
    second = wait_entry(srv, repo, "2")
    assert first["predecessor"] is None and second["predecessor"] == first["id"]
    assert [y["version"] for y in entry(srv, second["id"])["versions"]] == ["1", "2"]


# ----- access control --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acl(tmp_path_factory):
    """A server with --auth token: namespaces A (members reader, writer, maintainer), B (no
    members) and P (public), each with a VM image; A also with a pushed container image."""
    s = auth_server()
    try:
        a, b, p = uid("nsa"), uid("nsb"), uid("pub")
        users = {"reader": add_user(s, "reader", a, "reader"), "writer": add_user(s, "writer", a, "writer"),
                 "maintainer": add_user(s, "maintainer", a, "maintainer"), "outsider": add_user(s, "outsider")}
        assert api(s, "PUT", f"/api/v1/admin/namespaces/{p}/visibility", auth=ADMIN,
                   json={"public": True}).status_code == 200
        d = tmp_path_factory.mktemp("acl")
        ents = {}
        for ns in (a, b, p):
            img = disk(d / ns, "qcow2", "64M", os.urandom(4096))
            ents[ns] = uploaded(s, img, {"namespace": ns, "name": "img", "version": "1"}, auth=ADMIN)
        push_image(s, f"{a}/app", "1", auth=ADMIN)
        ents["a-app"] = wait_entry(s, f"{a}/app", "1", auth=ADMIN)
        yield {"srv": s, "a": a, "b": b, "p": p, "users": users, "entries": ents, "dir": d}
    finally:
        s.close()


def test_anonymous_callers_see_public_namespaces_only(acl):
    s, a, p, ents = acl["srv"], acl["a"], acl["p"], acl["entries"]
    anon = items(s)
    assert {x["namespace"] for x in anon} == {p}
    assert [x["id"] for x in anon] == [ents[p]["id"]]
    assert entry(s, ents[p]["id"])["namespace"] == p
    r = api(s, "GET", f"/api/v1/images/{ents[a]['id']}")
    is_problem(r, r.status_code)
    assert r.status_code in (401, 404), r.status_code
    r = upload(s, b"\0" * 4096, {"namespace": p, "name": "anon", "version": "1"})
    is_problem(r, 401)
    assert r.headers["WWW-Authenticate"].lower().startswith("basic")
    is_problem(api(s, "PATCH", f"/api/v1/images/{ents[p]['id']}", json={"status": "deprecated"}), 401)
    is_problem(api(s, "DELETE", f"/api/v1/images/{ents[p]['id']}"), 401)
    is_problem(api(s, "GET", "/api/v1/images", auth=("reader", "wrong-password")), 401)
    assert entry(s, ents[p]["id"])["status"] == "available"
    # Made private, the namespace disappears from anonymous listings; public again, it is back.
    assert api(s, "PUT", f"/api/v1/admin/namespaces/{p}/visibility", auth=ADMIN, json={"public": False}).ok
    try:
        r = api(s, "GET", "/api/v1/images")
        if r.status_code == 401:
            is_problem(r, 401)
        else:
            assert r.status_code == 200 and r.json()["items"] == [], r.text
        r = api(s, "GET", f"/api/v1/images/{ents[p]['id']}")
        assert r.status_code in (401, 404), r.status_code
    finally:
        assert api(s, "PUT", f"/api/v1/admin/namespaces/{p}/visibility", auth=ADMIN, json={"public": True}).ok
    assert [x["id"] for x in items(s)] == [ents[p]["id"]]


def test_readers_see_their_namespaces_only(acl):
    s, a, b, p, ents, users = acl["srv"], acl["a"], acl["b"], acl["p"], acl["entries"], acl["users"]
    seen = items(s, auth=users["reader"])
    assert {ents[a]["id"], ents["a-app"]["id"]} <= {x["id"] for x in seen}
    assert {x["namespace"] for x in seen} <= {a, p} and b not in {x["namespace"] for x in seen}
    assert items(s, {"namespace": b}, auth=users["reader"]) == []
    assert entry(s, ents[a]["id"], auth=users["reader"])["id"] == ents[a]["id"]
    is_problem(api(s, "GET", f"/api/v1/images/{ents[b]['id']}", auth=users["reader"]), 404, "ENTRY_UNKNOWN")
    out = items(s, auth=users["outsider"])
    assert {x["namespace"] for x in out} <= {p}
    is_problem(api(s, "GET", f"/api/v1/images/{ents[a]['id']}", auth=users["outsider"]), 404, "ENTRY_UNKNOWN")
    # The admin sees everything.
    assert {a, b, p} <= {x["namespace"] for x in items(s, auth=ADMIN)}


def test_roles_for_upload_patch_and_delete(acl):
    s, a, b, ents, users = acl["srv"], acl["a"], acl["b"], acl["entries"], acl["users"]
    img = disk(acl["dir"] / "roles", "qcow2", "64M", os.urandom(4096))
    is_problem(upload(s, img, {"namespace": a, "name": "new", "version": "1"}, auth=users["reader"]), 403)
    is_problem(upload(s, img, {"namespace": b, "name": "new", "version": "1"}, auth=users["writer"]), 403)
    assert items(s, {"namespace": a, "name": "new"}, auth=ADMIN) == []
    mine = uploaded(s, img, {"namespace": a, "name": "new", "version": "1"}, auth=users["writer"])
    assert mine["namespace"] == a

    is_problem(api(s, "PATCH", f"/api/v1/images/{mine['id']}", auth=users["reader"], json={"description": "x"}), 403)
    is_problem(api(s, "PATCH", f"/api/v1/images/{mine['id']}", auth=users["writer"], json={"description": "x"}), 403)
    is_problem(api(s, "DELETE", f"/api/v1/images/{mine['id']}", auth=users["writer"]), 403)
    assert entry(s, mine["id"], auth=ADMIN)["description"] is None
    r = api(s, "PATCH", f"/api/v1/images/{mine['id']}", auth=users["maintainer"], json={"description": "ok"})
    assert r.status_code == 200 and r.json()["description"] == "ok"
    assert api(s, "DELETE", f"/api/v1/images/{mine['id']}", auth=users["maintainer"]).status_code == 204
    is_problem(api(s, "GET", f"/api/v1/images/{mine['id']}", auth=ADMIN), 404, "ENTRY_UNKNOWN")
    # A maintainer of A has no say over B (it cannot even see it).
    is_problem(api(s, "DELETE", f"/api/v1/images/{ents[b]['id']}", auth=users["maintainer"]), 404, "ENTRY_UNKNOWN")
    assert entry(s, ents[b]["id"], auth=ADMIN)["id"] == ents[b]["id"]


def test_package_onboarding_needs_push(acl):
    s, a, users = acl["srv"], acl["a"], acl["users"]
    signer = Signer.create(acl["dir"])
    image = disk(acl["dir"] / "pkgimg", "qcow2", "64M", os.urandom(4096))
    data = csar(image, signer)
    r = api(s, "POST", "/api/v1/packages", auth=users["reader"], params={"namespace": a}, data=data,
            headers={"Content-Type": "application/zip"})
    is_problem(r, 403)
    r = api(s, "POST", "/api/v1/packages", params={"namespace": a}, data=data, headers={"Content-Type": "application/zip"})
    is_problem(r, 401)
    assert items(s, {"namespace": a, "type": "vnf-package"}, auth=ADMIN) == []
    r = api(s, "POST", "/api/v1/packages", auth=users["writer"], params={"namespace": a}, data=data,
            headers={"Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "vnf-package"
