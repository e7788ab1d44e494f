"""Build and read OCI image layouts by hand for the real-client tests.

Everything is deterministic for a given seed: tar members carry fixed metadata and gzip
streams have mtime 0, so the same seed always yields the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def dumps(obj) -> bytes:
    """Deliberately non-canonical JSON (indent 3, trailing newline).

    A registry must store and serve manifests byte for byte; re-serialising would change
    these bytes and therefore the digest.
    """
    return (json.dumps(obj, indent=3) + "\n").encode()


@dataclass
class Image:
    manifest: bytes
    digest: str
    config: bytes
    layers: list[bytes]
    layer_diff_ids: list[str]
    arch: str
    os: str

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(b) for b in self.layers]

    @property
    def blobs(self) -> dict[str, bytes]:
        out = {sha256(self.config): self.config}
        out.update({sha256(b): b for b in self.layers})
        return out

    def descriptor(self, with_platform: bool = False) -> dict:
        d = {"mediaType": MT_OCI_MANIFEST, "digest": self.digest, "size": len(self.manifest)}
        if with_platform:
            d["platform"] = {"architecture": self.arch, "os": self.os}
        return d


@dataclass
class Index:
    manifest: bytes
    digest: str
    images: list[Image]

    def descriptor(self) -> dict:
        return {"mediaType": MT_OCI_INDEX, "digest": self.digest, "size": len(self.manifest)}


@dataclass
class Layout:
    root: Path
    refs: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self._write_index()

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def add_image(self, seed: str, arch: str = "amd64", os_: str = "linux",
                  big_layer: int = 3 * 1024 * 1024) -> Image:
        """An image with a config and 3 gzip layers (small, medium, and `big_layer` bytes of
        incompressible data)."""
        rnd = random.Random(seed)
        tars = [
            make_tar({f"etc/{seed}-release": f"seed={seed} arch={arch}\n".encode()}),
            make_tar({f"usr/share/{seed}/data-{i}.txt": (f"{seed}-{i} " * 400).encode() for i in range(50)}),
            make_tar({f"opt/{seed}/blob.bin": rnd.randbytes(big_layer)}),
        ]
        layers = [gzip_bytes(t) for t in tars]
        diff_ids = [sha256(t) for t in tars]
        config = dumps({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": os_,
            "config": {"Env": ["PATH=/usr/bin:/bin", f"SEED={seed}"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(3)],
        })
        self.add_blob(config)
        for layer in layers:
            self.add_blob(layer)
        manifest = dumps({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers],
            "annotations": {"org.opencontainers.image.title": seed},
        })
        digest = self.add_blob(manifest)
        return Image(manifest, digest, config, layers, diff_ids, arch, os_)

    def add_index(self, images: list[Image]) -> Index:
        body = dumps({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [img.descriptor(with_platform=True) for img in images],
        })
        return Index(body, self.add_blob(body), images)

    def tag(self, descriptor: dict, ref: str) -> None:
        d = dict(descriptor)
        d["annotations"] = {REF_NAME: ref}
        self.refs.append(d)
        self._write_index()

    def _write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self.refs}))


def read_layout(root: Path) -> tuple[dict[str, dict], dict[str, bytes]]:
    """Return ({ref name: descriptor}, {digest: bytes}) of a layout written by someone else,
    asserting that every blob file's content matches its name."""
    root = Path(root)
    assert json.loads((root / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    index = json.loads((root / "index.json").read_text())
    refs = {}
    for desc in index["manifests"]:
        name = (desc.get("annotations") or {}).get(REF_NAME)
        if name:
            refs[name] = desc
    blobs = {}
    for path in (root / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert sha256(data) == "sha256:" + path.name, f"blob {path} does not match its digest"
        blobs["sha256:" + path.name] = data
    return refs, blobs
