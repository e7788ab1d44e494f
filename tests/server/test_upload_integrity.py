"""A stored blob always hashes to its digest, whatever concurrent or stalled writers do to one
upload session. Runs on every backend of the matrix.

The slow writer is a raw socket: it sends its PATCH headers with `Expect: 100-continue` and
waits for the server's `100 Continue`, which the server sends only once the handler reads the
body, that is once it holds the session's write lease. That makes "a second request arrives
while the first is still streaming" deterministic without sleeping.
"""

import os
import signal
import socket
import threading
import uuid
from urllib.parse import urlparse

import pytest
import requests

import imserver

digest = imserver.digest


class SlowPatch:
    """A PATCH whose body is sent in two parts, the second when the test says so."""

    def __init__(self, server: imserver.Server, location: str, first: bytes, rest: bytes):
        self.server, self.location = server, location
        self.first, self.rest = first, rest
        total = len(first) + len(rest)
        path = urlparse(location).path + (("?" + urlparse(location).query) if urlparse(location).query else "")
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n"
            f"Content-Range: 0-{total - 1}\r\nExpect: 100-continue\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        interim = self._read_head()
        assert interim.startswith(b"HTTP/1.1 100"), interim
        self.sock.sendall(first)

    def _read_head(self) -> bytes:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            buf += chunk
        return buf

    def finish(self) -> int:
        """Send the rest and return the final status code."""
        try:
            self.sock.sendall(self.rest)
        except OSError:
            pass  # the server gave up on this request already; its answer (if any) follows
        head = self._read_head()
        self.sock.close()
        if not head:
            return 0
        return int(head.split(b" ", 2)[1])


def start_upload(url: str, repo: str) -> str:
    r = requests.post(f"{url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    loc = r.headers["Location"]
    return loc if loc.startswith("http") else url + loc


def put(location: str, d: str) -> requests.Response:
    sep = "&" if "?" in location else "?"
    return requests.put(f"{location}{sep}digest={d}")


def assert_blob_intact(url: str, repo: str, d: str) -> None:
    r = requests.get(f"{url}/v2/{repo}/blobs/{d}")
    assert r.status_code == 200, r.text
    assert digest(r.content) == d, "the registry serves bytes that do not hash to their digest"


@pytest.fixture
def server():
    with imserver.Server() as s:
        yield s


def test_concurrent_patch_on_one_session_is_refused_and_changes_nothing(server):
    repo = f"integ/{uuid.uuid4().hex[:10]}"
    loc = start_upload(server.url, repo)
    slow_data = os.urandom(256 * 1024)
    fast_data = os.urandom(64 * 1024)
    slow = SlowPatch(server, loc, slow_data[:1000], slow_data[1000:])

    fast = requests.patch(loc, data=fast_data, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"0-{len(fast_data) - 1}"})
    assert fast.status_code == 416, fast.text
    assert fast.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert "another request" in fast.json()["errors"][0]["message"]

    assert slow.finish() == 202
    status = requests.get(loc)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(slow_data) - 1}"

    # The session holds the slow writer's bytes only.
    r = put(loc, digest(slow_data))
    assert r.status_code == 201, r.text
    assert_blob_intact(server.url, repo, digest(slow_data))
    assert requests.head(f"{server.url}/v2/{repo}/blobs/{digest(fast_data)}").status_code == 404


def test_put_while_a_patch_streams_is_refused(server):
    repo = f"integ/{uuid.uuid4().hex[:10]}"
    loc = start_upload(server.url, repo)
    data = os.urandom(128 * 1024)
    slow = SlowPatch(server, loc, data[:10], data[10:])
    r = put(loc, digest(data))
    assert r.status_code == 416, r.text
    assert slow.finish() == 202
    r = put(loc, digest(data))
    assert r.status_code == 201, r.text
    assert_blob_intact(server.url, repo, digest(data))


def test_racing_patches_never_store_wrong_bytes(server):
    """The issue's reproduction, undirected: two PATCHes from offset 0 race; whichever wins,
    nothing is ever served under a digest its bytes do not have."""
    repo = f"integ/{uuid.uuid4().hex[:10]}"
    for _ in range(8):
        loc = start_upload(server.url, repo)
        a, b = os.urandom(512 * 1024), os.urandom(8 * 1024)
        codes = {}

        def send(name, data):
            codes[name] = requests.patch(loc, data=data, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"0-{len(data) - 1}"}).status_code

        threads = [threading.Thread(target=send, args=(n, d)) for n, d in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes.values()) == [202, 416], codes
        winner, loser = (a, b) if codes["a"] == 202 else (b, a)
        r = put(loc, digest(winner))
        assert r.status_code == 201, r.text
        assert_blob_intact(server.url, repo, digest(winner))
        assert requests.head(f"{server.url}/v2/{repo}/blobs/{digest(loser)}").status_code == 404


