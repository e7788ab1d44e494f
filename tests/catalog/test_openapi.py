"""The OpenAPI document of /api/v1: generated from the code, served at /api/v1/openapi.json,
naming every route, and true to the server: schemathesis (from PyPI) generates requests from it
against a running server and checks that no answer is a 5xx and every answer matches the
document (status code, content type, body schema)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import imserver

ROUTES = {
    "/api/v1/images": {"get", "post"},
    "/api/v1/images/{id}": {"get", "patch", "delete"},
    "/api/v1/images/uploads": {"post"},
    "/api/v1/images/uploads/{id}": {"get", "patch", "put", "delete"},
    "/api/v1/packages": {"post"},
    "/api/v1/openapi.json": {"get"},
    "/api/v1/admin/namespaces": {"get"},
    "/api/v1/admin/namespaces/{ns}": {"get"},
    "/api/v1/admin/namespaces/{ns}/quota": {"put", "delete"},
    "/api/v1/admin/namespaces/{ns}/visibility": {"put"},
    "/api/v1/admin/namespaces/{ns}/members": {"get"},
    "/api/v1/admin/namespaces/{ns}/members/{principal}": {"put", "delete"},
    "/api/v1/admin/users": {"get", "post"},
    "/api/v1/admin/users/{name}": {"delete"},
    "/api/v1/admin/users/{name}/disable": {"post"},
    "/api/v1/admin/robots": {"get", "post"},
    "/api/v1/admin/robots/{name}": {"delete"},
    "/api/v1/admin/robots/{name}/disable": {"post"},
    "/api/v1/admin/audit": {"get"},
    "/api/v1/vims": {"get", "post"},
    "/api/v1/vims/{id}": {"get", "patch", "delete"},
    "/api/v1/vims/{id}/test": {"post"},
    "/api/v1/vims/{id}/images": {"get"},
    "/api/v1/vims/{id}/sync": {"post"},
    "/api/v1/vims/{id}/images/{remote}/import": {"post"},
    "/api/v1/distributions": {"get", "post"},
    "/api/v1/distributions/{id}": {"get"},
    "/api/v1/distributions/{id}/events": {"get"},
    "/api/v1/distributions/{id}/cancel": {"post"},
    "/api/v1/distributions/{id}/retry": {"post"},
    "/api/v1/undistributions": {"post"},
    "/api/v1/images/{id}/vims": {"get"},
}


@pytest.fixture(scope="module")
def srv():
    with imserver.Server() as s:
        yield s


def test_document_is_served_and_names_every_route(srv):
    r = requests.get(srv.url + "/api/v1/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = {p: {m for m in ops if m in ("get", "post", "put", "patch", "delete")} for p, ops in doc["paths"].items()}
    assert paths == ROUTES
    # Every operation documents its errors as problem+json.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            errors = {code: resp for code, resp in op["responses"].items() if code.startswith(("4", "5"))}
            if path == "/api/v1/openapi.json":
                continue
            assert errors, f"{method} {path} documents no error"
            for code, resp in errors.items():
                assert "application/problem+json" in resp["content"], (method, path, code)
    assert "ProblemDoc" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["basic"]["scheme"] == "basic"


def test_vim_settings_the_engine_cannot_run_are_refused(srv):
    """Regressions found while documenting the VIM API (no VIM is contacted)."""
    def register(body):
        return requests.post(srv.url + "/api/v1/vims", json=body, timeout=30)

    # A concurrency beyond what a semaphore holds was accepted (201) and panicked the
    # distribution worker on the VIM's first transfer.
    base = {"type": "oci-registry", "url": "http://127.0.0.1:9"}
    for n in (0, 1025, 1 << 62):
        r = register({**base, "name": f"conc-{n}", "concurrency": n})
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json", (n, r.text)
    r = register({**base, "name": "conc-ok", "concurrency": 1024})
    assert r.status_code == 201, r.text
    assert requests.delete(f"{srv.url}/api/v1/vims/{r.json()['id']}", timeout=30).status_code == 204


def test_ids_no_database_key_can_hold_are_unknown_not_errors(srv):
    """Found by schemathesis on MariaDB (ascii key columns: "Illegal mix of collations") and
    PostgreSQL (NUL in text): ids, names and digests of any text answer 404, never 500."""
    for path in ("/api/v1/vims/%C3%87%C2%BB%17wZi/test", "/api/v1/vims/o%F3%AA%B8%9F/sync",
                 "/api/v1/vims/%1D%F0%A8%9B%AD/images/x/import", "/api/v1/distributions/%C3%87%00x/cancel"):
        r = requests.post(srv.url + path, json={}, timeout=30)
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json", (path, r.text)
    for body in ({"images": ["\u00ce\u0000x", "sha256:\u00e9"], "vims": ["v"]},
                 {"images": ["0" * 32], "vims": ["\u00c7\u0000"]}):
        for path in ("/api/v1/distributions", "/api/v1/undistributions"):
            r = requests.post(srv.url + path, json=body, timeout=30)
            assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json", (path, r.text)
    r = requests.get(srv.url + "/api/v1/distributions/%C3%87%00x", timeout=30)
    assert r.status_code == 404, r.text


def test_schemathesis_finds_no_server_error_and_no_schema_violation(srv, tmp_path):
    st = shutil.which("schemathesis") or shutil.which("st")
    cmd = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    r = subprocess.run(
        [*cmd, "run", f"{srv.url}/api/v1/openapi.json", "--url", srv.url,
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
         "--max-examples", "25", "--seed", "20261128", "--request-timeout", "30",
         "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    out = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, out + "\n--- server log ---\n" + srv.log()
    assert "No issues found" in r.stdout or "passed" in r.stdout, out
