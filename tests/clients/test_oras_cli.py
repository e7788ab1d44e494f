"""Real-client tests: the ORAS CLI (`oras`, 1.2) against image-manager, over plain HTTP.

`oras push` stores files (and a directory, which oras packs as a tar) as an artifact with an
artifactType and annotations; the manifest the server serves is compared byte for byte with
the one oras exported, every blob is checked, and `oras pull` brings the files back identical.
`oras attach` adds referrers to the pushed manifest, through the referrers API (the server
answers OCI-Subject, so oras must not fall back to a referrers tag) and, forced with
`--distribution-spec v1.1-referrers-tag`, through the tag schema; `oras discover --format json`
must list them with their digests and artifact types. With `--auth token`, `oras login` and
`-u/-p` credentials go through the server's token flow, and wrong or missing ones are refused.

test_oras.py tests the ORAS Python SDK; this file the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import requests

import imserver
import tools
from ocilayout import MT_OCI_EMPTY, MT_OCI_INDEX, MT_OCI_MANIFEST, sha256
from tools import NS, READER, VICTIM, WRITER

ARTIFACT_TYPE = "application/vnd.example.bundle.v1"
SIG_TYPE = "application/vnd.example.signature.v1"
SBOM_TYPE = "application/spdx+json"
TITLE = "org.opencontainers.image.title"


class Oras:
    """The oras CLI with its own HOME and registry config file, against one server."""

    def __init__(self, base: Path, server: imserver.Server):
        self.exe = tools.find_tool("oras")
        self.sandbox = tools.Sandbox(base)
        self.server = server
        self.config = self.sandbox.new_authfile("registry-config.json")
        self.env = dict(self.sandbox.env)
        self.env.pop("REGISTRY_AUTH_FILE")

    def __call__(self, *args: str, check: bool = True, cwd: Path | None = None, input: str | None = None):
        return tools.run([self.exe, *args, "--plain-http", "--registry-config", str(self.config)], self.env,
                         check=check, server=self.server, cwd=cwd, input=input)

    def json(self, *args: str, cwd: Path | None = None) -> dict:
        return json.loads(self(*args, "--format", "json", cwd=cwd).stdout)

    def login(self, user: str, password: str, check: bool = True):
        return self("login", "--username", user, "--password-stdin", self.server.host,
                    input=password + "\n", check=check)


def tree(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_files(base: Path, label: str) -> Path:
    """A working directory with two files and a directory of two more, unique per call."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "readme.txt").write_text(f"{label}: pushed by the ORAS CLI {os.urandom(6).hex()}\n")
    (base / "data.bin").write_bytes(os.urandom(200 * 1024 + 17))
    (base / "docs").mkdir()
    (base / "docs" / "a.md").write_text(f"# {label}\n")
    (base / "docs" / "b.json").write_text(json.dumps({"label": label}))
    return base


def manifest_of(server, repo: str, ref: str, auth=None) -> tuple[bytes, dict]:
    r = tools.get_manifest(server, repo, ref, auth=auth)
    assert r.status_code == 200, (r.status_code, r.text[:300], server.log())
    assert r.headers.get("Docker-Content-Digest") == sha256(r.content)
    return r.content, json.loads(r.content)


def push_artifact(oras: Oras, work: Path, ref: str, tmp_path: Path, *extra: str) -> tuple[str, bytes]:
    """`oras push` of work's files; returns (digest printed by oras, manifest bytes exported)."""
    exported = tmp_path / f"exported-{hashlib.sha256(ref.encode()).hexdigest()[:8]}.json"
    out = oras.json("push", ref, "readme.txt:text/plain", "data.bin", "docs/",
                    "--artifact-type", ARTIFACT_TYPE, "--annotation", "com.example.suite=clients",
                    "--export-manifest", str(exported), *extra, cwd=work)
    assert out["artifactType"] == ARTIFACT_TYPE
    assert out["mediaType"] == MT_OCI_MANIFEST
    return out["digest"], exported.read_bytes()


