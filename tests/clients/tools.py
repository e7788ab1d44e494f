"""Shared helpers for the command-line client tests (test_podman.py, test_buildah.py,
test_oras_cli.py): finding the tools, running them in a sandbox of their own, starting a
server with access control, and checking over plain HTTP what the server stores.

A missing tool fails the test (pytest.fail) with the command that installs it; nothing is
skipped. podman and buildah come from Debian (`scripts/install-test-deps.sh`); oras is
unpacked by `scripts/install-tools.sh` into `${IM_TOOLS_DIR:-~/.cache/image-manager-tools}/bin`
and also found on PATH.

Every podman/buildah/oras process gets its own HOME, XDG_RUNTIME_DIR, XDG_CONFIG_HOME,
XDG_DATA_HOME, TMPDIR, containers.conf, storage.conf, registries.conf, auth file and signature
policy, so neither the host's configuration nor another test's state reaches it. (One thing
cannot be redirected by flag or variable: as root, containers/image keeps its blob-info cache in
/var/lib/containers/cache. It only makes a client try a HEAD or a cross-repository mount before
uploading a blob it has seen elsewhere; the server must answer those correctly anyway.)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import requests

import imserver
from ocilayout import sha256

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# What each image format must look like in the registry: manifest, config and layer media types.
FORMATS = {
    "oci": (MT_OCI_MANIFEST, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP),
    "docker": (MT_DOCKER_MANIFEST, MT_DOCKER_CONFIG, MT_DOCKER_LAYER_GZIP),
}
ACCEPT_ALL = ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST,
                        "application/vnd.docker.distribution.manifest.list.v2+json"])

# ----- finding the tools -------------------------------------------------------------------

TOOLS_BIN = Path(os.environ.get("IM_TOOLS_DIR")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "image-manager-tools") / "bin"

_INSTALL_HINT = {
    "podman": "install it with scripts/install-test-deps.sh (Debian package podman)",
    "buildah": "install it with scripts/install-test-deps.sh (Debian package buildah)",
    "oras": "run scripts/install-tools.sh (unpacks the ORAS CLI into " + str(TOOLS_BIN) + ")",
}


def find_tool(name: str) -> str:
    """The path of a client tool: the tools folder of scripts/install-tools.sh first, then PATH.
    Fails the calling test when the tool is nowhere."""
    candidates = [TOOLS_BIN / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path("/usr/bin") / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    pytest.fail(f"`{name}` is not installed (looked in {TOOLS_BIN} and on PATH): {_INSTALL_HINT[name]}",
                pytrace=False)


def run(cmd: list[str], env: dict[str, str], *, check: bool = True, server: imserver.Server | None = None,
        input: str | None = None, timeout: float = 180, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; with `check`, a non-zero exit fails with its output and the server's log."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, input=input, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}\nexited {proc.returncode}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}\n"
            + (f"server log tail:\n{server.log()}" if server else ""))
    return proc


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a command failed, and that its output names one of `needles` (case-insensitive),
    so it failed for the expected reason and not, say, for a typo in the test. Returns the output."""
    out = (proc.stdout + proc.stderr)
    assert proc.returncode != 0, f"{proc.args} should have failed:\n{out[-3000:]}"
    assert any(n.lower() in out.lower() for n in needles), \
        f"{proc.args} failed, but its output names none of {needles}:\n{out[-3000:]}"
    return out


