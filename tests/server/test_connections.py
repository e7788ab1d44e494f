"""Slow and idle clients cannot hold the server's connections: a request head must arrive in
time, idle keep-alive connections close, a request body that stops moving fails (and frees the
upload session it was writing), a slow but moving body is never cut, and the connection cap
keeps the rest waiting in the backlog; over plain HTTP and TLS alike.

Timeouts are set to a couple of seconds here; the waits are deadlines on observable
conditions (a socket reaching EOF, a status code), not fixed sleeps. The one `time.sleep` paces
a deliberately slow client, which is the behaviour under test."""

from __future__ import annotations

import os
import resource
import socket
import ssl
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

import imserver

pytestmark = pytest.mark.backend_independent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tls import make_cert  # noqa: E402

TIMEOUTS = {
    "IMAGE_MANAGER_SERVER__HEADER_READ_TIMEOUT_SECS": "2",
    "IMAGE_MANAGER_SERVER__IDLE_TIMEOUT_SECS": "2",
    "IMAGE_MANAGER_SERVER__BODY_IDLE_TIMEOUT_SECS": "2",
}


def closed(sock) -> bool:
    """Whether the server closed `sock` (EOF or reset); False while it is still open."""
    sock.settimeout(0.0)
    try:
        data = sock.recv(4096)
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True
    if data == b"":
        return True
    # Anything the server sent (such as an error response) is read; keep looking for EOF.
    return closed(sock)


def wait_all_closed(socks, timeout=20.0):
    pending = list(socks)

    def done():
        pending[:] = [s for s in pending if not closed(s)]
        return not pending

    imserver.poll(done, timeout=timeout, what=f"{len(pending)} stalled connections to be closed")


def stalled_sockets(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /v2/ HT")  # half a request line, then nothing
        out.append(s)
    return out


def test_stalled_request_heads_are_dropped_while_others_are_served():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(1500, soft - 200)
    assert n >= 500, f"the test needs an open-files limit above 700 (have {soft})"
    with imserver.Server(env=TIMEOUTS) as srv:
        socks = stalled_sockets(srv.port, n)
        try:
            # Served while the stalled ones are open.
            for _ in range(5):
                assert requests.get(f"{srv.url}/v2/", timeout=10).status_code == 200
            wait_all_closed(socks)
            assert requests.get(f"{srv.url}/v2/", timeout=10).status_code == 200
        finally:
            for s in socks:
                s.close()


def test_idle_keep_alive_connection_is_closed():
    with imserver.Server(env=TIMEOUTS) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {srv.host}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        wait_all_closed([s])


def test_a_body_that_stops_moving_fails_and_frees_the_session():
    with imserver.Server(env=TIMEOUTS) as srv:
        repo = f"conn/{uuid.uuid4().hex[:8]}"
        r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/")
        path = r.headers["Location"]
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall((f"PATCH {path} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: 1000\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * 10)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        s.close()
        assert head.startswith(b"HTTP/1.1 400"), head
        # The lease went with the failed request: the session takes the next chunk at once.
        data = os.urandom(5000)
        r = requests.patch(srv.url + path, data=data, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"0-{len(data) - 1}"})
        assert r.status_code == 202, r.text


def test_a_slow_but_moving_body_is_not_cut():
    with imserver.Server(env=TIMEOUTS) as srv:
        repo = f"conn/{uuid.uuid4().hex[:8]}"
        pieces = [os.urandom(1000) for _ in range(6)]

        def slow():
            for p in pieces:
                yield p
                time.sleep(0.6)  # pacing the slow client (below the 2 s body timeout), not synchronisation

        data = b"".join(pieces)
        r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={imserver.digest(data)}", data=slow())
        assert r.status_code == 201, r.text


def test_connection_cap_keeps_the_rest_in_the_backlog():
    env = dict(TIMEOUTS, IMAGE_MANAGER_SERVER__MAX_CONNECTIONS="16")
    with imserver.Server(env=env) as srv:
        socks = stalled_sockets(srv.port, 16)
        try:
            # The 17th client is served once the header deadline frees a slot.
            r = requests.get(f"{srv.url}/v2/", timeout=20)
            assert r.status_code == 200
            wait_all_closed(socks)
        finally:
            for s in socks:
                s.close()


def test_tls_connections_that_stall_are_dropped(tmp_path):
    cert, key = make_cert(tmp_path)
    with imserver.Server(env=TIMEOUTS, tls=(cert, key), matrix=False) as srv:
        ctx = ssl.create_default_context(cafile=cert)
        socks = []
        for i in range(20):
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            if i % 2:
                tls.sendall(b"GET /v2/ HT")  # a partial head after the handshake
            socks.append(tls)
        try:
            assert requests.get(f"{srv.url}/v2/", verify=cert, timeout=10).status_code == 200
            wait_all_closed(socks)
        finally:
            for s in socks:
                s.close()
