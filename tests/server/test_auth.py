"""Access control (`--auth token`): users, robots, namespace roles, the Docker token flow, the
audit log, and attacks that must fail. The first admin is created with the CLI against the
server's own store before it starts, as an operator would."""

from __future__ import annotations

import base64
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

import imserver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))

ADMIN = ("root", "root-password-1")
PASSWORD = "password-123"
NS = "team"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


digest = imserver.digest


cli = imserver.cli


def new_server(env: dict | None = None) -> imserver.Server:
    srv = imserver.Server(args=["--auth", "token"], env=env)
    r = cli(srv, "user", "add", ADMIN[0], "--admin", "--password-stdin", stdin=ADMIN[1] + "\n")
    assert r.returncode == 0, r.stderr
    return srv.start()


def api(srv, method, path, auth=ADMIN, **kw):
    return requests.request(method, srv.url + path, auth=auth, timeout=30, **kw)


def token(srv, scope: str | list[str], auth=None) -> str:
    scopes = [scope] if isinstance(scope, str) else scope
    r = requests.get(f"{srv.url}/token", params=[("service", "image-manager")] + [("scope", s) for s in scopes],
                     auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def push_blob(srv, repo, data, **kw):
    return requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data, timeout=30, **kw)


def manifest_for(config: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [],
    }).encode()


def push_image(srv, repo, tag, auth=ADMIN, **kw) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    assert push_blob(srv, repo, config, auth=auth, **kw).status_code == 201
    m = manifest_for(config)
    r = requests.put(f"{srv.url}/v2/{repo}/manifests/{tag}", data=m,
                     headers={"Content-Type": MT_MANIFEST, **kw.pop("headers", {})}, auth=auth, timeout=30, **kw)
    assert r.status_code == 201, r.text
    return digest(m)