class Sandbox:
    """Private home, runtime, config, temp and credential files for one client process tree."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.home = self.base / "home"
        self.runtime = self.base / "xdg-runtime"
        self.config = self.base / "xdg-config"
        self.data = self.base / "xdg-data"
        self.tmp = self.base / "tmp"
        for d in (self.home, self.runtime, self.config, self.data, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime.chmod(0o700)
        self.policy = self.base / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.registries_conf = self.base / "registries.conf"
        self.registries_conf.write_text("")
        self.authfile = self.base / "auth.json"
        self.authfile.write_text("{}")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CONFIG_HOME": str(self.config),
            "XDG_DATA_HOME": str(self.data),
            "TMPDIR": str(self.tmp),
            "REGISTRY_AUTH_FILE": str(self.authfile),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
        }

    def new_authfile(self, name: str) -> Path:
        path = self.base / name
        path.write_text("{}")
        return path


# ----- podman and buildah ------------------------------------------------------------------

class ContainerTool:
    """podman or buildah with private vfs storage under `base` (root, runroot, tmpdir)."""

    def __init__(self, name: str, base: Path, server: imserver.Server | None = None):
        self.name = name
        self.exe = find_tool(name)
        self.sandbox = Sandbox(base)
        self.server = server
        self.root = self.sandbox.base / "root"
        self.root.mkdir(exist_ok=True)
        # podman refuses a runroot longer than 50 characters, so it cannot live under tmp_path.
        self.runroot = Path(tempfile.mkdtemp(prefix=f"im-{name}-run-"))
        containers_conf = self.sandbox.base / "containers.conf"
        containers_conf.write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        storage_conf = self.sandbox.base / "storage.conf"
        storage_conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n')
        self.env = dict(self.sandbox.env, CONTAINERS_CONF=str(containers_conf),
                        CONTAINERS_STORAGE_CONF=str(storage_conf))
        self.global_flags = ["--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs"]
        if name == "podman":
            self.global_flags += ["--tmpdir", str(self.sandbox.tmp), "--cgroup-manager", "cgroupfs",
                                  "--events-backend", "file"]

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        return run([self.exe, *self.global_flags, *args], self.env, check=check, server=self.server,
                   input=input, cwd=cwd)

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def _registry_flags(self, authfile: Path | None, creds: str | None) -> list[str]:
        flags = ["--tls-verify=false", "--authfile", str(authfile or self.sandbox.authfile)]
        if creds is not None:
            flags += ["--creds", creds]
        return flags

    def push(self, image: str, dest: str, *extra: str, authfile: Path | None = None, creds: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        return self("push", *self._registry_flags(authfile, creds), "--signature-policy", str(self.sandbox.policy),
                    *extra, image, dest, check=check)

    def pull(self, ref: str, *extra: str, authfile: Path | None = None, creds: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        return self("pull", *self._registry_flags(authfile, creds), "--signature-policy", str(self.sandbox.policy),
                    *extra, ref, check=check)

    def login(self, host: str, user: str, password: str, authfile: Path, check: bool = True):
        return self("login", "--tls-verify=false", "--authfile", str(authfile), "--username", user,
                    "--password-stdin", host, input=password + "\n", check=check)

    def image_ids(self) -> set[str]:
        """Ids (config digest hex) of every image in this storage."""
        out = self("images", "--all", "--no-trunc", "--quiet").stdout
        return {line.strip().removeprefix("sha256:") for line in out.splitlines() if line.strip()}


def authfile_has(path: Path, host: str) -> bool:
    return host in json.loads(path.read_text() or "{}").get("auths", {})


# ----- an image to build -------------------------------------------------------------------

class Payload:
    """Files an image build copies into /srv, unique per instance (so digests differ between
    modules and runs)."""

    def __init__(self, base: Path, label: str):
        self.dir = Path(base)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files = {
            "hello.txt": f"hello from the {label} client test {os.urandom(8).hex()}\n".encode(),
            "data.bin": os.urandom(96 * 1024),
        }
        for name, data in self.files.items():
            (self.dir / name).write_bytes(data)
        (self.dir / "Containerfile").write_text(
            "FROM scratch\n" + "".join(f"COPY {name} /srv/{name}\n" for name in self.files)
            + f'LABEL org.example.test="{label}"\n')

    def image_paths(self) -> dict[str, bytes]:
        """{path inside the image: bytes}."""
        return {f"srv/{name}": data for name, data in self.files.items()}


# ----- servers -----------------------------------------------------------------------------

NS = "team"
ADMIN = ("root", "root-password-1")
WRITER = ("dev", "dev-password-1")        # writer in NS: pull and push
READER = ("viewer", "viewer-password-1")  # reader in NS: pull only
VICTIM = ("victim", "victim-password-1")  # writer in NS whose password the tests get wrong


cli = imserver.cli


def api(srv: imserver.Server, method: str, path: str, auth=ADMIN, **kw) -> requests.Response:
    return requests.request(method, srv.url + path, auth=auth, timeout=30, **kw)


def auth_server() -> imserver.Server:
    """A started server with `--auth token`: the first admin created with the CLI, as an
    operator would, then WRITER and VICTIM as writers and READER as reader of namespace NS."""
    srv = imserver.Server(args=["--auth", "token"], env={"RUST_LOG": os.environ.get("IM_TEST_RUST_LOG", "warn")})
    try:
        r = cli(srv, "user", "add", ADMIN[0], "--admin", "--password-stdin", stdin=ADMIN[1] + "\n")
        assert r.returncode == 0, r.stderr
        srv.start()
        for (name, password), role in ((WRITER, "writer"), (READER, "reader"), (VICTIM, "writer")):
            r = api(srv, "POST", "/api/v1/admin/users", json={"name": name, "password": password})
            assert r.status_code == 201, r.text
            r = api(srv, "PUT", f"/api/v1/admin/namespaces/{NS}/members/{name}", json={"role": role})
            assert r.status_code == 200, r.text
        # Clients discover the token flow from this challenge.
        r = requests.get(srv.url + "/v2/", timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer realm="), r.headers
    except BaseException:
        srv.close()
        raise
    return srv


def open_server() -> imserver.Server:
    """A started server on its defaults: loopback, no authentication."""
    return imserver.Server(env={"RUST_LOG": os.environ.get("IM_TEST_RUST_LOG", "warn")}).start()


def audit(srv: imserver.Server, actor: str) -> list[dict]:
    r = api(srv, "GET", "/api/v1/admin/audit", params={"actor": actor})
    assert r.status_code == 200, r.text
    return r.json()


def assert_pushed_by(srv: imserver.Server, actor: str, target: str, digest: str) -> None:
    """The audit log names `actor` as the one who pushed `digest` to `target` (repo:tag)."""
    entries = [e for e in audit(srv, actor) if e["action"] == "manifest.push" and e["target"] == target]
    assert any(e["outcome"] == "ok" and digest in (e.get("detail") or "") for e in entries), \
        (actor, target, digest, entries)


def assert_login_failed(srv: imserver.Server, actor: str) -> None:
    entries = [e for e in audit(srv, actor) if e["action"] == "login"]
    assert entries and all(e["outcome"] == "failed" for e in entries), entries


# ----- what the server stores --------------------------------------------------------------

def get_manifest(srv: imserver.Server, repo: str, ref: str, auth=None) -> requests.Response:
    return requests.get(f"{srv.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL},
                        auth=auth, timeout=30)


def get_blob(srv: imserver.Server, repo: str, digest: str, auth=None) -> bytes:
    r = requests.get(f"{srv.url}/v2/{repo}/blobs/{digest}", auth=auth, timeout=30)
    assert r.status_code == 200, (digest, r.status_code, r.text[:300])
    return r.content


def tar_files(layer: bytes) -> dict[str, bytes]:
    """{path: bytes} of the regular files in a (possibly gzip-compressed) layer tar."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tf:
        for m in tf.getmembers():
            if m.isfile():
                out[m.name.removeprefix("./").lstrip("/")] = tf.extractfile(m).read()
    return out


