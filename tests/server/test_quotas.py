"""Per-namespace storage quotas and their admin API (problem+json errors)."""

import os
import socket
import threading
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

        # Chunked uploads are refused at the chunk that would pass the quota, and leave nothing.
        r = requests.post(f"{srv.url}/v2/{ns}/one/blobs/uploads/")
        loc = srv.url + r.headers["Location"]
        r = requests.patch(loc, data=c, headers={"Content-Range": f"0-{len(c) - 1}"})
        assert r.status_code == 403 and "quota" in r.json()["errors"][0]["message"]
        assert requests.get(loc).headers["Range"] == "0-0", "the refused chunk left bytes"
        assert requests.put(f"{loc}?digest={digest(c)}").status_code == 400

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


def raw_request(srv, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(head.encode())
    return sock


def read_status(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return int(buf.split(b" ", 2)[1])


def test_push_over_quota_or_blob_limit_is_refused_before_its_bytes():
    """By Content-Length: refused instead of `100 Continue`, before one byte of the body is
    sent. Without a length (chunked): refused as soon as the running count passes the cap,
    long before the 64 MiB body ends."""
    env = {"IMAGE_MANAGER_REGISTRY__MAX_BLOB_BYTES": str(1 << 20)}
    with imserver.Server(env=env) as srv:
        ns = "q" + uuid.uuid4().hex[:8]
        assert set_quota(srv.url, ns, 100_000).status_code == 200
        d = "sha256:" + "0" * 64
        for repo, length, want in ((f"{ns}/a", 200_000, 403), (f"o{ns}/b", 2 << 20, 413)):
            sock = raw_request(srv, (
                f"POST /v2/{repo}/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: {srv.host}\r\n"
                f"Content-Length: {length}\r\nContent-Type: application/octet-stream\r\n"
                "Expect: 100-continue\r\n\r\n"))
            assert read_status(sock) == want
            sock.close()

        for repo, want in ((f"{ns}/a", 403), (f"o{ns}/b", 413)):
            r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/")
            assert r.status_code == 202, r.text
            path = r.headers["Location"]
            sock = raw_request(srv, (
                f"PATCH {path} HTTP/1.1\r\nHost: {srv.host}\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"))
            answer = {}
            reader = threading.Thread(target=lambda: answer.setdefault("status", read_status(sock)))
            reader.start()
            sent, piece = 0, os.urandom(16 * 1024)
            try:
                while sent < 64 << 20 and reader.is_alive():
                    sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    sent += len(piece)
            except OSError:
                pass  # the server answered and closed the connection
            reader.join(30)
            sock.close()
            status = answer.get("status")
            assert status == want
            assert sent < 16 << 20, f"the server read {sent} bytes before refusing"
            assert requests.get(srv.url + path).headers["Range"] == "0-0"
