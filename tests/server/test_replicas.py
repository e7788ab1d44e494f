"""Replicas: several server processes sharing one database and one blob store, with no other
coordination, behave as one registry. Runs on every backend of the matrix."""

import json
import os
import threading
import uuid
from urllib.parse import urljoin

import pytest
import requests

import imserver

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


digest = imserver.digest


@pytest.fixture
def pair():
    a = imserver.Server().start()
    b = a.replica().start()
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def push_blob(url: str, repo: str, data: bytes) -> str:
    d = digest(data)
    r = requests.post(f"{url}/v2/{repo}/blobs/uploads/?digest={d}", data=data)
    assert r.status_code == 201, r.text
    return d


def manifest_for(url: str, repo: str, label: str) -> bytes:
    config = json.dumps({"label": label}).encode()
    layer = f"layer {label}".encode()
    c, l = push_blob(url, repo, config), push_blob(url, repo, layer)
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": len(layer)}],
    }).encode()


def put_manifest(url: str, repo: str, ref: str, body: bytes) -> requests.Response:
    return requests.put(f"{url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": OCI_MANIFEST})


def test_push_on_one_pull_on_the_other(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    body = manifest_for(a.url, repo, "one")
    assert put_manifest(a.url, repo, "v1", body).status_code == 201
    r = requests.get(f"{b.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == body
    for layer in json.loads(body)["layers"] + [json.loads(body)["config"]]:
        r = requests.get(f"{b.url}/v2/{repo}/blobs/{layer['digest']}")
        assert r.status_code == 200 and digest(r.content) == layer["digest"]


def test_chunked_upload_across_replicas(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    data = os.urandom(6 * 1024 * 1024 + 123)
    cuts = [0, 1024 * 1024, 5 * 1024 * 1024 + 7, 5 * 1024 * 1024 + 10, len(data)]
    r = requests.post(f"{a.url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    for i, (start, end) in enumerate(zip(cuts, cuts[1:])):
        server = (a, b)[i % 2]
        r = requests.patch(urljoin(server.url, location), data=data[start:end],
                           headers={"Content-Range": f"{start}-{end - 1}", "Content-Type": "application/octet-stream"})
        assert r.status_code == 202, (i, r.text)
        assert r.headers["Range"] == f"0-{end - 1}"
        location = r.headers["Location"]
    r = requests.get(urljoin(b.url, location))
    assert r.status_code == 204 and r.headers["Range"] == f"0-{len(data) - 1}"
    r = requests.put(urljoin(b.url, location) + f"?digest={digest(data)}")
    assert r.status_code == 201, r.text
    r = requests.get(f"{a.url}/v2/{repo}/blobs/{digest(data)}")
    assert r.status_code == 200 and r.content == data


def test_tag_moved_on_one_is_seen_on_the_other_at_once(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    for label in ("first", "second", "third"):
        body = manifest_for(a.url, repo, label)
        assert put_manifest(a.url, repo, "latest", body).status_code == 201
        r = requests.get(f"{b.url}/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == body
        r = requests.head(f"{b.url}/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert r.headers["Docker-Content-Digest"] == digest(body)


def test_concurrent_pushes_of_one_tag_end_consistent(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    bodies = [manifest_for(a.url, repo, f"m{i}") for i in range(16)]
    errors = []

    def pusher(server, mine):
        for body in mine:
            r = put_manifest(server.url, repo, "race", body)
            if r.status_code != 201:
                errors.append(r.text)

    threads = [threading.Thread(target=pusher, args=((a, b)[i % 2], bodies[i::4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seen = {requests.head(f"{s.url}/v2/{repo}/manifests/race", headers={"Accept": OCI_MANIFEST})
            .headers["Docker-Content-Digest"] for s in (a, b)}
    assert len(seen) == 1 and seen <= {digest(x) for x in bodies}
    assert requests.get(f"{b.url}/v2/{repo}/tags/list").json()["tags"] == ["race"]
    for body in bodies:
        assert requests.get(f"{a.url}/v2/{repo}/manifests/{digest(body)}").content == body


def test_concurrent_pushes_of_one_blob(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    data = os.urandom(2 * 1024 * 1024)
    codes = []

    def push(server):
        r = requests.post(f"{server.url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data)
        codes.append(r.status_code)

    threads = [threading.Thread(target=push, args=((a, b)[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * 8
    for s in (a, b):
        r = requests.get(f"{s.url}/v2/{repo}/blobs/{digest(data)}")
        assert r.status_code == 200 and r.content == data


def test_manifest_push_racing_its_delete_leaves_no_dangling_tag(pair):
    a, b = pair
    repo = f"rep/{uuid.uuid4().hex[:10]}"
    body = manifest_for(a.url, repo, "racy")
    d = digest(body)
    stop = threading.Event()
    unexpected = []

    def pusher():
        for _ in range(40):
            r = put_manifest(a.url, repo, "racy", body)
            if r.status_code != 201:
                unexpected.append(("put", r.status_code, r.text))
        stop.set()

    def deleter():
        while not stop.is_set():
            r = requests.delete(f"{b.url}/v2/{repo}/manifests/{d}")
            if r.status_code not in (202, 404):
                unexpected.append(("delete", r.status_code, r.text))

    threads = [threading.Thread(target=pusher), threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == []
    # Whatever the interleaving: a listed tag resolves, and the tag and the manifest agree.
    tags = requests.get(f"{a.url}/v2/{repo}/tags/list").json()["tags"]
    by_digest = requests.get(f"{a.url}/v2/{repo}/manifests/{d}").status_code
    if tags == ["racy"]:
        r = requests.get(f"{b.url}/v2/{repo}/manifests/racy", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == body
        assert by_digest == 200
    else:
        assert tags == [] and by_digest == 404