def assert_stored_image(srv: imserver.Server, repo: str, tag: str, fmt: str, files: dict[str, bytes],
                        auth=None) -> dict:
    """GET the manifest a client pushed and every blob it names, over plain HTTP: media types
    of format `fmt`, each blob served whole and hashing to its digest, the config's diff_ids
    matching the uncompressed layers, and `files` inside the layers byte for byte.
    Returns {"digest", "manifest", "config_digest", "body"}."""
    mt_manifest, mt_config, mt_layer = FORMATS[fmt]
    r = get_manifest(srv, repo, tag, auth=auth)
    assert r.status_code == 200, (r.status_code, r.text[:500], srv.log())
    body = r.content
    digest = sha256(body)
    assert r.headers.get("Docker-Content-Digest") == digest
    assert r.headers.get("Content-Type", "").split(";")[0] == mt_manifest
    manifest = json.loads(body)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == mt_manifest
    assert manifest["config"]["mediaType"] == mt_config
    assert manifest["layers"], manifest
    by_digest = requests.get(f"{srv.url}/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT_ALL},
                             auth=auth, timeout=30)
    assert by_digest.status_code == 200 and by_digest.content == body

    def blob(desc: dict) -> bytes:
        b = requests.get(f"{srv.url}/v2/{repo}/blobs/{desc['digest']}", auth=auth, timeout=30)
        assert b.status_code == 200, (desc, b.status_code, b.text[:300])
        assert sha256(b.content) == desc["digest"], f"blob {desc['digest']} served with other bytes"
        assert len(b.content) == desc["size"], desc
        return b.content

    config = json.loads(blob(manifest["config"]))
    assert config["rootfs"]["type"] == "layers"
    found: dict[str, bytes] = {}
    diff_ids = []
    for layer_desc in manifest["layers"]:
        assert layer_desc["mediaType"] == mt_layer, layer_desc
        data = blob(layer_desc)
        diff_ids.append(sha256(gzip.decompress(data)))
        found.update(tar_files(data))
    assert config["rootfs"]["diff_ids"] == diff_ids
    for path, data in files.items():
        assert path in found, (path, sorted(found))
        assert found[path] == data, f"{path} in the stored layer differs from what was built"
    return {"digest": digest, "manifest": manifest, "config_digest": manifest["config"]["digest"], "body": body}


def tags(srv: imserver.Server, repo: str, auth=None) -> list[str]:
    r = requests.get(f"{srv.url}/v2/{repo}/tags/list", auth=auth, timeout=30)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    return r.json().get("tags") or []
