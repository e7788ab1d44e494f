"""Distribution through ONAP MultiCloud's image API, both versions, against the server of
multicloud_server.py, which implements that API from its description (no MultiCloud can be
installed here)."""

from __future__ import annotations

import hashlib
import os

import pytest

import imserver
from distkit import api, distribute, register, target, uid, vm_image, wait_job
from multicloud_server import MultiCloud


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_distribute_through_multicloud(tmp_path, version):
    mc = MultiCloud("CloudOwner", "RegionOne", "tenant-1")
    try:
        with imserver.Server(env={"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "200"}) as srv:
            e, blob = vm_image(srv, tmp_path, uid("mc-"))
            v = register(srv, {"name": uid("mc-"), "type": "onap-multicloud", "url": mc.url,
                               "cloud_owner": "CloudOwner", "region": "RegionOne", "tenant": "tenant-1",
                               "api_version": version, "download_url": srv.url})
            assert api(srv, "POST", f"/api/v1/vims/{v['id']}/test").json()["health"]["state"] == "ok"
            t = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]], "auto")["id"]))
            assert (t["state"], t["skipped"]) == ("active", False), t
            img = mc.images[t["remote_id"]]
            assert img["name"] == e["name"] and img["imageType"] == "qcow2" and img["containerFormat"] == "bare"
            assert img["os_hash_value"] == hashlib.sha512(blob).hexdigest() and img["im_entry_id"] == e["id"]
            prefix = "/api/multicloud/v0/CloudOwner_RegionOne/" if version == "v0" else "/api/multicloud/v1/CloudOwner/RegionOne/"
            assert all(p.startswith(prefix) for _, p in mc.requests), mc.requests
            # Again: MultiCloud lists it under the name with our hashes: nothing is sent.
            again = target(wait_job(srv, distribute(srv, [e["id"]], [v["id"]])["id"]))
            assert (again["state"], again["skipped"], again["remote_id"]) == ("active", True, t["remote_id"])
            # The inventory sees it as this entry; un-distribution deletes it there.
            assert api(srv, "POST", f"/api/v1/vims/{v['id']}/sync").status_code == 200
            known = api(srv, "GET", f"/api/v1/vims/{v['id']}/images").json()["known"]
            assert [k["entry_id"] for k in known] == [e["id"]]
            r = api(srv, "POST", "/api/v1/undistributions", json={"images": [e["id"]], "vims": [v["id"]]})
            assert target(wait_job(srv, r.json()["id"]))["state"] == "removed"
            assert mc.images == {}
            # Without a URL of ours MultiCloud cannot fetch: the target fails and says why.
            w = register(srv, {"name": uid("mc-"), "type": "onap-multicloud", "url": mc.url,
                               "cloud_owner": "CloudOwner", "region": "RegionOne", "tenant": "tenant-1",
                               "api_version": version})
            f = target(wait_job(srv, distribute(srv, [e["id"]], [w["id"]])["id"]))
            assert f["state"] == "failed" and "public_url" in f["last_error"], f
    finally:
        mc.close()


def test_per_vim_concurrency_holds_over_replicas(tmp_path):
    """Two replicas share the work of four targets on one VIM whose concurrency is 1: the VIM
    never fetches two images at once (each replica alone would allow one of its own)."""
    mc = MultiCloud("CloudOwner", "RegionOne", "tenant-1", read_bytes_per_sec=2 * 1024 * 1024)
    env = {"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "100",
           "IMAGE_MANAGER_DISTRIBUTION__RETRY_BASE_MS": "100"}
    try:
        with imserver.Server(env=env) as srv:
            other = srv.replica(env=env)
            with other:
                entries = [vm_image(srv, tmp_path, uid("conc-"), data=os.urandom(1 << 20))[0] for _ in range(4)]
                v = register(srv, {"name": uid("mc-"), "type": "onap-multicloud", "url": mc.url,
                                   "cloud_owner": "CloudOwner", "region": "RegionOne", "tenant": "tenant-1",
                                   "download_url": srv.url, "concurrency": 1})
                j = wait_job(srv, distribute(srv, [e["id"] for e in entries], [v["id"]], "auto")["id"])
                assert [t["state"] for t in j["targets"]] == ["active"] * 4, j
                assert mc.fetching_peak == 1, mc.fetching_peak
                # No target was done twice: one create and one image per entry.
                assert sum(1 for m, _ in mc.requests if m == "POST") == 4, mc.requests
                assert sorted(i["name"] for i in mc.images.values()) == sorted(e["name"] for e in entries)
                # The job's view: its counts always, its targets filtered by state or left out.
                path = f"/api/v1/distributions/{j['id']}"
                lean = api(srv, "GET", path, params={"targets": "false"}).json()
                assert (lean["targets"], lean["counts"], lean["state"]) == ([], {"active": 4}, "active"), lean
                assert len(api(srv, "GET", path, params={"state": "failed,active"}).json()["targets"]) == 4
                assert api(srv, "GET", path, params={"state": "failed"}).json()["targets"] == []
                for bad in ({"state": "done"}, {"targets": "maybe"}, {"page": "2"}):
                    r = api(srv, "GET", path, params=bad)
                    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json", r.text
    finally:
        mc.close()