def is_oci_error(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["errors"][0]["code"] == code, r.text


def is_problem(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.json()["status"] == status


@pytest.fixture(scope="module")
def srv():
    s = new_server()
    try:
        for name in ("reader", "writer", "maintainer", "nsadmin", "outsider"):
            r = api(s, "POST", "/api/v1/admin/users", json={"name": name, "password": PASSWORD})
            assert r.status_code == 201, r.text
        for name in ("reader", "writer", "maintainer"):
            assert api(s, "PUT", f"/api/v1/admin/namespaces/{NS}/members/{name}", json={"role": name}).status_code == 200
        assert api(s, "PUT", f"/api/v1/admin/namespaces/{NS}/members/nsadmin", json={"role": "admin"}).status_code == 200
        push_image(s, f"{NS}/app", "v1")
        push_image(s, "other/app", "v1")
        yield s
    finally:
        s.close()


def test_none_refuses_non_loopback_listen(tmp_path):
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([imserver.binary(), "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--auth none" in r.stderr and "loopback" in r.stderr


def test_challenge_names_the_token_endpoint_and_scope(srv):
    r = requests.get(f"{srv.url}/v2/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{srv.host}/token",service="image-manager"')
    r = requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1")
    is_oci_error(r, 401, "UNAUTHORIZED")
    # A read asks for push too (granted only where the account holds it), so a client that
    # keeps the token of its first read can push with it.
    assert r.headers["WWW-Authenticate"].endswith(f',scope="repository:{NS}/app:pull,push"')
    r = requests.post(f"{srv.url}/v2/{NS}/app/blobs/uploads/")
    assert r.headers["WWW-Authenticate"].endswith(f',scope="repository:{NS}/app:pull,push"')
    # The admin API answers problem+json.
    is_problem(requests.get(f"{srv.url}/api/v1/admin/namespaces"), 401)


def test_token_flow_get_and_post(srv):
    t = token(srv, f"repository:{NS}/app:pull", auth=("reader", PASSWORD))
    assert requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(t)).status_code == 200
    assert requests.get(f"{srv.url}/v2/", headers=bearer(t)).status_code == 200
    r = requests.post(f"{srv.url}/token", data={"grant_type": "password", "username": "writer",
                                                "password": PASSWORD, "service": "image-manager",
                                                "scope": f"repository:{NS}/app:pull,push"})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == f"repository:{NS}/app:pull,push"
    t = r.json()["access_token"]
    push_image(srv, f"{NS}/app", "by-token", auth=None, headers=bearer(t))
    # Only granted actions are in the token: a reader asking for push gets pull only.
    r = requests.get(f"{srv.url}/token", params={"scope": f"repository:{NS}/app:pull,push,delete"},
                     auth=("reader", PASSWORD))
    assert r.json()["scope"] == f"repository:{NS}/app:pull"
    t = r.json()["token"]
    r = push_blob(srv, f"{NS}/app", b"nope", headers=bearer(t))
    is_oci_error(r, 403, "DENIED")
    assert "WWW-Authenticate" not in r.headers, "a wider token would not help a reader"


# role -> (pull, push, delete, quota admin) on namespace NS
MATRIX = {
    None: (False, False, False, False),
    "outsider": (False, False, False, False),
    "reader": (True, False, False, False),
    "writer": (True, True, False, False),
    "maintainer": (True, True, True, False),
    "nsadmin": (True, True, True, True),
    "root": (True, True, True, True),
}


def creds(role):
    if role is None:
        return None
    return ADMIN if role == "root" else (role, PASSWORD)


@pytest.mark.parametrize("surface", ["basic", "token"])
@pytest.mark.parametrize("role", list(MATRIX))
def test_matrix_roles_actions_surfaces(srv, role, surface):
    can_pull, can_push, can_delete, can_admin = MATRIX[role]
    repo = f"{NS}/m{uuid.uuid4().hex[:8]}"
    seeded = push_image(srv, repo, "seed")
    refused = 401 if role is None else 403
    if surface == "basic":
        auth, headers = creds(role), {}
    else:
        t = token(srv, f"repository:{repo}:pull,push,delete", auth=creds(role))
        auth, headers = None, bearer(t)
        # The token lacks what the account lacks: 403 DENIED, or 401 for an anonymous token
        # (logging in may help).
        refused = 401 if role is None else 403

    r = requests.get(f"{srv.url}/v2/{repo}/manifests/seed", auth=auth, headers=headers)
    if can_pull:
        assert r.status_code == 200 and digest(r.content) == seeded
        assert requests.get(f"{srv.url}/v2/{repo}/tags/list", auth=auth, headers=headers).json()["tags"] == ["seed"]
    else:
        is_oci_error(r, refused, "UNAUTHORIZED" if refused == 401 else "DENIED")

    data = os.urandom(64)
    r = push_blob(srv, repo, data, auth=auth, headers=headers)
    if can_push:
        assert r.status_code == 201
    else:
        is_oci_error(r, refused, "UNAUTHORIZED" if refused == 401 else "DENIED")
        assert requests.head(f"{srv.url}/v2/{repo}/blobs/{digest(data)}", auth=ADMIN).status_code == 404

    r = requests.delete(f"{srv.url}/v2/{repo}/manifests/seed", auth=auth, headers=headers)
    if can_delete:
        assert r.status_code == 202
    else:
        is_oci_error(r, refused, "UNAUTHORIZED" if refused == 401 else "DENIED")
        assert requests.get(f"{srv.url}/v2/{repo}/manifests/seed", auth=ADMIN).status_code == 200

    if surface == "basic":
        r = api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/quota", auth=auth, json={"bytes": 10**12})
        if can_admin:
            assert r.status_code == 200
        else:
            is_problem(r, 401 if role is None else 403)
        r = api(srv, "GET", "/api/v1/admin/users", auth=auth)
        if role == "root":
            assert r.status_code == 200 and "reader" in [u["name"] for u in r.json()]
        else:
            is_problem(r, 401 if role is None else 403)


def test_catalog_shows_only_readable_repositories(srv):
    names = requests.get(f"{srv.url}/v2/_catalog", auth=("reader", PASSWORD)).json()["repositories"]
    assert f"{NS}/app" in names and all(n.startswith(NS + "/") for n in names)
    assert "other/app" in requests.get(f"{srv.url}/v2/_catalog", auth=ADMIN).json()["repositories"]
    assert requests.get(f"{srv.url}/v2/_catalog", auth=("outsider", PASSWORD)).json()["repositories"] == []
    is_oci_error(requests.get(f"{srv.url}/v2/_catalog"), 401, "UNAUTHORIZED")


def test_public_namespace_allows_anonymous_pull_only(srv):
    ns = "pub" + uuid.uuid4().hex[:6]
    push_image(srv, f"{ns}/app", "v1")
    assert requests.get(f"{srv.url}/v2/{ns}/app/manifests/v1").status_code == 401
    assert api(srv, "PUT", f"/api/v1/admin/namespaces/{ns}/visibility", json={"public": True}).status_code == 200
    assert requests.get(f"{srv.url}/v2/{ns}/app/manifests/v1").status_code == 200
    anon = token(srv, f"repository:{ns}/app:pull,push")
    assert requests.get(f"{srv.url}/v2/{ns}/app/manifests/v1", headers=bearer(anon)).status_code == 200
    # An anonymous token that lacks push: 401 with a challenge (logging in may help).
    r = push_blob(srv, f"{ns}/app", b"x", headers=bearer(anon))
    is_oci_error(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    is_oci_error(push_blob(srv, f"{ns}/app", b"x", auth=("outsider", PASSWORD)), 403, "DENIED")


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_tampered_and_unsigned_tokens_are_refused(srv):
    t = token(srv, f"repository:{NS}/app:pull", auth=("reader", PASSWORD))
    head, payload, sig = t.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"] = [{"type": "repository", "name": f"{NS}/app", "actions": ["pull", "push", "delete"]}]
    forged = f"{head}.{b64(claims)}.{sig}"
    is_oci_error(requests.delete(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(forged)), 401, "UNAUTHORIZED")
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    is_oci_error(requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(unsigned)), 401, "UNAUTHORIZED")
    hs = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{sig}"
    is_oci_error(requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(hs)), 401, "UNAUTHORIZED")
    assert requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", auth=ADMIN).status_code == 200


def test_token_for_one_repository_never_opens_another(srv):
    writer = ("writer", PASSWORD)
    t = token(srv, f"repository:{NS}/app:pull,push", auth=writer)
    # Where the account has no right, a token does not help: 403 DENIED, no challenge.
    for r in (requests.get(f"{srv.url}/v2/other/app/manifests/v1", headers=bearer(t)),
              push_blob(srv, "other/app", b"y", headers=bearer(t))):
        is_oci_error(r, 403, "DENIED")
        assert "WWW-Authenticate" not in r.headers
    # Where it has one the token lacks: 401 insufficient_scope, naming the scope to ask for.
    r = requests.get(f"{srv.url}/v2/{NS}/app2/tags/list", headers=bearer(t))
    is_oci_error(r, 401, "UNAUTHORIZED")
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert f'scope="repository:{NS}/app2:pull,push"' in r.headers["WWW-Authenticate"]
    # Mounting from a repository the account may not read is an ordinary upload, not a mount.
    cfg = requests.get(f"{srv.url}/v2/other/app/manifests/v1", auth=ADMIN).json()["config"]["digest"]
    r = requests.post(f"{srv.url}/v2/{NS}/app/blobs/uploads/?mount={cfg}&from=other/app", headers=bearer(t))
    assert r.status_code == 202


def challenge_params(header: str) -> dict:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def follow_challenge(srv, resp, auth) -> str:
    """What a token-reusing client does on a 401: ask the realm for the challenge's scopes."""
    params = challenge_params(resp.headers["WWW-Authenticate"])
    r = requests.get(params["realm"], params=[("service", params["service"])] +
                     [("scope", s) for s in params["scope"].split(" ")], auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_insufficient_scope_makes_a_token_reusing_client_fetch_a_wider_token(srv):
    writer = ("writer", PASSWORD)
    repo = f"{NS}/scope{uuid.uuid4().hex[:6]}"
    t = token(srv, f"repository:{repo}:pull", auth=writer)
    data = os.urandom(100)
    r = push_blob(srv, repo, data, headers=bearer(t))
    is_oci_error(r, 401, "UNAUTHORIZED")
    params = challenge_params(r.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope" and params["scope"] == f"repository:{repo}:pull,push"
    wider = follow_challenge(srv, r, writer)
    assert push_blob(srv, repo, data, headers=bearer(wider)).status_code == 201
    # A reader asking the same gets a token without push, and then 403: no endless loop.
    reader = ("reader", PASSWORD)
    r = push_blob(srv, repo, data, headers=bearer(token(srv, f"repository:{repo}:pull", auth=reader)))
    is_oci_error(r, 403, "DENIED")


def test_authenticated_cross_repository_mount_mounts(srv):
    writer = ("writer", PASSWORD)
    src, dst = f"{NS}/msrc{uuid.uuid4().hex[:6]}", f"{NS}/mdst{uuid.uuid4().hex[:6]}"
    data = os.urandom(300)
    assert push_blob(srv, src, data, auth=writer).status_code == 201
    url = f"{srv.url}/v2/{dst}/blobs/uploads/?mount={digest(data)}&from={src}"
    r = requests.post(url)
    is_oci_error(r, 401, "UNAUTHORIZED")
    params = challenge_params(r.headers["WWW-Authenticate"])
    assert params["scope"].split(" ") == [f"repository:{dst}:pull,push", f"repository:{src}:pull"]
    t = follow_challenge(srv, r, writer)
    r = requests.post(url, headers=bearer(t))
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest(data)
    # A token for the target alone: the account may read the source, so it is asked to widen.
    dst2 = dst + "b"
    narrow = token(srv, f"repository:{dst2}:pull,push", auth=writer)
    url2 = f"{srv.url}/v2/{dst2}/blobs/uploads/?mount={digest(data)}&from={src}"
    r = requests.post(url2, headers=bearer(narrow))
    is_oci_error(r, 401, "UNAUTHORIZED")
    params = challenge_params(r.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"].split(" ") == [f"repository:{dst2}:pull,push", f"repository:{src}:pull"]
    assert requests.post(url2, headers=bearer(follow_challenge(srv, r, writer))).status_code == 201


def test_path_tricks_in_scopes_and_names(srv):
    for scope in (f"repository:{NS}/../other/app:pull", "repository:other/app/..:pull",
                  f"repository:{NS}/app:pull repository:Other/App:pull", "repository:/other/app:pull",
                  "repository:%2e%2e/other:pull", "bogus"):
        r = requests.get(f"{srv.url}/token", params={"scope": scope}, auth=("reader", PASSWORD))
        assert r.status_code == 400, (scope, r.status_code, r.text)
    r = requests.get(f"{srv.url}/token", params={"scope": f"repository:{NS}/app:pull", "service": "evil"},
                     auth=("reader", PASSWORD))
    assert r.status_code == 400
    assert requests.get(f"{srv.url}/v2/{NS}/../other/app/manifests/v1", auth=("reader", PASSWORD)).status_code in (400, 403, 404)
    assert requests.get(f"{srv.url}/v2/{NS}%2F..%2Fother/app/manifests/v1", auth=("reader", PASSWORD)).status_code in (400, 404)


def test_wrong_password_is_refused_slowed_and_audited(srv):
    user = "victim" + uuid.uuid4().hex[:4]
    assert api(srv, "POST", "/api/v1/admin/users", json={"name": user, "password": PASSWORD}).status_code == 201
    times = []
    for _ in range(4):
        start = time.monotonic()
        is_oci_error(requests.get(f"{srv.url}/v2/", auth=(user, "wrong")), 401, "UNAUTHORIZED")
        times.append(time.monotonic() - start)
    assert times[-1] > 0.5 and times[-1] > times[0], times
    assert requests.get(f"{srv.url}/token", auth=(user, "wrong")).status_code == 401
    log = api(srv, "GET", "/api/v1/admin/audit", params={"actor": user}).json()
    assert len(log) >= 5 and all(e["action"] == "login" and e["outcome"] == "failed" for e in log)
    assert requests.get(f"{srv.url}/v2/", auth=("nobody", "x")).status_code == 401


def test_parallel_guesses_wait_for_each_other(srv):
    """Concurrent wrong passwords for one account from one address are checked one after
    another, each after the delay the failures before it earned (lower bounds only)."""
    from concurrent.futures import ThreadPoolExecutor
    user = "victim" + uuid.uuid4().hex[:4]
    assert api(srv, "POST", "/api/v1/admin/users", json={"name": user, "password": PASSWORD}).status_code == 201
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda i: requests.get(f"{srv.url}/v2/", auth=(user, f"guess{i}"), timeout=60).status_code,
                              range(6)))
    assert codes == [401] * 6
    log = api(srv, "GET", "/api/v1/admin/audit", params={"actor": user}).json()
    ms = sorted(e["at"] for e in log)  # ms since the epoch
    assert len(ms) == 6
    # 200 + 400 + 800 + 1600 + 3200 ms of delays between the first failure and the sixth.
    assert ms[-1] - ms[0] >= 6000, f"failures came {ms[-1] - ms[0]:.0f} ms apart: parallel guesses skipped the delay"


def test_cached_basic_login_ends_with_the_account(srv):
    user = "cached" + uuid.uuid4().hex[:4]
    assert api(srv, "POST", "/api/v1/admin/users", json={"name": user, "password": PASSWORD}).status_code == 201
    for _ in range(3):
        assert requests.get(f"{srv.url}/v2/", auth=(user, PASSWORD)).status_code == 200
    assert requests.get(f"{srv.url}/v2/", auth=(user, PASSWORD + "x")).status_code == 401
    assert api(srv, "POST", f"/api/v1/admin/users/{user}/disable").status_code in (200, 204)
    is_oci_error(requests.get(f"{srv.url}/v2/", auth=(user, PASSWORD)), 401, "UNAUTHORIZED")


def api_token(srv, auth, **params) -> requests.Response:
    return requests.get(f"{srv.url}/token", params={"service": "image-manager-api", **params}, auth=auth, timeout=30)


def test_api_bearer_tokens_have_their_own_audience(srv):
    user = "apiuser" + uuid.uuid4().hex[:4]
    assert api(srv, "POST", "/api/v1/admin/users", json={"name": user, "password": PASSWORD}).status_code == 201
    assert api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/members/{user}", json={"role": "reader"}).status_code == 200
    r = api_token(srv, (user, PASSWORD))
    assert r.status_code == 200, r.text
    t = r.json()["token"]
    assert requests.get(f"{srv.url}/api/v1/images", headers=bearer(t)).status_code == 200
    # What the account may not do, the token may not either: the API decides per request.
    is_problem(requests.get(f"{srv.url}/api/v1/admin/users", headers=bearer(t)), 403)
    admin_t = api_token(srv, ADMIN).json()["token"]
    assert requests.get(f"{srv.url}/api/v1/admin/users", headers=bearer(admin_t)).status_code == 200
    # A registry token is not an API token, and back.
    reg_t = token(srv, f"repository:{NS}/app:pull", auth=(user, PASSWORD))
    is_problem(requests.get(f"{srv.url}/api/v1/images", headers=bearer(reg_t)), 401)
    is_oci_error(requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(t)), 401, "UNAUTHORIZED")
    # API tokens take no scope, and need an account.
    assert api_token(srv, (user, PASSWORD), scope=f"repository:{NS}/app:pull").status_code == 400
    assert api_token(srv, None).status_code == 401
    # A disabled account's token stops working at once.
    assert api(srv, "POST", f"/api/v1/admin/users/{user}/disable").status_code in (200, 204)
    is_problem(requests.get(f"{srv.url}/api/v1/images", headers=bearer(t)), 401)


def test_robots_get_api_tokens(srv):
    name = "onap" + uuid.uuid4().hex[:4]
    r = cli(srv, "robot", "add", name, "--namespace", NS, "--actions", "pull,push")
    assert r.returncode == 0, r.stderr
    t = api_token(srv, (f"robot${name}", r.stdout.strip())).json()["token"]
    assert requests.get(f"{srv.url}/api/v1/images", headers=bearer(t)).status_code == 200


def test_robots_are_limited_and_expire(srv):
    r = cli(srv, "robot", "add", "ci", "--namespace", NS, "--actions", "pull,push")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert len(secret) >= 32
    robot = ("robot$ci", secret)
    push_image(srv, f"{NS}/from-ci", "v1", auth=robot)
    is_oci_error(requests.delete(f"{srv.url}/v2/{NS}/from-ci/manifests/v1", auth=robot), 403, "DENIED")
    is_oci_error(requests.get(f"{srv.url}/v2/other/app/manifests/v1", auth=robot), 403, "DENIED")
    r = requests.get(f"{srv.url}/token", params={"scope": "repository:other/app:pull"}, auth=robot)
    assert r.json()["scope"] == ""
    is_oci_error(requests.get(f"{srv.url}/v2/", auth=("robot$ci", "0" * 64)), 401, "UNAUTHORIZED")
    assert "robot$ci" in cli(srv, "robot", "list").stdout

    r = cli(srv, "robot", "add", "old", "--namespace", NS, "--actions", "pull", "--expires-days", "0")
    assert r.returncode == 0, r.stderr
    old = ("robot$old", r.stdout.strip())
    is_oci_error(requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", auth=old), 401, "UNAUTHORIZED")
    assert requests.get(f"{srv.url}/token", params={"scope": f"repository:{NS}/app:pull"}, auth=old).status_code == 401

    assert cli(srv, "robot", "disable", "ci").returncode == 0
    is_oci_error(requests.get(f"{srv.url}/v2/", auth=robot), 401, "UNAUTHORIZED")


def test_disabled_and_deleted_users_cannot_log_in(srv):
    user = "temp" + uuid.uuid4().hex[:4]
    assert api(srv, "POST", "/api/v1/admin/users", json={"name": user, "password": PASSWORD}).status_code == 201
    assert requests.get(f"{srv.url}/v2/", auth=(user, PASSWORD)).status_code == 200
    assert api(srv, "POST", f"/api/v1/admin/users/{user}/disable").status_code == 204
    assert requests.get(f"{srv.url}/v2/", auth=(user, PASSWORD)).status_code == 401
    assert api(srv, "DELETE", f"/api/v1/admin/users/{user}").status_code == 204
    assert user not in cli(srv, "user", "list").stdout


def test_audit_records_pushes_deletes_and_admin_actions(srv):
    since = int(time.time() * 1000)
    repo = f"{NS}/audited"
    push_image(srv, repo, "v1", auth=("writer", PASSWORD))
    requests.delete(f"{srv.url}/v2/{repo}/manifests/v1", auth=("writer", PASSWORD))
    requests.delete(f"{srv.url}/v2/{repo}/manifests/v1", auth=("maintainer", PASSWORD))
    api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/quota", json={"bytes": 10**12})
    log = api(srv, "GET", "/api/v1/admin/audit", params={"namespace": NS, "since": since}).json()
    seen = [(e["actor"], e["action"], e["outcome"]) for e in log]
    assert ("writer", "manifest.push", "ok") in seen
    assert ("writer", "manifest.delete", "denied") in seen
    assert ("maintainer", "manifest.delete", "ok") in seen
    assert ("root", "quota.set", "ok") in seen
    assert all(e["remote"] == "127.0.0.1" for e in log)
    assert api(srv, "GET", "/api/v1/admin/audit", params={"actor": "writer", "since": since}).json()
    assert api(srv, "GET", "/api/v1/admin/audit", params={"until": since - 10**9}).json() == []
    # A namespace admin reads their namespace's log, not everyone's.
    assert api(srv, "GET", "/api/v1/admin/audit", auth=("nsadmin", PASSWORD), params={"namespace": NS}).status_code == 200
    is_problem(api(srv, "GET", "/api/v1/admin/audit", auth=("nsadmin", PASSWORD)), 403)
    is_problem(api(srv, "GET", "/api/v1/admin/audit", auth=("writer", PASSWORD), params={"namespace": NS}), 403)


def test_expired_token_is_refused():
    s = new_server(env={"IMAGE_MANAGER_SERVER__TOKEN_TTL_SECS": "1"})
    try:
        push_image(s, "x/app", "v1")
        t = token(s, "repository:x/app:pull", auth=ADMIN)
        assert requests.get(f"{s.url}/v2/x/app/manifests/v1", headers=bearer(t)).status_code == 200
        time.sleep(2.2)
        is_oci_error(requests.get(f"{s.url}/v2/x/app/manifests/v1", headers=bearer(t)), 401, "UNAUTHORIZED")
    finally:
        s.close()


def test_signing_key_is_shared_by_replicas(srv):
    other = srv.replica()
    other.start()
    try:
        t = token(srv, f"repository:{NS}/app:pull", auth=ADMIN)
        assert requests.get(f"{other.url}/v2/{NS}/app/manifests/v1", headers=bearer(t)).status_code == 200
    finally:
        other.stop()


SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"


def test_skopeo_with_creds_through_token_flow(srv, tmp_path):
    from ocilayout import Layout, read_layout

    src = Layout(tmp_path / "src")
    img = src.add_image("authapp", big_layer=64 * 1024)
    src.tag(img.descriptor(), "v1")
    (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (tmp_path / "auth.json").write_text("{}")
    (tmp_path / "registries.conf").write_text("")
    (tmp_path / "registries.d").mkdir()
    env = dict(os.environ, REGISTRY_AUTH_FILE=str(tmp_path / "auth.json"),
               CONTAINERS_REGISTRIES_CONF=str(tmp_path / "registries.conf"))

    def skopeo(*args, check=True):
        cmd = [SKOPEO, "--policy", str(tmp_path / "policy.json"), "--registries.d", str(tmp_path / "registries.d"),
               *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert p.returncode == 0, (p.stderr[-2000:], srv.log())
        return p

    dest = f"docker://{srv.host}/{NS}/skopeo:v1"
    p = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "reader:" + PASSWORD, f"oci:{src.root}:v1", dest,
               check=False)
    assert p.returncode != 0
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "writer:" + PASSWORD, f"oci:{src.root}:v1", dest)
    skopeo("copy", "--src-tls-verify=false", "--src-creds", "reader:" + PASSWORD, dest, f"oci:{tmp_path / 'out'}:v1")
    refs, blobs = read_layout(tmp_path / "out")
    assert refs["v1"]["digest"] == img.digest
    assert skopeo("inspect", "--raw", "--tls-verify=false", dest, check=False).returncode != 0
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", "reader:" + PASSWORD,
                             f"docker://{srv.host}/{NS}/skopeo").stdout)
    assert tags["Tags"] == ["v1"]


def test_oras_login_push_pull(srv, tmp_path, monkeypatch):
    import oras.client

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello through tokens\n")
    c = oras.client.OrasClient(hostname=srv.host, insecure=True)
    c.login(username="writer", password=PASSWORD, hostname=srv.host, tls_verify=False)
    assert c.prefix == "http", c.prefix
    target = f"{srv.host}/{NS}/oras:v1"
    c.push(target=target, files=["notes.txt"])
    r = oras.client.OrasClient(hostname=srv.host, insecure=True)
    r.login(username="reader", password=PASSWORD, hostname=srv.host, tls_verify=False)
    out = r.pull(target=target, outdir=str(tmp_path / "pulled"))
    assert Path(out[0]).read_text() == "hello through tokens\n"
    assert r.get_tags(f"{srv.host}/{NS}/oras") == ["v1"]


def test_refresh_tokens_stand_for_the_account_as_it_is_now(srv):
    r = api(srv, "POST", "/api/v1/admin/users", json={"name": "refresher", "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/members/refresher", json={"role": "reader"}).ok
    form = {"grant_type": "password", "username": "refresher", "password": PASSWORD, "service": "image-manager",
            "scope": f"repository:{NS}/app:pull"}
    r = requests.post(f"{srv.url}/token", data=form, timeout=30)
    assert r.status_code == 200 and "refresh_token" not in r.json()  # only on request
    r = requests.post(f"{srv.url}/token", data={**form, "access_type": "offline", "client_id": "test"}, timeout=30)
    assert r.status_code == 200, r.text
    refresh = r.json()["refresh_token"]
    assert r.json()["issued_at"].endswith("Z")
    # GET with offline_token=true gives one too.
    r = requests.get(f"{srv.url}/token", params={"offline_token": "true", "scope": f"repository:{NS}/app:pull"},
                     auth=("refresher", PASSWORD), timeout=30)
    assert r.json()["refresh_token"]

    # The refresh grant issues access tokens, for any scope the account is allowed now.
    def refreshed(scope, token=refresh):
        return requests.post(f"{srv.url}/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                        "service": "image-manager", "scope": scope}, timeout=30)
    r = refreshed(f"repository:{NS}/app:pull,push")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == f"repository:{NS}/app:pull"
    t = r.json()["access_token"]
    assert requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(t)).status_code == 200
    assert api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/members/refresher", json={"role": "writer"}).ok
    assert refreshed(f"repository:{NS}/app:pull,push").json()["scope"] == f"repository:{NS}/app:pull,push"

    # Neither kind of token passes for the other; a tampered refresh token is refused.
    is_oci_error(requests.get(f"{srv.url}/v2/{NS}/app/manifests/v1", headers=bearer(refresh)), 401, "UNAUTHORIZED")
    is_oci_error(refreshed(f"repository:{NS}/app:pull", token=t), 401, "UNAUTHORIZED")
    is_oci_error(refreshed(f"repository:{NS}/app:pull", token=refresh[:-4] + "AAAA"), 401, "UNAUTHORIZED")
    r = requests.post(f"{srv.url}/token", data={"grant_type": "refresh_token"}, timeout=30)
    assert r.status_code == 400 and "refresh_token is required" in r.text

    # A disabled account's refresh token gets nothing more.
    assert api(srv, "POST", "/api/v1/admin/users/refresher/disable").ok
    r = refreshed(f"repository:{NS}/app:pull")
    is_oci_error(r, 401, "UNAUTHORIZED")
    assert "disabled" in r.json()["errors"][0]["message"]


def test_cli_manages_namespace_visibility_members_and_quota(srv):
    ns = "cli" + uuid.uuid4().hex[:6]
    push_image(srv, f"{ns}/app", "v1")
    r = api(srv, "POST", "/api/v1/admin/users", json={"name": "cliuser", "password": PASSWORD})
    assert r.status_code in (201, 409), r.text
    url = f"{srv.url}/v2/{ns}/app/manifests/v1"
    is_oci_error(requests.get(url, auth=("cliuser", PASSWORD)), 403, "DENIED")
    is_oci_error(requests.get(url), 401, "UNAUTHORIZED")

    r = cli(srv, "namespace", "member-set", ns, "cliuser", "reader")
    assert r.returncode == 0, r.stderr
    assert requests.get(url, auth=("cliuser", PASSWORD)).status_code == 200
    assert "cliuser\treader" in cli(srv, "namespace", "members", ns).stdout
    r = cli(srv, "namespace", "member-set", ns, "nobody-here", "reader")
    assert r.returncode != 0 and "no user" in r.stderr
    r = cli(srv, "namespace", "member-set", ns, "cliuser", "owner")
    assert r.returncode != 0  # not a role
    r = cli(srv, "namespace", "member-set", "a/b", "cliuser", "reader")
    assert r.returncode != 0 and "not a namespace" in r.stderr

    assert cli(srv, "namespace", "visibility", ns, "public").returncode == 0
    assert requests.get(url).status_code == 200
    assert f"{ns}\tpublic" in cli(srv, "namespace", "list").stdout
    assert cli(srv, "namespace", "visibility", ns, "private").returncode == 0
    is_oci_error(requests.get(url), 401, "UNAUTHORIZED")

    assert cli(srv, "namespace", "quota", ns, "1").returncode == 0
    r = push_blob(srv, f"{ns}/app", b"x" * 100, auth=ADMIN)
    is_oci_error(r, 403, "DENIED")
    assert cli(srv, "namespace", "quota", ns, "none").returncode == 0
    assert cli(srv, "namespace", "quota", ns, "lots").returncode != 0

    assert cli(srv, "namespace", "member-remove", ns, "cliuser").returncode == 0
    is_oci_error(requests.get(url, auth=("cliuser", PASSWORD)), 403, "DENIED")
    assert cli(srv, "namespace", "member-remove", ns, "cliuser").returncode != 0
    # Every change is in the audit log, attributed to the command line.
    audit = api(srv, "GET", f"/api/v1/admin/audit?namespace={ns}").json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    actions = {(e["action"], e["actor"].split(":")[0]) for e in entries}
    assert {("member.set", "cli"), ("namespace.visibility", "cli"), ("quota.set", "cli"),
            ("member.remove", "cli")} <= actions, actions
