"""Real-client tests: podman builds images and pushes them to image-manager, then pulls them back.

One podman storage per module builds the images (FROM scratch plus two generated files, so no
network is needed), once in OCI format and once in Docker v2 schema 2 format. Each test pushes
one of them, checks over plain HTTP what the server stores (media types, every blob fetchable
and hashing to its digest, the files inside the layer), and pulls it back into a fresh, empty
podman storage, so every byte pulled comes from the server; the files are then copied out of a
container created from the pulled image and compared.

With `--auth token`, podman follows the server's Bearer challenge to its token endpoint with
the credentials of `podman login` or `--creds`; pushes without credentials, with a wrong
password, or as a reader are refused and leave nothing behind. (The server challenges only
with Bearer; it accepts HTTP Basic on /v2 too, which no client uses unchallenged, so Basic is
exercised here by the plain-HTTP checks of what was stored, not by podman.)
"""

from __future__ import annotations

import pytest

import tools
from tools import NS, READER, VICTIM, WRITER

PUSH_FORMAT = {"oci": "oci", "docker": "v2s2"}


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    """A podman storage holding `localhost/im-test:oci` and `localhost/im-test:docker`."""
    podman = tools.ContainerTool("podman", tmp_path_factory.mktemp("podman-builder"))
    payload = tools.Payload(tmp_path_factory.mktemp("podman-context"), "podman")
    for fmt in tools.FORMATS:
        podman("build", "--isolation", "chroot", "--format", fmt, "--tag", f"localhost/im-test:{fmt}",
               str(payload.dir))
    podman.payload = payload
    yield podman
    podman.close()


@pytest.fixture(scope="module")
def server():
    srv = tools.open_server()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def auth_server():
    srv = tools.auth_server()
    yield srv
    srv.close()


@pytest.fixture
def fresh_podman(tmp_path):
    """make(server): a podman with an empty storage of its own, removed after the test."""
    made = []

    def make(server):
        podman = tools.ContainerTool("podman", tmp_path / f"podman-{len(made)}", server)
        made.append(podman)
        assert podman.image_ids() == set(), "a fresh storage must hold no image"
        return podman

    yield make
    for podman in made:
        podman.close()


def push(builder, server, fmt: str, repo: str, tag: str, **kw):
    """Push the module's image of format `fmt` to server/repo:tag with `--digestfile`; returns
    (ref, the digest podman wrote or None, the process)."""
    ref = f"{server.host}/{repo}:{tag}"
    digestfile = builder.sandbox.base / f"digest-{repo.replace('/', '_')}-{tag}"
    builder.server = server
    proc = builder.push(f"localhost/im-test:{fmt}", f"docker://{ref}", "--format", PUSH_FORMAT[fmt],
                        "--digestfile", str(digestfile), **kw)
    return ref, (digestfile.read_text().strip() if proc.returncode == 0 else None), proc


def assert_pulled(podman, ref: str, stored: dict, files: dict[str, bytes], tmp_path) -> None:
    """The image pulled into `podman` is the one stored, and its files are intact."""
    inspect = podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}", ref).stdout.split()
    assert inspect == [stored["config_digest"].removeprefix("sha256:"), stored["digest"]]
    container = podman("create", ref, "/no-such-command").stdout.strip()
    try:
        out = tmp_path / "copied"
        out.mkdir()
        for path, data in files.items():
            dest = out / path.replace("/", "_")
            podman("cp", f"{container}:/{path}", str(dest))
            assert dest.read_bytes() == data, f"/{path} pulled back differs from what was built"
    finally:
        podman("rm", container)