def assert_stored_artifact(server, repo: str, tag: str, digest: str, exported: bytes, work: Path, auth=None) -> dict:
    """The server serves exactly the manifest oras exported, and every blob it names."""
    body, manifest = manifest_of(server, repo, tag, auth=auth)
    assert body == exported, "the server must serve the manifest bytes oras sent"
    assert sha256(body) == digest
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == MT_OCI_EMPTY
    assert manifest["annotations"]["com.example.suite"] == "clients"
    layers = {layer["annotations"][TITLE]: layer for layer in manifest["layers"]}
    assert set(layers) == {"readme.txt", "data.bin", "docs"}
    assert layers["readme.txt"]["mediaType"] == "text/plain"
    for name in ("readme.txt", "data.bin"):
        assert layers[name]["digest"] == sha256((work / name).read_bytes())
    packed = tools.tar_files(tools.get_blob(server, repo, layers["docs"]["digest"], auth=auth))
    assert {k.removeprefix("docs/"): v for k, v in packed.items()} == tree(work / "docs")
    for desc in [manifest["config"], *manifest["layers"]]:
        data = tools.get_blob(server, repo, desc["digest"], auth=auth)
        assert sha256(data) == desc["digest"] and len(data) == desc["size"]
    return manifest


def assert_pulls_back(oras: Oras, ref: str, work: Path, out: Path, *extra: str) -> None:
    out.mkdir()
    oras("pull", ref, "--output", str(out), *extra)
    assert tree(out) == tree(work), "oras pull must give back the files pushed"


def referrers_api(server, repo: str, digest: str, auth=None, artifact_type: str | None = None) -> dict[str, dict]:
    params = {"artifactType": artifact_type} if artifact_type else None
    r = requests.get(f"{server.url}/v2/{repo}/referrers/{digest}", params=params, auth=auth, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    body = r.json()
    assert body["mediaType"] == MT_OCI_INDEX
    return {d["digest"]: d for d in body["manifests"]}


def discovered(oras: Oras, ref: str, *extra: str) -> dict[str, dict]:
    out = oras.json("discover", ref, *extra)
    return {d["digest"]: d for d in out.get("manifests") or []}


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


def test_push_and_pull_files(server, tmp_path):
    oras = Oras(tmp_path / "oras", server)
    work = make_files(tmp_path / "work", "plain")
    repo = "demo/oras-files"
    digest, exported = push_artifact(oras, work, f"{server.host}/{repo}:v1", tmp_path)
    assert_stored_artifact(server, repo, "v1", digest, exported, work)
    assert tools.tags(server, repo) == ["v1"]
    assert oras("repo", "tags", f"{server.host}/{repo}").stdout.split() == ["v1"]
    # What `oras manifest fetch` gets is the same document.
    assert oras("manifest", "fetch", f"{server.host}/{repo}:v1").stdout.encode().strip() == exported.strip()

    assert_pulls_back(oras, f"{server.host}/{repo}:v1", work, tmp_path / "out-tag")
    assert_pulls_back(oras, f"{server.host}/{repo}@{digest}", work, tmp_path / "out-digest")


def test_attach_and_discover(server, tmp_path):
    oras = Oras(tmp_path / "oras", server)
    work = make_files(tmp_path / "work", "subject")
    repo = "demo/oras-referrers"
    ref = f"{server.host}/{repo}:v1"
    subject, _ = push_artifact(oras, work, ref, tmp_path)
    assert discovered(oras, ref) == {}

    # Through the referrers API: the server answers the PUT with OCI-Subject, so oras must not
    # also push a referrers tag.
    (tmp_path / "sig.txt").write_text("not really a signature\n")
    sig = oras.json("attach", ref, "sig.txt", "--artifact-type", SIG_TYPE,
                    "--annotation", "com.example.signer=ci", cwd=tmp_path)
    assert sig["artifactType"] == SIG_TYPE
    referrers_tag = "sha256-" + subject.removeprefix("sha256:")
    assert tools.tags(server, repo) == ["v1"], "oras fell back to the referrers tag schema"

    # Forced through the tag schema.
    (tmp_path / "sbom.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": "subject"}))
    sbom = oras.json("attach", ref, "sbom.json", "--artifact-type", SBOM_TYPE,
                     "--distribution-spec", "v1.1-referrers-tag", cwd=tmp_path)
    assert sbom["artifactType"] == SBOM_TYPE
    assert sorted(tools.tags(server, repo)) == sorted(["v1", referrers_tag])
    _, tag_index = manifest_of(server, repo, referrers_tag)
    assert tag_index["mediaType"] == MT_OCI_INDEX
    assert [(d["digest"], d.get("artifactType")) for d in tag_index["manifests"]] == [(sbom["digest"], SBOM_TYPE)]

    # Both referrers, whatever way they came, through oras discover and the HTTP referrers API.
    listed = discovered(oras, ref)
    assert set(listed) == {sig["digest"], sbom["digest"]}
    assert listed[sig["digest"]]["artifactType"] == SIG_TYPE
    assert listed[sig["digest"]]["annotations"]["com.example.signer"] == "ci"
    assert listed[sbom["digest"]]["artifactType"] == SBOM_TYPE
    assert set(discovered(oras, ref, "--artifact-type", SIG_TYPE)) == {sig["digest"]}
    assert set(referrers_api(server, repo, subject)) == {sig["digest"], sbom["digest"]}
    assert set(referrers_api(server, repo, subject, artifact_type=SBOM_TYPE)) == {sbom["digest"]}
    # With the tag schema, discover reads the referrers tag: only what was attached that way.
    assert set(discovered(oras, ref, "--distribution-spec", "v1.1-referrers-tag")) == {sbom["digest"]}

    # A referrer's manifest names its subject, and its file pulls back.
    _, sig_manifest = manifest_of(server, repo, sig["digest"])
    assert sig_manifest["subject"]["digest"] == subject
    assert sig_manifest["artifactType"] == SIG_TYPE
    out = tmp_path / "sig-out"
    oras("pull", f"{server.host}/{repo}@{sig['digest']}", "--output", str(out))
    assert tree(out) == {"sig.txt": b"not really a signature\n"}


