"""Per-namespace storage quotas and their admin API (problem+json errors)."""

import os
import uuid

import requests

import imserver


digest = imserver.digest


def push(url: str, repo: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data)


def set_quota(url: str, ns: str, n):
    return requests.put(f"{url}/api/v1/admin/namespaces/{ns}/quota", json={"bytes": n})


def test_quota_denies_pushes_over_it_and_counts_each_blob_once():
    with imserver.Server() as srv:
        ns = "q" + uuid.uuid4().hex[:8]
        r = set_quota(srv.url, ns, 10_000)
        assert r.status_code == 200 and r.json() == {"name": ns, "usage_bytes": 0, "quota_bytes": 10_000}
        a, b = os.urandom(6000), os.urandom(3000)
        assert push(srv.url, f"{ns}/one", a).status_code == 201
        assert push(srv.url, f"{ns}/two", a).status_code == 201, "a blob the namespace holds costs nothing"
        assert push(srv.url, f"{ns}/two", b).status_code == 201
        usage = requests.get(f"{srv.url}/api/v1/admin/namespaces/{ns}").json()
        assert usage["usage_bytes"] == 9000

        c = os.urandom(2000)
        r = push(srv.url, f"{ns}/one", c)
        assert r.status_code == 403
        err = r.json()["errors"][0]
        assert err["code"] == "DENIED" and "quota" in err["message"]
        assert requests.head(f"{srv.url}/v2/{ns}/one/blobs/{digest(c)}").status_code == 404

        # Chunked uploads are refused at the end too, and leave nothing behind.
        r = requests.post(f"{srv.url}/v2/{ns}/one/blobs/uploads/")
        loc = srv.url + r.headers["Location"]
        requests.patch(loc, data=c, headers={"Content-Range": f"0-{len(c) - 1}"})
        assert requests.put(f"{loc}?digest={digest(c)}").status_code == 403

        # Another namespace is not affected; mounting into the full one is refused.
        other = "o" + uuid.uuid4().hex[:8]
        assert push(srv.url, f"{other}/x", c).status_code == 201
        r = requests.post(f"{srv.url}/v2/{ns}/one/blobs/uploads/?mount={digest(c)}&from={other}/x")
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"

        # Deleting frees space; clearing the quota lifts the limit.
        assert requests.delete(f"{srv.url}/v2/{ns}/two/blobs/{digest(b)}").status_code == 202
        assert push(srv.url, f"{ns}/one", c).status_code == 201
        assert requests.delete(f"{srv.url}/api/v1/admin/namespaces/{ns}/quota").status_code == 204
        assert push(srv.url, f"{ns}/one", os.urandom(20_000)).status_code == 201
        listed = {n["name"]: n for n in requests.get(f"{srv.url}/api/v1/admin/namespaces").json()}
        assert listed[ns]["quota_bytes"] is None and listed[ns]["usage_bytes"] == 6000 + 2000 + 20_000


def test_default_quota_from_config():
    with imserver.Server(env={"IMAGE_MANAGER_REGISTRY__DEFAULT_QUOTA_BYTES": "1000"}) as srv:
        ns = "d" + uuid.uuid4().hex[:8]
        assert push(srv.url, f"{ns}/r", os.urandom(900)).status_code == 201
        assert push(srv.url, f"{ns}/r", os.urandom(200)).status_code == 403
        assert requests.get(f"{srv.url}/api/v1/admin/namespaces/{ns}").json()["quota_bytes"] == 1000
        assert set_quota(srv.url, ns, 5000).status_code == 200
        assert push(srv.url, f"{ns}/r", os.urandom(200)).status_code == 201


def test_admin_api_errors_are_problem_json():
    with imserver.Server() as srv:
        for r in (
            set_quota(srv.url, "Bad..Name", 1),
            requests.put(f"{srv.url}/api/v1/admin/namespaces/ok/quota", data="{nope",
                         headers={"Content-Type": "application/json"}),
            requests.put(f"{srv.url}/api/v1/admin/namespaces/ok/quota", json={"bytes": -5}),
            requests.get(f"{srv.url}/api/v1/no-such-thing"),
        ):
            assert 400 <= r.status_code < 500, r.text
            assert r.headers["Content-Type"] == "application/problem+json"
            body = r.json()
            assert body["status"] == r.status_code and body["title"] and body["detail"]
