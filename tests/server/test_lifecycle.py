"""Server lifecycle: configuration, health, graceful shutdown, resumable and expiring uploads."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urljoin

import requests

import imserver


def repo() -> str:
    return f"life/{uuid.uuid4().hex[:12]}"


digest = imserver.digest


poll = imserver.poll


def test_health_and_readiness():
    with imserver.Server() as srv:
        r = requests.get(srv.url + "/healthz")
        assert r.status_code == 200
        r = requests.get(srv.url + "/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["metadata"] == "ok" and body["blobs"] == "ok"
        # A filesystem store tells its free space; S3 does not.
        assert body["blobs_free_bytes"] is None or body["blobs_free_bytes"] > body["min_free_bytes"]


def test_defaults_create_data_dir_layout():
    with imserver.Server(matrix=False) as srv:
        data = b"layout"
        r = requests.post(f"{srv.url}/v2/{repo()}/blobs/uploads/?digest={digest(data)}", data=data)
        assert r.status_code == 201
        root = Path(srv.data_dir)
        assert (root / "metadata.db").is_file()
        blob = root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()[:2] / hashlib.sha256(data).hexdigest()
        assert blob.read_bytes() == data
        assert list((root / "uploads").iterdir()) == []


def test_env_overrides_config_file(tmp_path):
    cfg = tmp_path / "im.toml"
    cfg.write_text("[registry]\ndelete_enabled = true\n")
    env = {"IMAGE_MANAGER_REGISTRY__DELETE_ENABLED": "false"}
    with imserver.Server(env=env, args=["--config", str(cfg)]) as srv:
        r = requests.delete(f"{srv.url}/v2/{repo()}/manifests/latest")
        assert r.status_code == 405
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_config_file_with_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[registry]\ndelete_enabeld = false\n")
    srv = imserver.Server(args=["--config", str(cfg)])
    try:
        try:
            srv.start(timeout=10)
        except RuntimeError as e:
            assert "delete_enabeld" in str(e)
        else:
            raise AssertionError("server started with a misspelt config key")
    finally:
        srv.close()


def test_json_logs():
    with imserver.Server(env={"RUST_LOG": "info"}, args=["--log-json"]) as srv:
        requests.get(srv.url + "/v2/")
        first = srv.log().strip().splitlines()[0]
        assert json.loads(first)["level"] == "INFO"


def test_chunked_upload_resumes_after_restart(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    name = repo()
    srv = imserver.Server(data_dir=str(tmp_path / "data"), port=imserver.free_port())
    try:
        srv.start()
        r = requests.post(f"{srv.url}/v2/{name}/blobs/uploads/")
        assert r.status_code == 202
        location = r.headers["Location"]
        first = data[: 2 * 1024 * 1024]
        r = requests.patch(urljoin(srv.url, location), data=first,
                           headers={"Content-Range": f"0-{len(first) - 1}", "Content-Type": "application/octet-stream"})
        assert r.status_code == 202
        assert srv.stop() == 0, "graceful stop exits 0"

        srv.start()
        r = requests.get(urljoin(srv.url, location))
        assert r.status_code == 204
        assert r.headers["Range"] == f"0-{len(first) - 1}"
        rest = data[len(first):]
        r = requests.patch(urljoin(srv.url, location), data=rest,
                           headers={"Content-Range": f"{len(first)}-{len(data) - 1}",
                                    "Content-Type": "application/octet-stream"})
        assert r.status_code == 202
        r = requests.put(urljoin(srv.url, location) + f"?digest={digest(data)}")
        assert r.status_code == 201
        r = requests.get(f"{srv.url}/v2/{name}/blobs/{digest(data)}")
        assert r.content == data
    finally:
        srv.close()


def test_in_flight_request_finishes_on_sigterm():
    data = os.urandom(256 * 1024)
    name = repo()
    with imserver.Server() as srv:
        r = requests.post(f"{srv.url}/v2/{name}/blobs/uploads/")
        location = r.headers["Location"]
        sock = socket.create_connection(("127.0.0.1", srv.port))
        head = (f"PATCH {location} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {len(data)}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Range: 0-{len(data) - 1}\r\n"
                "Expect: 100-continue\r\n\r\n")
        sock.sendall(head.encode())
        # "100 Continue" comes when the handler starts reading the body: the request is in flight.
        interim = sock.recv(4096).decode()
        assert interim.startswith("HTTP/1.1 100"), interim
        srv.proc.send_signal(signal.SIGTERM)
        sock.sendall(data)
        reply = sock.recv(4096).decode()
        sock.close()
        assert reply.startswith("HTTP/1.1 202"), reply
        assert srv.proc.wait(20) == 0


def test_abandoned_upload_expires():
    env = {"IMAGE_MANAGER_REGISTRY__UPLOAD_EXPIRY_SECS": "1",
           "IMAGE_MANAGER_REGISTRY__UPLOAD_SWEEP_INTERVAL_SECS": "1"}
    with imserver.Server(env=env) as srv:
        name = repo()
        r = requests.post(f"{srv.url}/v2/{name}/blobs/uploads/")
        location = urljoin(srv.url, r.headers["Location"])
        requests.patch(location, data=b"abc", headers={"Content-Range": "0-2"})
        # With the filesystem store (the default), the session's data is visible on disk.
        on_disk = "--storage" not in srv.extra
        uploads = Path(srv.data_dir) / "uploads"
        if on_disk:
            assert len(list(uploads.iterdir())) == 1
        poll(lambda: requests.get(location).status_code == 404, what="session expiry")
        assert requests.get(location).json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        if on_disk:
            # The sweep forgets the session, then removes its data: the 404 may come first.
            poll(lambda: list(uploads.iterdir()) == [], what="upload data removal")


def test_refuses_a_schema_newer_than_it_knows(tmp_path):
    """A replica must not write to a schema it does not understand."""
    import sqlite3

    data = tmp_path / "data"
    with imserver.Server(data_dir=str(data), matrix=False):
        pass
    db = sqlite3.connect(data / "metadata.db")
    db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
               "VALUES (99999, 'from the future', 1, x'00', 0)")
    db.commit()
    db.close()
    srv = imserver.Server(data_dir=str(data), matrix=False)
    try:
        try:
            srv.start(timeout=10)
        except RuntimeError as e:
            assert "99999" in str(e) and "newer" in str(e)
        else:
            raise AssertionError("server started against a newer schema")
    finally:
        srv.close()
    out = subprocess.run([imserver.binary(), "migrate", "--data-dir", str(data)], capture_output=True, text=True)
    assert out.returncode != 0 and "newer" in out.stderr


def test_blob_redirects_with_a_presigning_store():
    """`storage.redirect`: on S3 a blob GET readable in the repository is a 307 to a presigned URL
    that serves the bytes (Range too); a blob the repository does not hold is still 404, never
    a URL; a filesystem store serves the bytes itself."""
    on_s3 = "s3://" in os.environ.get("IM_TEST_SERVER_ARGS", "")
    with imserver.Server(env={"IMAGE_MANAGER_STORAGE__REDIRECT": "true"}) as srv:
        name, data = repo(), os.urandom(5000)
        d = digest(data)
        r = requests.post(f"{srv.url}/v2/{name}/blobs/uploads/?digest={d}", data=data, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.get(f"{srv.url}/v2/{name}/blobs/{d}", allow_redirects=False, timeout=30)
        if on_s3:
            assert r.status_code == 307, r.text
            assert r.headers["Docker-Content-Digest"] == d
            location = r.headers["Location"]
            assert location.startswith("http") and "X-Amz-Signature=" in location
            assert requests.get(location, timeout=30).content == data
            ranged = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=30)
            assert ranged.status_code == 206 and ranged.content == data[10:20]
        else:
            assert r.status_code == 200 and r.content == data
        other = requests.get(f"{srv.url}/v2/{repo()}/blobs/{d}", allow_redirects=False, timeout=30)
        assert other.status_code == 404 and "Location" not in other.headers
        assert other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