def test_credentials_through_the_token_flow(auth_server, tmp_path):
    srv = auth_server
    repo = f"{NS}/oras-auth"
    ref = f"{srv.host}/{repo}:v1"
    work = make_files(tmp_path / "work", "auth")

    writer = Oras(tmp_path / "writer", srv)
    writer.login(*WRITER)
    assert tools.authfile_has(writer.config, srv.host)
    digest, exported = push_artifact(writer, work, ref, tmp_path)
    assert_stored_artifact(srv, repo, "v1", digest, exported, work, auth=WRITER)
    tools.assert_pushed_by(srv, WRITER[0], f"{repo}:v1", digest)
    (tmp_path / "sig.txt").write_text("signed\n")
    sig = writer.json("attach", ref, "sig.txt", "--artifact-type", SIG_TYPE, cwd=tmp_path)
    assert set(discovered(writer, ref)) == {sig["digest"]}

    # The reader, with -u/-p on each command and no login: pull and discover, never push.
    reader = Oras(tmp_path / "reader", srv)
    creds = ["--username", READER[0], "--password", READER[1]]
    assert_pulls_back(reader, ref, work, tmp_path / "out", *creds)
    assert set(discovered(reader, ref, *creds)) == {sig["digest"]}
    # --concurrency 1: oras 1.2.0 (oras-go internal/syncutil) panics with "compare and swap of
    # inconsistently typed value" when two concurrent blob uploads fail with different error
    # types, here both POST /blobs/uploads/ answered 403 DENIED; one upload at a time avoids it.
    refusal = reader("push", f"{srv.host}/{repo}:by-reader", "readme.txt", "--concurrency", "1", *creds,
                     cwd=work, check=False)
    tools.refused(refusal, "may not push")
    assert "by-reader" not in tools.tags(srv, repo, auth=tools.ADMIN)

    # Without credentials nothing is readable.
    anonymous = Oras(tmp_path / "anonymous", srv)
    tools.refused(anonymous("pull", ref, "--output", str(tmp_path / "anon-out"), check=False), "authentication required")
    tools.refused(anonymous("discover", ref, check=False), "401", "unauthorized")


@pytest.mark.parametrize("who", ["anonymous", "wrong-password"])
def test_push_refused(auth_server, who, tmp_path):
    srv = auth_server
    repo, tag = f"{NS}/oras-refused", who
    work = make_files(tmp_path / "work", who)
    oras = Oras(tmp_path / "oras", srv)
    creds = [] if who == "anonymous" else ["--username", VICTIM[0], "--password", "not-" + VICTIM[1]]
    proc = oras("push", f"{srv.host}/{repo}:{tag}", "readme.txt", *creds, cwd=work, check=False)
    if who == "wrong-password":
        tools.refused(proc, "invalid username or password")
        tools.assert_login_failed(srv, VICTIM[0])
    else:
        tools.refused(proc, "authentication required", "401", "unauthorized")
    assert tools.get_manifest(srv, repo, tag, auth=tools.ADMIN).status_code == 404
    assert tag not in tools.tags(srv, repo, auth=tools.ADMIN)


def test_login_with_wrong_password_fails(auth_server, tmp_path):
    oras = Oras(tmp_path / "oras", auth_server)
    tools.refused(oras.login(VICTIM[0], "wrong-" + VICTIM[1], check=False), "invalid username or password",
                  "unauthorized")
    assert not tools.authfile_has(oras.config, auth_server.host)
    oras.login(*VICTIM)
    assert tools.authfile_has(oras.config, auth_server.host)
