"""ETSI SOL004 CSAR packages built in the tests with zipfile: TOSCA.meta, a SOL001 VNFD with
sw_image artifacts, a manifest with a SHA-256 hash per file and a CMS signature made with
openssl, a certificate, a ChangeLog and a qemu-img disk image."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

TOSCA_META = ("TOSCA-Meta-File-Version: 1.0\nCSAR-Version: 1.1\nCreated-By: test\n"
              "Entry-Definitions: Definitions/vnfd.yaml\nETSI-Entry-Manifest: vnfd.mf\n"
              "ETSI-Entry-Certificate: Files/vnfd.cert\n")

IMAGE_PATH = "Files/images/cirros.qcow2"

METADATA = {
    "vnf_provider_id": "Acme",
    "vnf_product_name": "vFirewall",
    "vnf_release_date_time": "2024-01-01T00:00:00+00:00",
    "vnf_package_version": "1.0.0",
}


@dataclass
class Signer:
    """A self-signed certificate and its key, for the package certificate and the manifest's
    CMS signature."""
    cert_pem: bytes
    key: Path
    cert: Path
    workdir: Path

    @classmethod
    def create(cls, d: Path) -> "Signer":
        key, cert = d / "key.pem", d / "cert.pem"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=vnf-test/O=Acme",
                            "-days", "30"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return cls(cert.read_bytes(), key, cert, d)

    def cms(self, data: bytes) -> bytes:
        src = self.workdir / "to-sign"
        src.write_bytes(data)
        r = subprocess.run(["openssl", "cms", "-sign", "-binary", "-in", str(src), "-signer", str(self.cert),
                            "-inkey", str(self.key), "-outform", "PEM"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"-----BEGIN CMS-----"), r.stdout[:100]
        return r.stdout


def sw_image_data(image: bytes, **overrides) -> dict:
    """What a VNFD says about `image`: right unless overridden."""
    d = {"name": "cirros", "version": "0.6.2", "algorithm": "sha-256", "hash": hashlib.sha256(image).hexdigest(),
         "container_format": "bare", "disk_format": "qcow2", "min_disk": "1 GB", "min_ram": "512 MB",
         "size": f"{len(image)} B"}
    d.update(overrides)
    return d


def vdu(node: str, file: str, sw: dict) -> str:
    return f"""    {node}:
      type: tosca.nodes.nfv.Vdu.Compute
      properties:
        name: {node}
        description: a VDU
        vdu_profile:
          min_number_of_instances: 1
          max_number_of_instances: 1
        sw_image_data:
          name: {sw['name']}
          version: '{sw['version']}'
          checksum:
            algorithm: {sw['algorithm']}
            hash: {sw['hash']}
          container_format: {sw['container_format']}
          disk_format: {sw['disk_format']}
          min_disk: {sw['min_disk']}
          min_ram: {sw['min_ram']}
          size: {sw['size']}
      artifacts:
        sw_image:
          type: tosca.artifacts.nfv.SwImage
          file: {file}
"""


def vnfd(vdus: list[str]) -> bytes:
    return ("""tosca_definitions_version: tosca_simple_yaml_1_3
description: vFirewall VNF for the catalog tests
imports:
  - etsi_nfv_sol001_common_types.yaml
  - etsi_nfv_sol001_vnfd_types.yaml
topology_template:
  node_templates:
    vFirewall:
      type: tosca.nodes.nfv.VNF
      properties:
        descriptor_id: b1bb0ce7-ebca-4fa7-95ed-4840d70a1177
        descriptor_version: '1.0'
        provider: Acme
        product_name: vFirewall
        software_version: '1.0.0'
        product_info_name: vFirewall
        vnfm_info:
          - gvnfm
        flavour_id: simple
""" + "".join(vdus)).encode()


def manifest(listed: dict[str, bytes], signer: Signer | None, metadata: dict | None = None) -> bytes:
    lines = ["metadata:"] + [f" {k}: {v}" for k, v in (metadata or METADATA).items()] + [""]
    for path, data in listed.items():
        lines += [f"Source: {path}", "Algorithm: SHA-256", f"Hash: {hashlib.sha256(data).hexdigest()}", ""]
    body = "\n".join(lines).encode()
    if signer:
        body += signer.cms(body)
    return body


def package_files(image: bytes | None, signer: Signer, sw: dict | None = None, extra_vdus: list[str] = (),
                  files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The files of a valid package (besides the manifest), in zip order."""
    vdus = []
    if image is not None:
        vdus.append(vdu("VDU1", "../" + IMAGE_PATH, sw or sw_image_data(image)))
    vdus += list(extra_vdus)
    out = {"TOSCA-Metadata/TOSCA.meta": TOSCA_META.encode(), "Definitions/vnfd.yaml": vnfd(vdus)}
    if image is not None:
        out[IMAGE_PATH] = image
    out["Files/ChangeLog.txt"] = b"1.0.0 2024-01-01: first release\n"
    out["Files/vnfd.cert"] = signer.cert_pem
    out.update(files or {})
    return out


def zip_bytes(entries: list[tuple[str, bytes]], stored: set[str] = frozenset()) -> bytes:
    """A zip of `entries` in order, names exactly as given (duplicates allowed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of one test
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    return buf.getvalue()


def csar(image: bytes | None, signer: Signer, *, sw: dict | None = None, extra_vdus: list[str] = (),
         files: dict[str, bytes] | None = None, listed_only: dict[str, bytes] | None = None,
         tamper: dict[str, bytes] | None = None, add: list[tuple[str, bytes]] = (),
         stored: set[str] = frozenset(), metadata: dict | None = None) -> bytes:
    """A CSAR. `listed_only`: in the manifest, not in the zip; `tamper`: in the zip with these
    bytes instead of the ones hashed in the manifest; `add`: zip entries the manifest does not
    list; `stored`: entries written uncompressed."""
    real = package_files(image, signer, sw, extra_vdus, files)
    listed = {**real, **(listed_only or {})}
    mf = manifest(listed, signer, metadata)
    entries = [("TOSCA-Metadata/TOSCA.meta", real["TOSCA-Metadata/TOSCA.meta"]), ("vnfd.mf", mf)]
    entries += [(p, (tamper or {}).get(p, d)) for p, d in real.items() if p != "TOSCA-Metadata/TOSCA.meta"]
    entries += list(add)
    return zip_bytes(entries, stored)


def set_encrypted(zip_data: bytes, name: str) -> bytes:
    """Set bit 0 (encrypted) of the general-purpose flags of entry `name` in both its local
    header and its central directory header."""
    data = bytearray(zip_data)
    info = zipfile.ZipFile(io.BytesIO(zip_data)).getinfo(name)
    local = info.header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    data[local + 6] |= 1
    eocd = data.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<I", data, eocd + 16)[0]
    pos, found = cd_offset, False
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + n].decode() == name:
            data[pos + 8] |= 1
            found = True
        pos += 46 + n + m + k
    assert found, name
    return bytes(data)
