"""Real-client tests: buildah builds images and pushes them to image-manager, then pulls them back.

One buildah storage per module builds the images with no network: the OCI one with
`buildah bud` from a Containerfile (FROM scratch plus two generated files), the Docker v2
schema 2 one with `buildah from scratch` + `buildah copy` + `buildah commit --format docker`.
Each test pushes one, checks over plain HTTP what the server stores (media types, every blob
fetchable and hashing to its digest, the files inside the layer), pulls it back into a fresh,
empty buildah storage, and reads the files out of that storage (exported with `buildah push` to
an OCI layout directory, which works for any user, unlike `buildah mount`).

With `--auth token`, buildah follows the Bearer challenge with `buildah login` or `--creds`
credentials; pushes without credentials, with a wrong password or as a reader are refused.
"""

from __future__ import annotations

import json

import pytest

import tools
from ocilayout import read_layout
from tools import NS, READER, VICTIM, WRITER

PUSH_FORMAT = {"oci": "oci", "docker": "v2s2"}


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    """A buildah storage holding `localhost/im-test:oci` and `localhost/im-test:docker`."""
    buildah = tools.ContainerTool("buildah", tmp_path_factory.mktemp("buildah-builder"))
    payload = tools.Payload(tmp_path_factory.mktemp("buildah-context"), "buildah")
    policy = str(buildah.sandbox.policy)
    buildah("bud", "--isolation", "chroot", "--signature-policy", policy, "--format", "oci",
            "--tag", "localhost/im-test:oci", str(payload.dir))
    container = buildah("from", "--signature-policy", policy, "scratch").stdout.strip()
    for name in payload.files:
        buildah("copy", container, str(payload.dir / name), f"/srv/{name}")
    buildah("config", "--label", "org.example.test=buildah", container)
    buildah("commit", "--signature-policy", policy, "--format", "docker", container, "localhost/im-test:docker")
    buildah("rm", container)
    buildah.payload = payload
    yield buildah
    buildah.close()


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
def fresh_buildah(tmp_path):
    """make(server): a buildah with an empty storage of its own, removed after the test."""
    made = []

    def make(server):
        buildah = tools.ContainerTool("buildah", tmp_path / f"buildah-{len(made)}", server)
        made.append(buildah)
        assert buildah.image_ids() == set(), "a fresh storage must hold no image"
        return buildah

    yield make
    for buildah in made:
        buildah.close()


def push(builder, server, fmt: str, repo: str, tag: str, **kw):
    """Push the module's image of format `fmt` to server/repo:tag with `--digestfile`; returns
    (ref, the digest buildah wrote or None, the process)."""
    ref = f"{server.host}/{repo}:{tag}"
    digestfile = builder.sandbox.base / f"digest-{repo.replace('/', '_')}-{tag}"
    builder.server = server
    proc = builder.push(f"localhost/im-test:{fmt}", f"docker://{ref}", "--format", PUSH_FORMAT[fmt],
                        "--digestfile", str(digestfile), **kw)
    return ref, (digestfile.read_text().strip() if proc.returncode == 0 else None), proc


def assert_pulled(buildah, ref: str, stored: dict, files: dict[str, bytes], tmp_path) -> None:
    """The image pulled into `buildah` is the one stored, and its files are intact."""
    inspect = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}} {{.FromImageDigest}}",
                      ref).stdout.split()
    assert inspect == [stored["config_digest"].removeprefix("sha256:"), stored["digest"]]
    layout = tmp_path / "exported"
    buildah("push", "--signature-policy", str(buildah.sandbox.policy), ref, f"oci:{layout}:pulled")
    refs, blobs = read_layout(layout)
    manifest = json.loads(blobs[refs["pulled"]["digest"]])
    found: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        found.update(tools.tar_files(blobs[layer["digest"]]))
    for path, data in files.items():
        assert found.get(path) == data, f"/{path} pulled back differs from what was built ({sorted(found)})"


@pytest.mark.parametrize("fmt", list(tools.FORMATS))
def test_push_and_pull_back(builder, server, fmt, fresh_buildah, tmp_path):
    repo = f"demo/buildah-{fmt}"
    ref, pushed_digest, _ = push(builder, server, fmt, repo, "v1")
    stored = tools.assert_stored_image(server, repo, "v1", fmt, builder.payload.image_paths())
    assert pushed_digest == stored["digest"], "buildah's --digestfile names another manifest than the server serves"
    assert tools.tags(server, repo) == ["v1"]
    labels = json.loads(tools.get_blob(server, repo, stored["config_digest"]))["config"]["Labels"]
    assert labels["org.example.test"] == "buildah"

    puller = fresh_buildah(server)
    puller.pull(ref)
    assert puller.image_ids() == {stored["config_digest"].removeprefix("sha256:")}
    assert_pulled(puller, ref, stored, builder.payload.image_paths(), tmp_path)

    # Removed locally and pulled again, by digest this time.
    puller("rmi", "--force", ref)
    assert puller.image_ids() == set()
    puller.pull(f"{server.host}/{repo}@{stored['digest']}")
    assert puller.image_ids() == {stored["config_digest"].removeprefix("sha256:")}


@pytest.mark.parametrize("fmt", list(tools.FORMATS))
def test_push_and_pull_with_token_auth(builder, auth_server, fmt, fresh_buildah, tmp_path):
    repo, tag = f"{NS}/buildah-{fmt}", "v1"
    authfile = builder.sandbox.new_authfile(f"auth-{fmt}.json")
    builder.server = auth_server
    builder.login(auth_server.host, *WRITER, authfile=authfile)
    assert tools.authfile_has(authfile, auth_server.host)
    ref, pushed_digest, _ = push(builder, auth_server, fmt, repo, tag, authfile=authfile)

    stored = tools.assert_stored_image(auth_server, repo, tag, fmt, builder.payload.image_paths(), auth=WRITER)
    assert pushed_digest == stored["digest"]
    tools.assert_pushed_by(auth_server, WRITER[0], f"{repo}:{tag}", stored["digest"])

    # Pull as the namespace's reader, into an empty storage; without credentials it is refused.
    puller = fresh_buildah(auth_server)
    tools.refused(puller.pull(ref, check=False), "authentication required")
    assert puller.image_ids() == set()
    reader_auth = puller.sandbox.new_authfile("reader.json")
    puller.login(auth_server.host, *READER, authfile=reader_auth)
    puller.pull(ref, authfile=reader_auth)
    assert_pulled(puller, ref, stored, builder.payload.image_paths(), tmp_path)


@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "reader"])
def test_push_refused(builder, auth_server, who):
    repo, tag = f"{NS}/buildah-refused", who
    creds = {"anonymous": None, "wrong-password": f"{VICTIM[0]}:not-{VICTIM[1]}",
             "reader": f"{READER[0]}:{READER[1]}"}[who]
    _, _, proc = push(builder, auth_server, "docker", repo, tag, creds=creds, check=False)
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
    tools.refused(proc, "invalid username/password", "invalid username or password")
    assert not tools.authfile_has(authfile, auth_server.host)
    builder.login(auth_server.host, *VICTIM, authfile=authfile)
    assert tools.authfile_has(authfile, auth_server.host)
