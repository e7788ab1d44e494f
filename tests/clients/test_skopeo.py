"""Real-client tests: skopeo against image-manager.

Images are built by hand as OCI image layouts (ocilayout.py), copied into the registry with
`skopeo copy`, copied back out, and compared digest for digest and byte for byte.
skopeo runs with an accept-everything policy, an empty auth file, an empty registries.conf and
an empty registries.d so nothing from the host's configuration leaks in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

import imserver
from ocilayout import (MT_DOCKER_CONFIG, MT_DOCKER_LAYER_GZIP, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
                       MT_OCI_INDEX, MT_OCI_MANIFEST, Layout, read_layout, sha256)

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
ACCEPT_ALL = ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST,
                        "application/vnd.docker.distribution.manifest.list.v2+json"])


class Skopeo:
    def __init__(self, workdir: Path, server: imserver.Server):
        self.server = server
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        auth = workdir / "auth.json"
        auth.write_text("{}")
        registries_conf = workdir / "registries.conf"
        registries_conf.write_text("")
        self.registries_d = workdir / "registries.d"
        self.registries_d.mkdir(exist_ok=True)
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({
            "REGISTRY_AUTH_FILE": str(auth),
            "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        })

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [SKOPEO, "--policy", str(self.policy), "--registries.d", str(self.registries_d),
               "--tmpdir", str(self.tmpdir), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
                f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}\n"
                f"server log tail:\n{self.server.log()}")
        return proc

    def copy(self, src: str, dst: str, *extra: str) -> None:
        args = ["copy", "--preserve-digests"]
        if src.startswith("docker://"):
            args.append("--src-tls-verify=false")
        if dst.startswith("docker://"):
            args.append("--dest-tls-verify=false")
        self.run(*args, *extra, src, dst)

    def inspect_raw(self, ref: str, *extra: str) -> bytes:
        return self.run("inspect", "--raw", "--tls-verify=false", *extra, ref).stdout


def require_skopeo() -> None:
    if not Path(SKOPEO).exists():
        pytest.fail("skopeo is not installed (apt-get install skopeo)")


@pytest.fixture(scope="module")
def server():
    require_skopeo()
    with imserver.Server(env={"RUST_LOG": os.environ.get("IM_TEST_RUST_LOG", "info")}) as srv:
        yield srv


@pytest.fixture(scope="module")
def skopeo(server, tmp_path_factory):
    return Skopeo(tmp_path_factory.mktemp("skopeo"), server)


def get_manifest(server, repo: str, ref: str, accept: str = ACCEPT_ALL, method: str = "GET"):
    return requests.request(method, f"{server.url}/v2/{repo}/manifests/{ref}",
                            headers={"Accept": accept}, timeout=30)


def assert_blob_served(server, repo: str, data: bytes) -> None:
    digest = sha256(data)
    head = requests.head(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=30)
    assert head.status_code == 200, (repo, digest, head.status_code)
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers.get("Docker-Content-Digest") == digest
    r = requests.get(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert r.status_code == 200, (repo, digest, r.status_code, r.text[:500])
    assert r.headers.get("Docker-Content-Digest") == digest
    assert sha256(r.content) == digest


def assert_layout_has_image(refs: dict, blobs: dict, ref: str, img) -> None:
    assert ref in refs, f"ref {ref} missing from pulled layout index.json: {refs}"
    desc = refs[ref]
    assert desc["digest"] == img.digest
    assert desc["size"] == len(img.manifest)
    assert desc["mediaType"] == MT_OCI_MANIFEST
    assert blobs[img.digest] == img.manifest
    assert blobs[img.config_digest] == img.config
    for layer in img.layers:
        assert blobs[sha256(layer)] == layer


@pytest.fixture(scope="module")
def pushed(server, skopeo, tmp_path_factory):
    """One single-platform image copied from a hand-built OCI layout to ns/app:v1."""
    src = Layout(tmp_path_factory.mktemp("src-layout"))
    img = src.add_image("app")
    src.tag(img.descriptor(), "v1")
    skopeo.copy(f"oci:{src.root}:v1", f"docker://{server.host}/ns/app:v1")
    return img


def test_copy_layout_to_registry_and_back_is_identical(server, skopeo, pushed, tmp_path):
    dst = tmp_path / "pulled"
    skopeo.copy(f"docker://{server.host}/ns/app:v1", f"oci:{dst}:v1")
    refs, blobs = read_layout(dst)
    assert_layout_has_image(refs, blobs, "v1", pushed)
    assert set(blobs) == {pushed.digest, pushed.config_digest, *pushed.layer_digests}


def test_registry_serves_manifest_bytes_and_digest(server, pushed):
    for ref in ("v1", pushed.digest):
        r = get_manifest(server, "ns/app", ref)
        assert r.status_code == 200, (ref, r.status_code, r.text[:500])
        assert r.content == pushed.manifest
        assert r.headers.get("Docker-Content-Digest") == pushed.digest
        assert r.headers.get("Content-Type") == MT_OCI_MANIFEST
        head = get_manifest(server, "ns/app", ref, method="HEAD")
        assert head.status_code == 200
        assert head.headers.get("Docker-Content-Digest") == pushed.digest
        assert int(head.headers["Content-Length"]) == len(pushed.manifest)
    for data in pushed.blobs.values():
        assert_blob_served(server, "ns/app", data)


def test_inspect(server, skopeo, pushed):
    ref = f"docker://{server.host}/ns/app:v1"
    assert skopeo.inspect_raw(ref) == pushed.manifest
    assert skopeo.inspect_raw(f"docker://{server.host}/ns/app@{pushed.digest}") == pushed.manifest
    assert skopeo.inspect_raw(ref, "--config") == pushed.config
    info = json.loads(skopeo.run("inspect", "--tls-verify=false", ref).stdout)
    assert info["Digest"] == pushed.digest
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Layers"] == pushed.layer_digests
    assert info["Name"] == f"{server.host}/ns/app"
    assert "v1" in info["RepoTags"]


def test_list_tags(server, skopeo, pushed):
    for tag in ("latest", "1.0"):
        skopeo.copy(f"docker://{server.host}/ns/app:v1", f"docker://{server.host}/ns/app:{tag}")
    out = json.loads(skopeo.run("list-tags", "--tls-verify=false", f"docker://{server.host}/ns/app").stdout)
    assert out["Repository"] == f"{server.host}/ns/app"
    assert sorted(out["Tags"]) == ["1.0", "latest", "v1"]
    for tag in ("latest", "1.0"):
        r = get_manifest(server, "ns/app", tag, method="HEAD")
        assert r.status_code == 200
        assert r.headers.get("Docker-Content-Digest") == pushed.digest


def test_multi_arch_index_roundtrip(server, skopeo, tmp_path):
    src = Layout(tmp_path / "src")
    amd = src.add_image("multi-amd64", arch="amd64", big_layer=512 * 1024)
    arm = src.add_image("multi-arm64", arch="arm64", big_layer=512 * 1024)
    index = src.add_index([amd, arm])
    src.tag(index.descriptor(), "multi")
    target = f"docker://{server.host}/ns/multi:v1"
    skopeo.copy(f"oci:{src.root}:multi", target, "--all")

    r = get_manifest(server, "ns/multi", "v1")
    assert r.status_code == 200, r.text[:500]
    assert r.content == index.manifest
    assert r.headers.get("Docker-Content-Digest") == index.digest
    assert r.headers.get("Content-Type") == MT_OCI_INDEX
    for img in (amd, arm):
        child = get_manifest(server, "ns/multi", img.digest)
        assert child.status_code == 200
        assert child.content == img.manifest
        assert child.headers.get("Docker-Content-Digest") == img.digest
    assert skopeo.inspect_raw(target) == index.manifest

    dst = tmp_path / "back"
    skopeo.copy(target, f"oci:{dst}:multi", "--all")
    refs, blobs = read_layout(dst)
    assert refs["multi"]["digest"] == index.digest
    assert refs["multi"]["mediaType"] == MT_OCI_INDEX
    assert blobs[index.digest] == index.manifest
    for img in (amd, arm):
        assert blobs[img.digest] == img.manifest
        assert blobs[img.config_digest] == img.config
        for layer in img.layers:
            assert blobs[sha256(layer)] == layer

    # Without --all skopeo resolves the index to one platform and fetches that child by digest.
    arm_only = tmp_path / "arm"
    skopeo.copy(target, f"oci:{arm_only}:arm", "--override-arch", "arm64", "--override-os", "linux")
    refs, blobs = read_layout(arm_only)
    assert_layout_has_image(refs, blobs, "arm", arm)
    assert amd.digest not in blobs


def test_copy_between_repositories(server, skopeo, pushed):
    # Same registry, other repository: skopeo knows the blobs live in ns/app and tries a
    # cross-repository mount (POST ...?mount=<digest>&from=ns/app) before uploading.
    # skopeo's blob info cache learnt those locations when the `pushed` fixture uploaded them.
    proc = skopeo.run("--debug", "copy", "--preserve-digests", "--src-tls-verify=false",
                      "--dest-tls-verify=false", f"docker://{server.host}/ns/app:v1",
                      f"docker://{server.host}/team/mirror:v1")
    debug = proc.stderr.decode(errors="replace")
    for digest in pushed.layer_digests:
        assert f"Trying to mount /v2/team/mirror/blobs/uploads/?from=ns%2Fapp&mount={digest.replace(':', '%3A')}" \
            in debug, f"skopeo did not try to mount {digest}:\n{debug[-4000:]}"
    # skopeo logs "... mount OK" when the registry answered the mount POST with 201 Created.
    assert debug.count("mount OK") >= len(pushed.layers), \
        f"cross-repository mount not accepted:\n{debug[-6000:]}\nserver log:\n{server.log()}"
    r = get_manifest(server, "team/mirror", "v1")
    assert r.status_code == 200, r.text[:500]
    assert r.content == pushed.manifest
    assert r.headers.get("Docker-Content-Digest") == pushed.digest
    for data in pushed.blobs.values():
        assert_blob_served(server, "team/mirror", data)
    assert skopeo.inspect_raw(f"docker://{server.host}/team/mirror:v1") == pushed.manifest

    # The source repository is untouched.
    assert get_manifest(server, "ns/app", "v1").content == pushed.manifest


def test_docker_schema2_conversion(server, skopeo, tmp_path):
    src = Layout(tmp_path / "src")
    img = src.add_image("dockerfmt", big_layer=256 * 1024)
    src.tag(img.descriptor(), "v1")
    target = f"docker://{server.host}/ns/dockerfmt:v1"
    # Format conversion changes the manifest digest, so no --preserve-digests here.
    skopeo.run("copy", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{src.root}:v1", target)

    raw = skopeo.inspect_raw(target)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == MT_DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == MT_DOCKER_CONFIG
    assert manifest["config"]["digest"] == img.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == img.layer_digests
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_DOCKER_LAYER_GZIP}

    r = get_manifest(server, "ns/dockerfmt", "v1", accept=MT_DOCKER_MANIFEST)
    assert r.status_code == 200
    assert r.content == raw
    assert r.headers.get("Content-Type") == MT_DOCKER_MANIFEST
    assert r.headers.get("Docker-Content-Digest") == sha256(raw)
    by_digest = get_manifest(server, "ns/dockerfmt", sha256(raw), accept=MT_DOCKER_MANIFEST)
    assert by_digest.status_code == 200
    assert by_digest.content == raw

    info = json.loads(skopeo.run("inspect", "--tls-verify=false", target).stdout)
    assert info["Digest"] == sha256(raw)
    assert info["Layers"] == img.layer_digests

    # Back into an OCI layout (converted to OCI again; skopeo re-serialises the config, so only
    # its content is compared): layers are unchanged.
    dst = tmp_path / "back"
    skopeo.run("copy", "--src-tls-verify=false", target, f"oci:{dst}:v1")
    refs, blobs = read_layout(dst)
    assert refs["v1"]["mediaType"] == MT_OCI_MANIFEST
    back = json.loads(blobs[refs["v1"]["digest"]])
    config = json.loads(blobs[back["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == img.layer_diff_ids
    assert config["architecture"] == "amd64"
    for layer in img.layers:
        assert blobs[sha256(layer)] == layer


def test_delete(server, skopeo, tmp_path):
    src = Layout(tmp_path / "src")
    doomed = src.add_image("doomed", big_layer=64 * 1024)
    kept = src.add_image("kept", big_layer=64 * 1024)
    src.tag(doomed.descriptor(), "doomed")
    src.tag(kept.descriptor(), "kept")
    skopeo.copy(f"oci:{src.root}:doomed", f"docker://{server.host}/ns/del:v1")
    skopeo.copy(f"oci:{src.root}:kept", f"docker://{server.host}/ns/del:keep")
    assert get_manifest(server, "ns/del", "v1").status_code == 200

    skopeo.run("delete", "--tls-verify=false", f"docker://{server.host}/ns/del:v1")

    assert get_manifest(server, "ns/del", doomed.digest).status_code == 404
    assert get_manifest(server, "ns/del", "v1").status_code == 404
    failed = skopeo.run("inspect", "--raw", "--tls-verify=false", f"docker://{server.host}/ns/del:v1",
                        check=False)
    assert failed.returncode != 0
    tags = requests.get(f"{server.url}/v2/ns/del/tags/list", timeout=30)
    assert tags.status_code == 200
    assert "v1" not in (tags.json().get("tags") or [])
    assert "keep" in tags.json()["tags"]
    assert skopeo.inspect_raw(f"docker://{server.host}/ns/del:keep") == kept.manifest


def test_docker_manifest_list(server, skopeo, tmp_path):
    src = Layout(tmp_path / "src")
    amd = src.add_image("dlist-amd64", arch="amd64", big_layer=128 * 1024)
    arm = src.add_image("dlist-arm64", arch="arm64", big_layer=128 * 1024)
    src.tag(src.add_index([amd, arm]).descriptor(), "multi")
    target = f"docker://{server.host}/ns/dlist:v1"
    # skopeo converts the OCI index and both manifests to Docker schema 2 (list + manifests).
    skopeo.run("copy", "--all", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{src.root}:multi", target)

    raw = skopeo.inspect_raw(target)
    listing = json.loads(raw)
    assert listing["mediaType"] == MT_DOCKER_LIST
    assert [m["platform"]["architecture"] for m in listing["manifests"]] == ["amd64", "arm64"]
    r = get_manifest(server, "ns/dlist", "v1", accept=MT_DOCKER_LIST)
    assert r.status_code == 200
    assert r.content == raw
    assert r.headers.get("Content-Type") == MT_DOCKER_LIST
    assert r.headers.get("Docker-Content-Digest") == sha256(raw)
    for entry, img in zip(listing["manifests"], (amd, arm)):
        child = get_manifest(server, "ns/dlist", entry["digest"], accept=MT_DOCKER_MANIFEST)
        assert child.status_code == 200
        assert child.headers.get("Content-Type") == MT_DOCKER_MANIFEST
        assert sha256(child.content) == entry["digest"]
        assert len(child.content) == entry["size"]
        assert [layer["digest"] for layer in json.loads(child.content)["layers"]] == img.layer_digests

    # Registry to registry with the list kept as is.
    skopeo.copy(target, f"docker://{server.host}/ns/dlist-copy:v1", "--all")
    assert skopeo.inspect_raw(f"docker://{server.host}/ns/dlist-copy:v1") == raw

    # Out to an OCI layout (converted back to OCI): every layer arrives unchanged.
    dst = tmp_path / "back"
    skopeo.run("copy", "--all", "--src-tls-verify=false", target, f"oci:{dst}:multi")
    _refs, blobs = read_layout(dst)
    for img in (amd, arm):
        for layer in img.layers:
            assert blobs[sha256(layer)] == layer


def test_content_survives_restart(tmp_path):
    require_skopeo()
    src = Layout(tmp_path / "src")
    img = src.add_image("restart", big_layer=256 * 1024)
    src.tag(img.descriptor(), "v1")
    with imserver.Server(env={"RUST_LOG": os.environ.get("IM_TEST_RUST_LOG", "info")}) as srv:
        restart_skopeo = Skopeo(tmp_path / "skopeo", srv)
        restart_skopeo.copy(f"oci:{src.root}:v1", f"docker://{srv.host}/ns/persist:v1")
        assert srv.stop() is not None
        srv.start()
        assert restart_skopeo.inspect_raw(f"docker://{srv.host}/ns/persist:v1") == img.manifest
        dst = tmp_path / "back"
        restart_skopeo.copy(f"docker://{srv.host}/ns/persist:v1", f"oci:{dst}:v1")
        refs, blobs = read_layout(dst)
        assert_layout_has_image(refs, blobs, "v1", img)
