"""Distribution to a real OpenStack Glance 33 (tests/pysupport/glance.py starts it on loopback,
without Keystone here; test_keystone.py runs the Keystone mode): push and web-download, what
the Glance image carries, idempotence, verification of a corrupt copy, a server killed
mid-transfer, cancel, a version swap under one name, un-distribution, and the inventory."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest
import requests

import imserver
from catalogkit import disk, is_problem
from distkit import (ManglingProxy, api, distribute, glance_image, glance_images, glance_vim, job, poll, register,
                     target, uid, vm_image, wait_job)
from glance import Glance

MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture(scope="module")
def glance():
    with Glance(mode="noauth") as g:
        yield g


@pytest.fixture
def srv():
    with imserver.Server(env={"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "200",
                              "IMAGE_MANAGER_DISTRIBUTION__RETRY_BASE_MS": "200"}) as s:
        yield s


def named(glance, name: str) -> list[dict]:
    return glance_images(glance, name=name)


def test_vim_registry_keeps_secrets_and_validates(srv, glance):
    v = glance_vim(srv, glance, labels={"region": "r1", "site": "edge"})
    assert v["type"] == "openstack" and v["settings"]["glance_url"] == glance.endpoint
    assert v["labels"] == {"region": "r1", "site": "edge"} and v["secrets"] == []
    # Keystone VIMs: the password is sealed, never shown, never stored in clear.
    secret = "s3cret-" + uid()
    k = register(srv, {"name": uid("ks-"), "type": "openstack", "auth_url": "http://127.0.0.1:9/v3",
                       "region": "RegionOne", "project": "demo", "username": "demo", "password": secret})
    assert k["secrets"] == ["password"] and secret not in str(k)
    listed = api(srv, "GET", "/api/v1/vims").json()["vims"]
    assert {x["id"] for x in listed} >= {v["id"], k["id"]} and secret not in str(listed)
    db = os.path.join(srv.data_dir, "metadata.db")
    if os.path.exists(db):
        for f in os.listdir(srv.data_dir):
            if f.startswith("metadata.db"):
                assert secret.encode() not in open(os.path.join(srv.data_dir, f), "rb").read(), f
    assert secret not in srv.log()
    # Updates merge; a secret given replaces, the type cannot change, unknown fields are refused.
    r = api(srv, "PATCH", f"/api/v1/vims/{k['id']}", json={"labels": {"region": "r2"}, "region": None})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"region": "r2"} and "region" not in r.json()["settings"]
    assert r.json()["secrets"] == ["password"]
    is_problem(api(srv, "PATCH", f"/api/v1/vims/{k['id']}", json={"type": "oci-registry"}), 400)
    is_problem(api(srv, "POST", "/api/v1/vims", json={"name": "x", "type": "openstack", "glance_url": "x",
                                                      "passwd": "typo"}), 400)
    is_problem(api(srv, "POST", "/api/v1/vims", json={"name": "x", "type": "openstack"}), 400)
    is_problem(api(srv, "POST", "/api/v1/vims", json={"name": "x", "type": "oci-registry",
                                                      "url": "https://u:p@registry.example"}), 400)
    is_problem(api(srv, "POST", "/api/v1/vims", json={"name": v["name"], "type": "openstack",
                                                      "glance_url": glance.endpoint}), 409)
    # Health: the real Glance answers; a closed port is unreachable, and says why.
    r = api(srv, "POST", f"/api/v1/vims/{v['id']}/test")
    assert r.status_code == 200 and r.json()["health"]["state"] == "ok", r.text
    assert "web-download" in r.json()["health"]["import_methods"], r.json()
    dead = register(srv, {"name": uid("dead-"), "type": "openstack", "glance_url": f"http://127.0.0.1:{imserver.free_port()}"})
    h = api(srv, "POST", f"/api/v1/vims/{dead['id']}/test").json()["health"]
    assert h["state"] == "unreachable" and h["error"], h
    # Selectors, removal, audit.
    sel = api(srv, "GET", "/api/v1/vims", params={"selector": "site=edge"}).json()["vims"]
    assert [x["id"] for x in sel] == [v["id"]]
    assert api(srv, "DELETE", f"/api/v1/vims/{dead['id']}").status_code == 204
    is_problem(api(srv, "GET", f"/api/v1/vims/{dead['id']}"), 404)
    actions = [a["action"] for a in api(srv, "GET", "/api/v1/admin/audit").json()]
    assert {"vim.register", "vim.update", "vim.test", "vim.remove"} <= set(actions), actions


def test_push_sets_what_nova_and_heat_expect_and_is_idempotent(srv, glance, tmp_path):
    name = uid("cirros-")
    e, blob = vm_image(srv, tmp_path, name, "0.6.2", min_disk=2 * GIB + 1, min_ram=512 * MIB,
                       os_type="linux", os_distro="cirros", architecture="x86_64")
    v = glance_vim(srv, glance)
    j = wait_job(srv, distribute(srv, [e["id"]], [v["id"]], "push")["id"])
    t = target(j)
    assert (j["state"], t["state"], t["skipped"], t["method"]) == ("active", "active", False, "push"), j
    assert t["bytes_done"] == t["bytes_total"] == len(blob) and t["attempts"] == 1, t
    img = glance_image(glance, t["remote_id"])
    assert img["name"] == name and img["status"] == "active"
    assert (img["disk_format"], img["container_format"]) == ("qcow2", "bare")
    assert (img["min_disk"], img["min_ram"]) == (3, 512), img
    assert img["size"] == len(blob)
    assert img["os_hash_algo"] == "sha512" and img["os_hash_value"] == hashlib.sha512(blob).hexdigest()
    assert img["checksum"] == hashlib.md5(blob).hexdigest()
    assert img["im_entry_id"] == e["id"] and img["im_digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert (img["architecture"], img["os_type"], img["os_distro"]) == ("x86_64", "linux", "cirros")
    assert img["im_version"] == "0.6.2" and "image-manager" in img["tags"]
    assert [i["id"] for i in named(glance, name)] == [img["id"]]
    # Where is it: one call each way.
    held = api(srv, "GET", f"/api/v1/images/{e['id']}/vims").json()["vims"]
    assert [(h["vim_id"], h["remote_id"]) for h in held] == [(v["id"], img["id"])]
    inv = api(srv, "GET", f"/api/v1/vims/{v['id']}/images").json()
    assert img["id"] in [i["remote_id"] for i in inv["known"]]
    # The catalog search filters by VIM (id or name); another VIM holds nothing of it.
    other = glance_vim(srv, glance)
    for key in (v["id"], v["name"]):
        found = api(srv, "GET", "/api/v1/images", params={"vim": key, "name": name}).json()["items"]
        assert [i["id"] for i in found] == [e["id"]], found
    assert api(srv, "GET", "/api/v1/images", params={"vim": other["id"]}).json()["items"] == []
    is_problem(api(srv, "GET", "/api/v1/images", params={"vim": "no-such-vim"}), 404)
    # Again: Glance already holds the bytes under the name, so nothing is sent.
    again = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]], "auto")["id"]))
    assert (again["state"], again["skipped"], again["remote_id"], again["bytes_done"]) == ("active", True, img["id"], 0)
    assert [i["id"] for i in named(glance, name)] == [img["id"]]


def test_web_download_from_our_signed_link(srv, glance, tmp_path):
    name = uid("wd-")
    e, blob = vm_image(srv, tmp_path, name)
    v = glance_vim(srv, glance, download_url=srv.url)
    t = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]], "auto")["id"]))
    assert (t["state"], t["method"]) == ("active", "web-download"), t
    img = glance_image(glance, t["remote_id"])
    assert img["os_hash_value"] == hashlib.sha512(blob).hexdigest() and img["name"] == name
    # A forged or truncated token is refused.
    is_problem(api(srv, "GET", "/dl/eyJyIjoieCJ9.AAAA"), 403)
    is_problem(api(srv, "GET", "/dl/garbage"), 403)


def test_a_corrupt_copy_is_caught_deleted_and_redone(srv, glance, tmp_path):
    name = uid("bad-")
    e, blob = vm_image(srv, tmp_path, name)
    proxy = ManglingProxy(srv.url)
    try:
        v = glance_vim(srv, glance, download_url=proxy.url)
        t = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]], "web-download")["id"]))
    finally:
        proxy.close()
    # The corrupt copy failed verification: one attempt more at least (a loaded Glance may
    # add a transient failure of its own).
    assert t["state"] == "active" and t["attempts"] >= 2, t
    assert proxy.gets >= 2
    ours = [i for i in glance_images(glance) if i.get("im_entry_id") == e["id"]]
    assert [i["id"] for i in ours] == [t["remote_id"]], ours
    assert ours[0]["os_hash_value"] == hashlib.sha512(blob).hexdigest()


def test_a_server_killed_mid_transfer_finishes_after_restart(glance, tmp_path):
    env = {"IMAGE_MANAGER_JOBS__LEASE_TTL_SECS": "2", "IMAGE_MANAGER_JOBS__HEARTBEAT_SECS": "1",
           "IMAGE_MANAGER_JOBS__POLL_INTERVAL_MS": "200", "IMAGE_MANAGER_DISTRIBUTION__RETRY_BASE_MS": "200"}
    with imserver.Server(env=env) as s:
        name = uid("kill-")
        e, blob = vm_image(s, tmp_path, name, data=os.urandom(12 * MIB), virtual="32M")
        # 2 MiB/s to this VIM: the transfer takes seconds, long enough to kill it midway.
        v = glance_vim(s, glance, max_bytes_per_sec=2 * MIB)
        jid = distribute(s, [e["id"]], [v["id"]], "push")["id"]
        poll(lambda: target(job(s, jid))["bytes_done"] > 0, timeout=60, what="the transfer to start")
        assert target(job(s, jid))["state"] == "transferring"
        s.stop(signal.SIGKILL)
        s.start()
        t = target(wait_job(s, jid, timeout=180))
    assert t["state"] == "active" and t["attempts"] >= 2, t
    imgs = named(glance, name)
    assert [i["id"] for i in imgs] == [t["remote_id"]], imgs
    assert imgs[0]["os_hash_value"] == hashlib.sha512(blob).hexdigest() and imgs[0]["size"] == len(blob)
    leftovers = [i for i in glance_images(glance) if i.get("im_entry_id") == e["id"] and i["id"] != t["remote_id"]]
    assert leftovers == [], leftovers


def test_cancel_stops_a_transfer_and_leaves_nothing(srv, glance, tmp_path):
    name = uid("cancel-")
    e, _ = vm_image(srv, tmp_path, name, data=os.urandom(12 * MIB), virtual="32M")
    v = glance_vim(srv, glance, max_bytes_per_sec=MIB)
    jid = distribute(srv, [e["id"]], [v["id"]], "push")["id"]
    poll(lambda: target(job(srv, jid))["bytes_done"] > 0, timeout=60, what="the transfer to start")
    r = api(srv, "POST", f"/api/v1/distributions/{jid}/cancel", params={"vim": v["id"]})
    assert r.status_code == 200, r.text
    t = target(wait_job(srv, jid))
    assert t["state"] == "cancelled", t
    poll(lambda: not [i for i in glance_images(glance) if i.get("im_entry_id") == e["id"]], timeout=30,
         what="the half image to be deleted")
    # Retry runs it again from the start, to the end.
    assert api(srv, "POST", f"/api/v1/distributions/{jid}/retry").status_code == 200
    # Limits changed on the VIM apply to the transfers that start after.
    api(srv, "PATCH", f"/api/v1/vims/{v['id']}", json={"max_bytes_per_sec": None})
    t = target(wait_job(srv, jid, timeout=120))
    assert t["state"] == "active", t


def test_a_new_version_replaces_the_old_under_one_name(srv, glance, tmp_path):
    name = uid("swap-")
    v1, _ = vm_image(srv, tmp_path, name, "1")
    v2, blob2 = vm_image(srv, tmp_path, name, "2")
    vim = glance_vim(srv, glance)
    t1 = target(wait_job(srv, distribute(srv, [v1["id"]], [vim["id"]])["id"]))
    t2 = target(wait_job(srv, distribute(srv, [v2["id"]], [vim["id"]], on_replace="hide")["id"]))
    assert t1["state"] == t2["state"] == "active" and t1["remote_id"] != t2["remote_id"]
    visible = named(glance, name)
    assert [(i["id"], i["im_version"]) for i in visible] == [(t2["remote_id"], "2")], visible
    old = glance_image(glance, t1["remote_id"])
    assert old["os_hidden"] is True and old["name"] == f"{name} (1)", old
    # on_replace=delete: the replaced image goes.
    v3, _ = vm_image(srv, tmp_path, name, "3")
    t3 = target(wait_job(srv, distribute(srv, [v3["id"]], [vim["id"]], on_replace="delete")["id"]))
    assert [i["id"] for i in named(glance, name)] == [t3["remote_id"]]
    assert requests.get(f"{glance.endpoint}/v2/images/{t2['remote_id']}", timeout=30).status_code == 404


def test_undistribute_and_deleting_an_entry_on_vims(srv, glance, tmp_path):
    vim = glance_vim(srv, glance)
    a, _ = vm_image(srv, tmp_path, uid("und-"))
    b, _ = vm_image(srv, tmp_path, uid("und-"))
    ta = target(wait_job(srv, distribute(srv, [a["id"]], [vim["id"]])["id"]))
    tb = target(wait_job(srv, distribute(srv, [b["id"]], [vim["id"]])["id"]))
    # An entry on a VIM is not deleted behind its back.
    body = is_problem(api(srv, "DELETE", f"/api/v1/images/{a['id']}"), 409)
    assert vim["name"] in body["detail"], body
    r = api(srv, "POST", "/api/v1/undistributions", json={"images": [a["id"]], "vims": [vim["id"]]})
    assert r.status_code == 202, r.text
    t = target(wait_job(srv, r.json()["id"]))
    assert t["state"] == "removed", t
    assert requests.get(f"{glance.endpoint}/v2/images/{ta['remote_id']}", timeout=30).status_code == 404
    assert api(srv, "GET", f"/api/v1/images/{a['id']}/vims").json()["vims"] == []
    assert api(srv, "DELETE", f"/api/v1/images/{a['id']}").status_code == 204
    # undistribute=true: removed from the VIMs, then deleted.
    assert api(srv, "DELETE", f"/api/v1/images/{b['id']}", params={"undistribute": "true"}).status_code == 204
    poll(lambda: requests.get(f"{glance.endpoint}/v2/images/{tb['remote_id']}", timeout=30).status_code == 404,
         timeout=60, what="the image to be removed from Glance")


def test_inventory_links_known_images_and_imports_unknown_ones(srv, glance, tmp_path):
    vim = glance_vim(srv, glance)
    e, blob = vm_image(srv, tmp_path, uid("inv-"))
    other = disk(tmp_path / "other.qcow2", "qcow2", data=os.urandom(32 * 1024))

    def create(name: str, data: bytes) -> str:
        r = requests.post(f"{glance.endpoint}/v2/images", timeout=30,
                          json={"name": name, "disk_format": "qcow2", "container_format": "bare"})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        r = requests.put(f"{glance.endpoint}/v2/images/{iid}/file", data=data, timeout=60,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 204, r.text
        return iid

    same = create("made-by-hand", blob)
    unknown = create(uid("foreign-"), other)
    r = api(srv, "POST", f"/api/v1/vims/{vim['id']}/sync")
    assert r.status_code == 200, r.text
    inv = api(srv, "GET", f"/api/v1/vims/{vim['id']}/images").json()
    known = {i["remote_id"]: i for i in inv["known"]}
    assert known[same]["entry_id"] == e["id"], inv
    found = {i["remote_id"]: i for i in inv["unknown"]}
    assert unknown in found and found[unknown]["sha512"] == hashlib.sha512(other).hexdigest()
    assert same in [h["remote_id"] for h in api(srv, "GET", f"/api/v1/images/{e['id']}/vims").json()["vims"]]
    # The unknown one comes into the catalog, hashed and inspected like an upload.
    r = api(srv, "POST", f"/api/v1/vims/{vim['id']}/images/{unknown}/import", json={"version": "1"})
    assert r.status_code == 201, r.text
    imported = r.json()
    assert imported["checksums"]["sha512"] == hashlib.sha512(other).hexdigest()
    assert imported["checksums"]["md5"] == hashlib.md5(other).hexdigest()
    assert imported["disk_format"] == "qcow2" and imported["source"] == "import"
    inv = api(srv, "GET", f"/api/v1/vims/{vim['id']}/images").json()
    assert unknown in [i["remote_id"] for i in inv["known"]]


def test_events_stream_the_targets_progress(srv, glance, tmp_path):
    e, _ = vm_image(srv, tmp_path, uid("sse-"))
    v = glance_vim(srv, glance)
    jid = distribute(srv, [e["id"]], [v["id"]])["id"]
    states, ended = [], None
    with requests.get(f"{srv.url}/api/v1/distributions/{jid}/events", stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "target":
                states.append(json.loads(line.split(":", 1)[1])["state"])
            elif line.startswith("data:") and event == "job":
                ended = json.loads(line.split(":", 1)[1])["state"]
                if ended in ("active", "failed", "cancelled"):
                    break
    assert ended == "active" and states[-1] == "active", states


def test_bad_requests_are_problems(srv, glance, tmp_path):
    e, _ = vm_image(srv, tmp_path, uid("bad-"))
    v = glance_vim(srv, glance)
    is_problem(api(srv, "POST", "/api/v1/distributions", json={"images": [], "vims": [v["id"]]}), 400)
    is_problem(api(srv, "POST", "/api/v1/distributions", json={"images": [e["id"]], "vims": ["nope"]}), 404)
    is_problem(api(srv, "POST", "/api/v1/distributions",
                   json={"images": [e["id"]], "vims": [v["id"]], "method": "carrier-pigeon"}), 400)
    is_problem(api(srv, "POST", "/api/v1/distributions", json={"images": ["nope"], "vims": [v["id"]]}), 404)
    is_problem(api(srv, "POST", "/api/v1/distributions", json={"images": [e["id"]], "vim_selector": {"x": "y"}}), 400)
    is_problem(api(srv, "GET", "/api/v1/distributions/nope"), 404)