@pytest.mark.parametrize("fmt", list(tools.FORMATS))
def test_push_and_pull_back(builder, server, fmt, fresh_podman, tmp_path):
    repo = f"demo/podman-{fmt}"
    ref, pushed_digest, _ = push(builder, server, fmt, repo, "v1")
    stored = tools.assert_stored_image(server, repo, "v1", fmt, builder.payload.image_paths())
    assert pushed_digest == stored["digest"], "podman's --digestfile names another manifest than the server serves"
    assert tools.tags(server, repo) == ["v1"]

    puller = fresh_podman(server)
    puller.pull(ref)
    assert puller.image_ids() == {stored["config_digest"].removeprefix("sha256:")}
    assert_pulled(puller, ref, stored, builder.payload.image_paths(), tmp_path)

    # Removed locally and pulled again, by digest this time.
    puller("rmi", "--force", ref)
    assert puller.image_ids() == set()
    by_digest = f"{server.host}/{repo}@{stored['digest']}"
    puller.pull(by_digest)
    assert puller.image_ids() == {stored["config_digest"].removeprefix("sha256:")}


def test_second_tag_serves_the_same_manifest(builder, server):
    """Pushing an image already in the repository under another tag stores the same manifest."""
    repo = "demo/podman-retag"
    _, first, _ = push(builder, server, "oci", repo, "a")
    _, second, _ = push(builder, server, "oci", repo, "b")
    assert first == second
    assert tools.tags(server, repo) == ["a", "b"]
    assert tools.get_manifest(server, repo, "a").content == tools.get_manifest(server, repo, "b").content


@pytest.mark.parametrize("fmt", list(tools.FORMATS))
def test_push_and_pull_with_token_auth(builder, auth_server, fmt, fresh_podman, tmp_path):
    repo, tag = f"{NS}/podman-{fmt}", "v1"
    authfile = builder.sandbox.new_authfile(f"auth-{fmt}.json")
    builder.server = auth_server
    builder.login(auth_server.host, *WRITER, authfile=authfile)
    assert tools.authfile_has(authfile, auth_server.host)
    ref, pushed_digest, _ = push(builder, auth_server, fmt, repo, tag, authfile=authfile)

    stored = tools.assert_stored_image(auth_server, repo, tag, fmt, builder.payload.image_paths(), auth=WRITER)
    assert pushed_digest == stored["digest"]
    tools.assert_pushed_by(auth_server, WRITER[0], f"{repo}:{tag}", stored["digest"])

    # Pull as the namespace's reader, into an empty storage.
    puller = fresh_podman(auth_server)
    denied = puller.pull(ref, check=False)
    tools.refused(denied, "authentication required")
    assert puller.image_ids() == set()
    puller.pull(ref, creds=f"{READER[0]}:{READER[1]}")
    assert_pulled(puller, ref, stored, builder.payload.image_paths(), tmp_path)


@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "reader"])
def test_push_refused(builder, auth_server, who):
    repo, tag = f"{NS}/podman-refused", who
    creds = {"anonymous": None, "wrong-password": f"{VICTIM[0]}:not-{VICTIM[1]}",
             "reader": f"{READER[0]}:{READER[1]}"}[who]
    ref, _, proc = push(builder, auth_server, "oci", repo, tag, creds=creds, check=False)
    if who == "wrong-password":
        tools.refused(proc, "invalid username or password")
        tools.refused(proc, "unable to retrieve auth token")  # refused by the token endpoint
        tools.assert_login_failed(auth_server, VICTIM[0])
    else:
        tools.refused(proc, {"anonymous": "authentication required", "reader": "may not push"}[who])
    assert tools.get_manifest(auth_server, repo, tag, auth=tools.ADMIN).status_code == 404
    assert tag not in tools.tags(auth_server, repo, auth=tools.ADMIN)


def test_login_with_wrong_password_fails(builder, auth_server):
    authfile = builder.sandbox.new_authfile("auth-wrong.json")
    builder.server = auth_server
    proc = builder.login(auth_server.host, VICTIM[0], "wrong-" + VICTIM[1], authfile=authfile, check=False)
    tools.refused(proc, "invalid username/password", "invalid username or password", "unauthorized")
    assert not tools.authfile_has(authfile, auth_server.host)
    # The right password still works afterwards (the failure slows down, never locks out).
    builder.login(auth_server.host, *VICTIM, authfile=authfile)
    assert tools.authfile_has(authfile, auth_server.host)