def test_chunks_alternate_between_replicas_without_rereading(server):
    """Each chunk lands on another replica; the hash state travels with the session."""
    b = server.replica().start()
    try:
        repo = f"integ/{uuid.uuid4().hex[:10]}"
        loc = start_upload(server.url, repo)
        path = urlparse(loc).path + ("?" + urlparse(loc).query if urlparse(loc).query else "")
        chunks = [os.urandom(100_000) for _ in range(6)]
        offset = 0
        for i, c in enumerate(chunks):
            base = (server if i % 2 == 0 else b).url
            r = requests.patch(base + path, data=c, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(c) - 1}"})
            assert r.status_code == 202, r.text
            offset += len(c)
        whole = b"".join(chunks)
        r = requests.put(f"{b.url}{path}{'&' if '?' in path else '?'}digest={digest(whole)}")
        assert r.status_code == 201, r.text
        assert_blob_intact(server.url, repo, digest(whole))
    finally:
        b.close()


def test_a_stalled_replica_loses_the_session_and_cannot_corrupt_it():
    """A replica frozen (SIGSTOP) while it holds a session's lease: once the lease lapses
    another replica takes the session over; the frozen one, thawed, cannot change its bytes."""
    env = {"IMAGE_MANAGER_REGISTRY__UPLOAD_LEASE_SECS": "2"}
    a = imserver.Server(env=env).start()
    b = a.replica(env=env).start()
    try:
        repo = f"integ/{uuid.uuid4().hex[:10]}"
        loc = start_upload(a.url, repo)
        path = urlparse(loc).path + ("?" + urlparse(loc).query if urlparse(loc).query else "")
        stale = os.urandom(200_000)
        slow = SlowPatch(a, a.url + path, stale[:1000], stale[1000:])
        a.proc.send_signal(signal.SIGSTOP)
        try:
            good = os.urandom(50_000)
            answers = []

            def b_takes_over():
                r = requests.patch(b.url + path, data=good, headers={
                    "Content-Type": "application/octet-stream", "Content-Range": f"0-{len(good) - 1}"})
                answers.append(r)
                return r.status_code == 202

            imserver.poll(b_takes_over, timeout=30, what="replica b taking over the lapsed session")
            assert all(r.status_code == 416 for r in answers[:-1])
        finally:
            a.proc.send_signal(signal.SIGCONT)
        assert slow.finish() != 202
        r = requests.put(f"{b.url}{path}{'&' if '?' in path else '?'}digest={digest(good)}")
        assert r.status_code == 201, r.text
        assert_blob_intact(a.url, repo, digest(good))
        assert_blob_intact(b.url, repo, digest(good))
    finally:
        b.close()
        a.close()


def upload_data_ids(srv: imserver.Server) -> set[str]:
    """The upload data the server's blob store holds (filesystem or S3, as the matrix says)."""
    storage = next((srv.extra[i + 1] for i, a in enumerate(srv.extra[:-1]) if a == "--storage"), None)
    if storage is None:
        return set(os.listdir(os.path.join(srv.data_dir, "uploads")))
    import boto3
    from urllib.parse import parse_qs
    u = urlparse(storage)
    q = parse_qs(u.query)
    prefix = u.path.lstrip("/")
    prefix = (prefix + "/" if prefix and not prefix.endswith("/") else prefix) + "uploads/"
    s3 = boto3.client("s3", endpoint_url=q["endpoint"][0], region_name=q.get("region", ["us-east-1"])[0])
    ids = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=u.netloc, Prefix=prefix):
        for obj in page.get("Contents", []):
            ids.add(obj["Key"][len(prefix):].split("/")[0])
    return ids


def test_upload_data_left_by_a_killed_server_is_swept():
    """A monolithic push has no session row: when the server dies mid-body its data is an
    orphan, which the expiry sweep finds and removes; open sessions' data stays."""
    env = {"IMAGE_MANAGER_REGISTRY__UPLOAD_EXPIRY_SECS": "2",
           "IMAGE_MANAGER_REGISTRY__UPLOAD_SWEEP_INTERVAL_SECS": "1"}
    srv = imserver.Server(env=env).start()
    try:
        repo = f"integ/{uuid.uuid4().hex[:10]}"
        data = os.urandom(4 << 20)
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall((f"POST /v2/{repo}/blobs/uploads/?digest={digest(data)} HTTP/1.1\r\nHost: {srv.host}\r\n"
                      f"Content-Length: {len(data) * 2}\r\nContent-Type: application/octet-stream\r\n\r\n").encode())
        sock.sendall(data)
        imserver.poll(lambda: len(upload_data_ids(srv)) == 1, what="the monolithic upload's data to appear")
        orphan = upload_data_ids(srv)
        srv.stop(signal.SIGKILL)
        sock.close()
        assert upload_data_ids(srv) == orphan, "the killed server's upload data should still be there"

        srv.start()
        imserver.poll(lambda: not (upload_data_ids(srv) & orphan), timeout=30,
                      what="the orphaned upload data to be swept")
        r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data)
        assert r.status_code == 201, r.text
        assert_blob_intact(srv.url, repo, digest(data))
    finally:
        srv.close()
