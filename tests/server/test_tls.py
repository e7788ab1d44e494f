"""Transport: HTTPS with rustls from a PEM certificate and key, and the rule that plain HTTP is
served on loopback only (unless a TLS-terminating proxy is declared)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import imserver

pytestmark = pytest.mark.backend_independent

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))

ADMIN = ("root", "root-password-1")


def make_cert(folder: Path, name: str = "server") -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (and localhost), made by openssl."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def serve_refusal(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([imserver.binary(), "serve", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60)


def any_port_on_all_addresses() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def srv(cert):
    with imserver.Server(tls=cert) as s:
        yield s


def test_https_serves_the_registry_and_the_api(srv, cert):
    assert srv.url.startswith("https://")
    r = requests.get(srv.url + "/v2/", verify=cert[0], timeout=30)
    assert r.status_code == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    data = b"over tls"
    d = imserver.digest(data)
    r = requests.post(f"{srv.url}/v2/tls/app/blobs/uploads/?digest={d}", data=data, verify=cert[0], timeout=30)
    assert r.status_code == 201, r.text
    assert requests.get(f"{srv.url}/v2/tls/app/blobs/{d}", verify=cert[0], timeout=30).content == data


def test_https_negotiates_http2_and_http1(srv, cert):
    ctx = ssl.create_default_context(cafile=cert[0])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_untrusted_and_plain_clients_get_nothing(srv, tmp_path):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(srv.url + "/v2/", timeout=30)  # the system trust store does not know it
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{srv.port}/v2/", timeout=30)
    # A client that opens the connection and never speaks TLS does not stop others.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10):
        assert requests.get(srv.url + "/healthz", verify=srv.verify, timeout=30).status_code == 200


def test_skopeo_copies_through_https_with_the_certificate(srv, cert, tmp_path):
    from ocilayout import Layout, read_layout

    skopeo = shutil.which("skopeo") or "/usr/bin/skopeo"
    src = Layout(tmp_path / "src")
    img = src.add_image("tlsapp", big_layer=32 * 1024)
    src.tag(img.descriptor(), "v1")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(cert[0], certs / "ca.crt")
    (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = dict(os.environ, REGISTRY_AUTH_FILE=str(tmp_path / "auth.json"))
    (tmp_path / "auth.json").write_text("{}")
    base = [skopeo, "--policy", str(tmp_path / "policy.json")]
    dest = f"docker://{srv.host}/tls/skopeo:v1"
    p = subprocess.run([*base, "copy", "--dest-cert-dir", str(certs), f"oci:{src.root}:v1", dest],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([*base, "copy", "--src-cert-dir", str(certs), dest, f"oci:{tmp_path / 'out'}:v1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    refs, _ = read_layout(tmp_path / "out")
    assert refs["v1"]["digest"] == img.digest
    # Without the certificate skopeo refuses the server (verification on by default).
    p = subprocess.run([*base, "inspect", "--raw", dest], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "certificate" in p.stderr


def test_challenge_realm_is_https_with_tls(tmp_path, cert):
    s = imserver.Server(tls=cert, args=["--auth", "token"])
    try:
        for url in s.databases:
            imserver.create_database(url)
        s._created = True
        r = subprocess.run([imserver.binary(), "user", "add", ADMIN[0], "--admin", "--password-stdin",
                            "--data-dir", s.data_dir, *s.extra], input=ADMIN[1] + "\n", capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        s.start()
        r = requests.get(f"{s.url}/v2/x/app/tags/list", verify=cert[0], timeout=30)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{s.host}/token"')
        r = requests.get(f"{s.url}/token", params={"scope": "repository:x/app:pull"}, auth=ADMIN, verify=cert[0],
                         timeout=30)
        assert r.status_code == 200 and r.json()["token"]
    finally:
        s.close()


def test_plain_http_beyond_loopback_is_refused(tmp_path):
    port = any_port_on_all_addresses()
    r = serve_refusal(["--listen", f"0.0.0.0:{port}", "--auth", "token"], tmp_path)
    assert r.returncode != 0
    assert "plain HTTP" in r.stderr and "--tls-cert" in r.stderr and "--allow-plain-http" in r.stderr


def test_tls_beyond_loopback_and_declared_proxy_are_served(tmp_path, cert):
    for extra in (["--tls-cert", cert[0], "--tls-key", cert[1]], ["--allow-plain-http"]):
        port = any_port_on_all_addresses()
        data = tmp_path / str(port)
        p = subprocess.Popen([imserver.binary(), "serve", "--listen", f"0.0.0.0:{port}", "--auth", "token",
                              "--data-dir", str(data), *extra], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            scheme = "https" if "--tls-cert" in extra else "http"

            def ready():
                if p.poll() is not None:
                    raise AssertionError(p.stderr.read() if p.stderr else "exited")
                try:
                    return requests.get(f"{scheme}://127.0.0.1:{port}/healthz", verify=cert[0], timeout=2).ok
                except requests.RequestException:
                    return False

            imserver.poll(ready, what=f"server on 0.0.0.0:{port} ({scheme})")
        finally:
            p.terminate()
            p.wait(30)


def test_bad_certificate_or_key_stops_start_with_a_reason(tmp_path, cert):
    other = make_cert(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", cert[0], "--tls-key", other[1]], "do not form a usable pair"),
        (["--tls-cert", str(garbage), "--tls-key", cert[1]], "no PEM certificate"),
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", cert[1]], "missing.crt"),
    ]
    for args, why in cases:
        r = serve_refusal(["--listen", "127.0.0.1:0", *args], tmp_path / "d")
        assert r.returncode != 0 and why in r.stderr, (args, r.stderr)
    r = serve_refusal(["--listen", "127.0.0.1:0", "--tls-cert", cert[0]], tmp_path / "d")
    assert r.returncode != 0 and "--tls-key" in r.stderr
