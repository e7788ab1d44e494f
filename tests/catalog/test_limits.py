"""No request makes the server's memory grow with its size: an anonymous multipart upload is
refused before its body is read, a metadata field beyond its cap gets 413 as soon as it passes
the cap, and a body longer than any image may be gets 413 from its Content-Length. The
server's peak RSS (VmHWM) is read from /proc before and after."""

from __future__ import annotations

import base64
import socket
import threading

from catalogkit import ADMIN, auth_server

GIB = 1 << 30
BOUNDARY = "imtestboundary"


def peak_rss(srv) -> int:
    for line in open(f"/proc/{srv.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def send_big_field(srv, field_bytes: int, auth: tuple[str, str] | None) -> tuple[int | None, int]:
    """POST /api/v1/images as multipart with one text field of `field_bytes`, streamed; returns
    the status the server answered and how many body bytes were sent before it did."""
    head_part = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(head_part) + field_bytes + len(tail)
    headers = [
        "POST /api/v1/images?name=big&version=1 HTTP/1.1",
        f"Host: {srv.host}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {length}",
    ]
    if auth:
        headers.append("Authorization: Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + head_part)
    answer: dict = {}

    def read():
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        if buf:
            answer["status"] = int(buf.split(b" ", 2)[1])

    reader = threading.Thread(target=read)
    reader.start()
    sent, piece = 0, b"a" * (1 << 20)
    try:
        while sent < field_bytes and reader.is_alive():
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass  # answered and closed
    reader.join(60)
    sock.close()
    return answer.get("status"), sent


def test_anonymous_and_oversized_multipart_fields_are_refused_early():
    srv = auth_server()
    try:
        before = peak_rss(srv)
        status, sent = send_big_field(srv, GIB, None)
        assert status == 401
        assert sent < 64 << 20, f"{sent} bytes were read before the anonymous upload was refused"

        status, sent = send_big_field(srv, GIB, ADMIN)
        assert status == 413
        assert sent < 64 << 20, f"{sent} bytes were read before the oversized field was refused"
        grown = peak_rss(srv) - before
        assert grown < 64 << 20, f"peak RSS grew by {grown} bytes"
    finally:
        srv.close()


def test_a_body_longer_than_any_image_gets_413_from_its_length():
    srv = auth_server(env={"IMAGE_MANAGER_REGISTRY__MAX_BLOB_BYTES": str(1 << 20)})
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        auth = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        sock.sendall((
            "POST /api/v1/images?name=big&version=1 HTTP/1.1\r\n"
            f"Host: {srv.host}\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 2097152\r\n"
            "Expect: 100-continue\r\n\r\n").encode())
        head = sock.recv(4096)
        sock.close()
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"application/problem+json" in head.lower() or b"problem+json" in head
    finally:
        srv.close()
