"""Regional relays (`image-manager serve --upstream URL`): two relays in front of one central
server. VIMs are assigned a relay by label (the central's `distribution.relays`); web-downloads
of a real Glance and of MultiCloud servers (multicloud_server.py, from the API's description)
go through them, and the central's egress is counted from its own metrics: each region's relay
fetches an image once, however many VIMs and clients ask. Also: concurrent misses fetch once,
the relay verifies what the upstream sends, evicts the least recently used blob past its cap,
passes a blob larger than the cache through, and the upstream decides every request (a forged
link, credentials, a push)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import imserver
from catalogkit import ADMIN, auth_server, is_problem, push_blob
from distkit import ManglingProxy, distribute, glance_image, register, uid, vm_image, wait_job
from glance import Glance
from multicloud_server import MultiCloud

MIB = 1 << 20


@pytest.fixture(scope="module")
def glance():
    with Glance(mode="noauth") as g:
        yield g


def relay(upstream, env=None, port=None) -> imserver.Server:
    return imserver.Server(args=["--upstream", upstream.url], env=env, port=port)


def metrics(srv) -> dict[str, float]:
    return imserver.scrape_metrics(srv)


def counter(srv, name: str, **labels) -> float:
    return imserver.metric(metrics(srv), name, **labels)


def relay_outcomes(r) -> dict[str, float]:
    m = metrics(r)
    return {o: imserver.metric(m, "image_manager_relay_requests_total", outcome=o)
            for o in ("hit", "miss", "passthrough", "refused")}


def test_web_downloads_go_through_each_regions_relay_once(glance, tmp_path):
    east_port, west_port = imserver.free_port(), imserver.free_port()
    routes = (f'[{{url="http://127.0.0.1:{east_port}",selector="region=east"}},'
              f'{{url="http://127.0.0.1:{west_port}",selector="region=west"}}]')
    clouds = [MultiCloud("Owner", f"R{i}", "tenant") for i in range(3)]
    env = {"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "200",
           "IMAGE_MANAGER_DISTRIBUTION__RETRY_BASE_MS": "200",
           "IMAGE_MANAGER_DISTRIBUTION__RELAYS": routes}
    try:
        with imserver.Server(env=env) as central, relay(central, port=east_port) as east, \
                relay(central, port=west_port) as west:
            e, blob = vm_image(central, tmp_path, uid("relayed-"), data=os.urandom(2 * MIB))
            vims = [register(central, {"name": uid("g-"), "type": "openstack", "glance_url": glance.endpoint,
                                       "labels": {"region": "east"}})]
            for i, (mc, region) in enumerate(zip(clouds, ["east", "west", "west"])):
                vims.append(register(central, {"name": uid("mc-"), "type": "onap-multicloud", "url": mc.url,
                                               "cloud_owner": "Owner", "region": f"R{i}", "tenant": "tenant",
                                               "labels": {"region": region}}))
            before = counter(central, "image_manager_download_link_bytes_total")
            j = wait_job(central, distribute(central, [e["id"]], [v["id"] for v in vims], "web-download")["id"])
            assert all(t["state"] == "active" for t in j["targets"]), [(t["state"], t["last_error"]) for t in j["targets"]]
            sha512 = hashlib.sha512(blob).hexdigest()
            by_vim = {t["vim_id"]: t for t in j["targets"]}
            assert glance_image(glance, by_vim[vims[0]["id"]]["remote_id"])["os_hash_value"] == sha512
            for mc, v in zip(clouds, vims[1:]):
                assert mc.images[by_vim[v["id"]]["remote_id"]]["os_hash_value"] == sha512
            # Four VIMs in two regions: the central sent the image once per region, no more.
            sent = counter(central, "image_manager_download_link_bytes_total") - before
            assert sent == 2 * len(blob), (sent, len(blob))
            for r in (east, west):
                o = relay_outcomes(r)
                assert (o["miss"], o["refused"]) == (1, 0) and o["hit"] >= 1, o
                assert counter(r, "image_manager_relay_upstream_bytes_total") == len(blob)
            ready = requests.get(east.url + "/readyz", timeout=10).json()
            assert (ready["mode"], ready["cached_blobs"], ready["cached_bytes"]) == ("relay", 1, len(blob)), ready
    finally:
        for mc in clouds:
            mc.close()


def test_concurrent_misses_fetch_once_and_the_upstream_decides():
    with imserver.Server() as central, relay(central) as r:
        data = os.urandom(4 * MIB)
        d = push_blob(central, "relay/burst", data)
        before = counter(central, "image_manager_http_response_body_bytes_total")
        url = f"{r.url}/v2/relay/burst/blobs/{d}"
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: requests.get(url, timeout=60), range(8)))
        assert [b.status_code for b in bodies] == [200] * 8
        assert all(b.content == data and b.headers["Docker-Content-Digest"] == d for b in bodies)
        # One fetch from the central (the scrape before adds a few kB, a second fetch 4 MiB).
        sent = counter(central, "image_manager_http_response_body_bytes_total") - before
        assert len(data) <= sent < 2 * len(data), sent
        o = relay_outcomes(r)
        assert (o["miss"], o["hit"]) == (1, 7), o
        # Ranges are served from the cache; HEAD answers without a body.
        part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
        assert (part.status_code, part.content, part.headers["Content-Range"]) == \
            (206, data[10:20], f"bytes 10-19/{len(data)}")
        head = requests.head(url, timeout=30)
        assert (head.status_code, head.headers["Content-Length"], head.content) == (200, str(len(data)), b"")
        # Manifests and the ping are passed on; an unknown blob is the upstream's 404.
        assert requests.get(r.url + "/v2/", timeout=30).status_code == 200
        missing = requests.get(f"{r.url}/v2/relay/burst/blobs/sha256:{'0' * 64}", timeout=30)
        assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        # A relay is read-only; a forged download link is refused by the upstream.
        push = requests.post(f"{r.url}/v2/relay/burst/blobs/uploads/", timeout=30)
        assert push.status_code == 405 and push.json()["errors"][0]["code"] == "UNSUPPORTED"
        is_problem(requests.get(r.url + "/dl/eyJyIjoieCIsImQiOiJ5IiwiZSI6MX0.AAAA", timeout=30), 403)
        is_problem(requests.get(r.url + "/dl/garbage", timeout=30), 403)


def test_credentials_are_the_upstreams_business():
    central = auth_server()
    try:
        with relay(central) as r:
            data = os.urandom(64 * 1024)
            d = push_blob(central, "private/img", data, auth=ADMIN)
            url = f"{r.url}/v2/private/img/blobs/{d}"
            anon = requests.get(url, timeout=30)
            assert anon.status_code == 401, anon.text
            assert f'realm="{central.url}/token"' in anon.headers["WWW-Authenticate"], anon.headers
            ok = requests.get(url, auth=ADMIN, timeout=30)
            assert (ok.status_code, ok.content) == (200, data)
            # Cached now, and still the upstream decides: no credentials, no bytes.
            assert requests.get(url, timeout=30).status_code == 401
            o = relay_outcomes(r)
            assert (o["miss"], o["hit"], o["refused"]) == (1, 0, 2), o
    finally:
        central.close()


def test_bytes_that_do_not_hash_to_the_digest_are_never_served_or_kept():
    with imserver.Server() as central:
        proxy = ManglingProxy(central.url, every=True)
        try:
            data = os.urandom(MIB)
            d = push_blob(central, "relay/bad", data)
            # The relay's readiness asks the upstream's /healthz: the proxy passes it on.
            with relay(proxy) as r:
                bad = requests.get(f"{r.url}/v2/relay/bad/blobs/{d}", timeout=30)
                assert bad.status_code == 502 and bad.json()["errors"][0]["code"] == "UNKNOWN", bad.text
                assert "do not hash" in bad.json()["errors"][0]["message"]
                ready = requests.get(r.url + "/readyz", timeout=30).json()
                assert (ready["cached_blobs"], ready["cached_bytes"]) == (0, 0), ready
                assert proxy.gets >= 1
        finally:
            proxy.close()


def test_the_cache_keeps_its_cap_and_passes_larger_blobs_through():
    with imserver.Server() as central, relay(central, env={"IMAGE_MANAGER_RELAY__CACHE_MAX_BYTES": str(3 * MIB)}) as r:
        a, b, big = os.urandom(2 * MIB), os.urandom(2 * MIB), os.urandom(4 * MIB)
        da, db, dbig = (push_blob(central, "relay/cap", x) for x in (a, b, big))

        def get(d):
            resp = requests.get(f"{r.url}/v2/relay/cap/blobs/{d}", timeout=60)
            assert resp.status_code == 200
            return resp.content

        assert get(da) == a and get(db) == b  # b's arrival evicts a (2 + 2 MiB > 3 MiB)
        assert counter(r, "image_manager_relay_evictions_total") == 1
        ready = requests.get(r.url + "/readyz", timeout=30).json()
        assert (ready["cached_blobs"], ready["cached_bytes"]) == (1, len(b)), ready
        assert get(db) == b and get(da) == a  # b a hit; a fetched again, evicting b
        assert get(dbig) == big and get(dbig) == big  # larger than the cache: never kept
        o = relay_outcomes(r)
        assert (o["miss"], o["hit"], o["passthrough"]) == (3, 1, 2), o
        ready = requests.get(r.url + "/readyz", timeout=30).json()
        assert ready["cached_bytes"] <= 3 * MIB, ready
    # A relay restarted on its data finds what it had kept.
    with imserver.Server() as central2:
        data = os.urandom(MIB)
        d = push_blob(central2, "relay/keep", data)
        first = relay(central2)
        with first:
            assert requests.get(f"{first.url}/v2/relay/keep/blobs/{d}", timeout=30).content == data
            first.stop()
            first.start()
            ready = requests.get(first.url + "/readyz", timeout=30).json()
            assert (ready["cached_blobs"], ready["cached_bytes"]) == (1, len(data)), ready
            assert requests.get(f"{first.url}/v2/relay/keep/blobs/{d}", timeout=30).content == data
            assert relay_outcomes(first)["hit"] == 1
