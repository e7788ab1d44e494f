#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/ (committed; re-run only to regenerate it).
Disk images come from qemu-img, cut to their first few KiB (or, for formats read through the
file's end, packed in the inspect target's padded mode); CSARs are built with
tests/catalog/csarkit.py and a stand-in signer."""

import hashlib
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

root = Path(__file__).resolve().parent
sys.path.insert(0, str(root.parent / "tests" / "catalog"))
import csarkit  # noqa: E402

corpus = root / "corpus"


def put(target: str, name: str, data: bytes) -> None:
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---- inspect: control byte (see fuzz_targets/inspect.rs), then the bytes
WHOLE = 7 << 3  # fed in one chunk
PAD = 0x80


def plain(data: bytes, declared: int = 0) -> bytes:
    return bytes([WHOLE | declared]) + data


def padded(head: bytes, tail: bytes, size: int, declared: int = 0) -> bytes:
    """`head`, zeros, `tail` with a total of `size` bytes; both halves the same length."""
    n = max(len(head), len(tail))
    head, tail = head.ljust(n, b"\0"), tail.rjust(n, b"\0")
    pad = size - 2 * n
    assert pad >= 0 and pad % 512 == 0 and pad // 512 < 65536, (size, n)
    return bytes([PAD | WHOLE | declared]) + struct.pack("<H", pad // 512) + head + tail


with tempfile.TemporaryDirectory() as t:
    tmp = Path(t)

    def img(fmt: str, size: str, *opts: str, name: str = "img") -> bytes:
        p = tmp / f"{name}.{fmt}"
        p.unlink(missing_ok=True)
        cmd = ["qemu-img", "create", "-q", "-f", fmt]
        for o in opts:
            cmd += ["-o", o]
        subprocess.run(cmd + [str(p), size], check=True)
        return p.read_bytes()

    q = img("qcow2", "1M")
    put("inspect", "qcow2-v3", plain(q[:4096]))
    put("inspect", "qcow2-v3-declared", plain(q[:4096], 1))
    put("inspect", "qcow2-v2", plain(img("qcow2", "1M", "compat=0.10")[:4096]))
    put("inspect", "qcow2-truncated", plain(q[:64]))
    put("inspect", "qcow2-backing", plain(img("qcow2", "1M", f"backing_file={tmp / 'img.qcow2'}", "backing_fmt=qcow2", name="child")[:4096]))
    v = img("vmdk", "1M")
    put("inspect", "vmdk-sparse", plain(v) if len(v) <= 65536 else plain(v[:4096]))
    s = img("vmdk", "1M", "subformat=streamOptimized")
    put("inspect", "vmdk-stream", plain(s) if len(s) <= 16384 else plain(s[:8192]))
    d = img("vpc", "1M")
    put("inspect", "vhd-dynamic", plain(d) if len(d) <= 16384 else plain(d[:8192]))
    f = img("vpc", "1M", "subformat=fixed")
    put("inspect", "vhd-fixed", padded(f[:512], f[-512:], len(f), 4))
    x = img("vhdx", "1M")
    put("inspect", "vhdx-head", plain(x[:8192]))
    put("inspect", "raw-zeros", plain(bytes(1024)))
    put("inspect", "raw-declared-qcow2", plain(b"not a disk image\n", 1))
    iso = bytearray(40960)
    iso[32768:32768 + 6] = b"\x01CD001"
    struct.pack_into("<I", iso, 32768 + 80, 20)
    struct.pack_into(">I", iso, 32768 + 84, 20)
    struct.pack_into("<H", iso, 32768 + 128, 2048)
    struct.pack_into(">H", iso, 32768 + 130, 2048)
    iso[34816:34816 + 6] = b"\xffCD001"
    put("inspect", "iso-pvd", plain(bytes(iso), 6))

# ---- csar


class StubSigner:
    cert_pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    def cms(self, data: bytes) -> bytes:
        return b"-----BEGIN CMS-----\nMIIB\n-----END CMS-----\n"


sig = StubSigner()
image = bytes(q[:1024])
put("csar", "valid-with-image", csarkit.csar(image, sig))
put("csar", "valid-no-image", csarkit.csar(None, sig))
put("csar", "stored-entries", csarkit.csar(None, sig, stored={"Definitions/vnfd.yaml", "vnfd.mf"}))
put("csar", "tampered", csarkit.csar(None, sig, tamper={"Files/ChangeLog.txt": b"changed\n"}))
put("csar", "root-yaml-only", csarkit.zip_bytes([("vnfd.yaml", csarkit.vnfd([]))]))
put("csar", "duplicate-entry", csarkit.zip_bytes([("a.yaml", b"x: 1\n"), ("a.yaml", b"x: 2\n")]))
put("csar", "path-traversal", csarkit.zip_bytes([("../evil.yaml", b"x\n")]))
put("csar", "encrypted", csarkit.set_encrypted(csarkit.csar(None, sig), "Definitions/vnfd.yaml"))
put("csar", "not-a-zip", b"PK\x05\x06" + bytes(18))

# ---- manifest: selector byte (0 none, 1 OCI manifest, 2 OCI index, 3 artifact, 4 Docker, 5 list, 6 other)
D = lambda c: "sha256:" + hashlib.sha256(c.encode()).hexdigest()  # noqa: E731
image_m = ('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":'
           f'{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D("c")}","size":2}},'
           f'"layers":[{{"mediaType":"l","digest":"{D("l")}","size":3}},'
           f'{{"mediaType":"l","digest":"{D("f")}","size":3,"urls":["http://x"]}}],'
           f'"subject":{{"mediaType":"m","digest":"{D("s")}","size":9}},"annotations":{{"a":"b"}}}}')
put("manifest", "oci-image", b"\x01" + image_m.encode())
put("manifest", "oci-image-no-type", b"\x00" + image_m.encode())
put("manifest", "mismatch", b"\x02" + image_m.encode())
put("manifest", "oci-index", b"\x02" + (
    '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    f'"digest":"{D("a")}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}').encode())
put("manifest", "docker-list", b"\x05" + ('{"schemaVersion":2,"mediaType":'
    '"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}').encode())
put("manifest", "artifact", b"\x03" + ('{"mediaType":"application/vnd.oci.artifact.manifest.v1+json",'
    f'"artifactType":"x/y","blobs":[{{"mediaType":"b","digest":"sha512:{"ab" * 64}","size":1}}]}}').encode())
put("manifest", "bad-digest", b"\x01" + image_m.replace(D("l"), "sha256:XYZ").encode())
put("manifest", "negative-size", b"\x04" + image_m.replace('"size":3', '"size":-3', 1).encode())
put("manifest", "schema1", b"\x00" + b'{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}')

# ---- http_ranges: one header value
for i, v in enumerate(["bytes=0-9", "bytes=5-", "bytes=-5", "bytes=9-5", "bytes=0-1,3-4", "0-99",
                       "bytes 100-199/*", "bytes=0-18446744073709551614/1000",
                       "0-18446744073709551615", "18446744073709551615-18446744073709551615",
                       " bytes=  7 - 8 ", "x-1"]):
    put("http_ranges", f"seed-{i:02}", v.encode())

# ---- scope
for i, v in enumerate(["repository:library/alpine:pull", "repository:a/b:pull,push",
                       "repository:a:* registry:catalog:*", "repository:a:pull,admin,bogus,",
                       "repository:localhost:5000/a:pull", "repository:A:pull", "registry:other:*",
                       "user:x:pull", "repository:a", "  repository:ns/x__y.z-w:delete  "]):
    put("scope", f"seed-{i:02}", v.encode())
