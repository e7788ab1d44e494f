"""Real-client tests: the ORAS Python SDK (`oras` on PyPI) against image-manager.

Artifacts are pushed and pulled with the SDK (monolithic and chunked blob uploads, manifest
PUTs by tag and by digest, `subject` referrers, tag listing and deletion); the referrers API,
which the SDK has no call for, is read with plain HTTP.
"""

from __future__ import annotations

import json
import os
import types

import pytest
import requests

import oras.client as oras_client  # pip install -r tests/requirements.txt
import oras.decorator
import oras.oci

import imserver
from ocilayout import MT_OCI_EMPTY, MT_OCI_INDEX, MT_OCI_MANIFEST, sha256

EMPTY_CONFIG = b"{}"
CONFIG_TYPE = "application/vnd.example.thing.config.v1+json"
SIG_CONFIG_TYPE = "application/vnd.example.signature.config.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
ANNOTATIONS = {"org.opencontainers.image.description": "client test artifact",
               "com.example.build": "1234"}


@pytest.fixture(autouse=True)
def _no_retry_sleep(monkeypatch):
    # oras.decorator.retry sleeps 3 s, 5 s, 11 s, 29 s, 83 s between its retries of a failed
    # request (connection error or HTTP 500). Keep the retries, drop the waiting, so a server
    # bug fails the test in seconds instead of minutes.
    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=lambda _s: None))


@pytest.fixture(scope="module")
def server():
    with imserver.Server(env={"RUST_LOG": os.environ.get("IM_TEST_RUST_LOG", "info")}) as srv:
        yield srv


@pytest.fixture
def client(server):
    return oras_client.OrasClient(hostname=server.host, insecure=True)


def sent_digest(response: requests.Response) -> str:
    """Digest of the manifest bytes the SDK actually sent in a PUT."""
    body = response.request.body
    assert isinstance(body, bytes)
    return sha256(body)


def assert_manifest_put(response: requests.Response, server) -> str:
    assert response.status_code == 201, (response.status_code, response.text[:500], server.log())
    digest = sent_digest(response)
    assert response.headers.get("Docker-Content-Digest") == digest
    assert response.headers.get("Location"), "manifest PUT must answer with a Location"
    return digest


def referrers(server, repo: str, digest: str, artifact_type: str | None = None) -> requests.Response:
    params = {"artifactType": artifact_type} if artifact_type else None
    return requests.get(f"{server.url}/v2/{repo}/referrers/{digest}", params=params, timeout=30)


def referrer_index(response: requests.Response) -> dict[str, dict]:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers.get("Content-Type", "").split(";")[0] == MT_OCI_INDEX
    body = response.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == MT_OCI_INDEX
    return {d["digest"]: d for d in body["manifests"]}


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_push_pull_file_artifact(server, client, tmp_path):
    files = {
        "readme.txt": (b"hello from the oras client test\n" * 10, "text/plain"),
        "data.bin": (os.urandom(300 * 1024), "application/vnd.example.data.v1"),
        "meta.json": (json.dumps({"k": "v"}).encode(), "application/vnd.example.meta.v1+json"),
    }
    src = tmp_path / "src"
    src.mkdir()
    args = [f"{write(src / name, data)}:{mt}" for name, (data, mt) in files.items()]
    config = write(tmp_path / "config.json", json.dumps({"kind": "thing", "version": 3}).encode())

    resp = client.push(target=f"{server.host}/ns/files:v1", files=args,
                       manifest_config=f"{config}:{CONFIG_TYPE}",
                       manifest_annotations=ANNOTATIONS, disable_path_validation=True, quiet=True)
    digest = assert_manifest_put(resp, server)

    manifest = client.get_manifest(f"{server.host}/ns/files:v1")
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert manifest["config"]["digest"] == sha256((tmp_path / "config.json").read_bytes())
    assert manifest["annotations"] == ANNOTATIONS
    by_title = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in manifest["layers"]}
    assert set(by_title) == set(files)
    for name, (data, mt) in files.items():
        assert by_title[name]["mediaType"] == mt
        assert by_title[name]["digest"] == sha256(data)
        assert by_title[name]["size"] == len(data)

    # The registry serves the exact bytes the SDK sent, under the digest it computed.
    raw = requests.get(f"{server.url}/v2/ns/files/manifests/{digest}",
                       headers={"Accept": MT_OCI_MANIFEST}, timeout=30)
    assert raw.status_code == 200
    assert raw.content == resp.request.body
    assert raw.headers.get("Docker-Content-Digest") == digest

    out = tmp_path / "out"
    pulled = client.pull(target=f"{server.host}/ns/files:v1", outdir=str(out))
    assert sorted(os.path.basename(p) for p in pulled) == sorted(files)
    for name, (data, _mt) in files.items():
        assert (out / name).read_bytes() == data

    # Pulling by digest gives the same content.
    out2 = tmp_path / "out2"
    client.pull(target=f"{server.host}/ns/files@{digest}", outdir=str(out2))
    for name, (data, _mt) in files.items():
        assert (out2 / name).read_bytes() == data

    config_blob = client.get_blob(f"{server.host}/ns/files:v1", manifest["config"]["digest"])
    assert config_blob.status_code == 200
    assert config_blob.content == (tmp_path / "config.json").read_bytes()


def test_artifact_type_and_referrers(server, client, tmp_path):
    repo = "ns/art"
    base_file = write(tmp_path / "app.bin", os.urandom(64 * 1024))

    # The subject: a plain artifact pushed by tag.
    base_config = write(tmp_path / "cfg.json", b'{"a":1}')
    resp = client.push(target=f"{server.host}/{repo}:v1", files=[base_file],
                       manifest_config=f"{base_config}:{CONFIG_TYPE}",
                       disable_path_validation=True, quiet=True)
    subject_digest = assert_manifest_put(resp, server)
    subject = oras.oci.Subject(mediaType=MT_OCI_MANIFEST, digest=subject_digest,
                               size=len(resp.request.body))

    # Nothing refers to it yet: an empty index, not an error.
    assert referrer_index(referrers(server, repo, subject_digest)) == {}

    # Referrer 1 through the SDK's own `subject` support. It has no artifactType field, so the
    # referrers API must report its config media type as the artifactType.
    sig_annotations = {"com.example.signed-by": "ci", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    sig_file = write(tmp_path / "sig.bin", b"not really a signature " * 10)
    resp = client.push(target=f"{server.host}/{repo}:sig", files=[f"{sig_file}:application/vnd.example.sig.v1"],
                       manifest_config=f"{write(tmp_path / 'sigcfg.json', b'{}')}:{SIG_CONFIG_TYPE}",
                       manifest_annotations=sig_annotations, subject=subject,
                       disable_path_validation=True, quiet=True)
    sig_digest = assert_manifest_put(resp, server)
    assert resp.headers.get("OCI-Subject") == subject_digest, \
        "a registry with the referrers API answers a manifest PUT with a subject with OCI-Subject"
    sig_size = len(resp.request.body)

    # Referrer 2: an OCI 1.1 artifact (explicit artifactType, empty config) built with the SDK's
    # blob upload and manifest upload calls, PUT by digest rather than by tag.
    sbom = json.dumps({"packages": [{"name": "app", "version": "1.0"}]}).encode()
    sbom_file = write(tmp_path / "sbom.json", sbom)
    container = client.get_container(f"{server.host}/{repo}:unused")
    empty_file = write(tmp_path / "empty.json", EMPTY_CONFIG)
    empty_desc = {"mediaType": MT_OCI_EMPTY, "digest": sha256(EMPTY_CONFIG), "size": 2}
    sbom_layer = oras.oci.NewLayer(sbom_file, media_type="application/spdx+json")
    sbom_layer["annotations"] = {"org.opencontainers.image.title": "sbom.json"}
    for path, desc in ((empty_file, empty_desc), (sbom_file, sbom_layer)):
        r = client.upload_blob(path, container, desc)
        assert r.status_code in (200, 201), (r.status_code, r.text[:500])
    sbom_annotations = {"org.example.generator": "test", "org.opencontainers.image.created": "2024-02-02T00:00:00Z"}
    sbom_manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": empty_desc,
        "layers": [sbom_layer],
        "subject": {"mediaType": subject.mediaType, "digest": subject.digest, "size": subject.size},
        "annotations": sbom_annotations,
    }
    # requests serialises `json=` bodies exactly like this, so this is the digest of the bytes sent.
    sbom_bytes = requests.compat.json.dumps(sbom_manifest, allow_nan=False).encode()
    sbom_digest = sha256(sbom_bytes)
    resp = client.upload_manifest(sbom_manifest, client.get_container(f"{server.host}/{repo}@{sbom_digest}"))
    assert assert_manifest_put(resp, server) == sbom_digest
    assert resp.headers.get("OCI-Subject") == subject_digest

    listed = referrer_index(referrers(server, repo, subject_digest))
    assert set(listed) == {sig_digest, sbom_digest}
    assert listed[sig_digest] == {"mediaType": MT_OCI_MANIFEST, "digest": sig_digest, "size": sig_size,
                                  "artifactType": SIG_CONFIG_TYPE, "annotations": sig_annotations}
    assert listed[sbom_digest] == {"mediaType": MT_OCI_MANIFEST, "digest": sbom_digest, "size": len(sbom_bytes),
                                   "artifactType": SBOM_TYPE, "annotations": sbom_annotations}

    # Filtering by artifactType (the '+' is percent-encoded by requests).
    filtered = referrers(server, repo, subject_digest, SBOM_TYPE)
    assert set(referrer_index(filtered)) == {sbom_digest}
    assert filtered.headers.get("OCI-Filters-Applied") == "artifactType"
    filtered = referrers(server, repo, subject_digest, SIG_CONFIG_TYPE)
    assert set(referrer_index(filtered)) == {sig_digest}
    assert set(referrer_index(referrers(server, repo, subject_digest, "application/vnd.example.none"))) == set()

    # Referrers are per repository.
    assert referrer_index(referrers(server, "ns/files", subject_digest)) == {}

    # The referrer pulls back through the SDK with its subject intact.
    got = client.get_manifest(f"{server.host}/{repo}@{sbom_digest}")
    assert got["subject"]["digest"] == subject_digest
    assert got["artifactType"] == SBOM_TYPE
    out = tmp_path / "out"
    client.pull(target=f"{server.host}/{repo}@{sbom_digest}", outdir=str(out))
    assert (out / "sbom.json").read_bytes() == sbom

    # Deleting a referrer removes it from the subject's referrers.
    assert client.delete_tag(f"{server.host}/{repo}", "sig") is True
    listed = referrer_index(referrers(server, repo, subject_digest))
    assert set(listed) == {sbom_digest}


def test_chunked_upload_large_file(server, client, tmp_path):
    data = os.urandom(20 * 1024 * 1024 + 12345)
    big = write(tmp_path / "big.bin", data)
    # 6 MiB chunks: three full PATCHes and a short last one, then the closing PUT.
    resp = client.push(target=f"{server.host}/ns/big:chunked", files=[big], do_chunked=True,
                       chunk_size=6 * 1024 * 1024, disable_path_validation=True, quiet=True)
    assert_manifest_put(resp, server)
    head = requests.head(f"{server.url}/v2/ns/big/blobs/{sha256(data)}", timeout=30)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(data)
    out = tmp_path / "out"
    client.pull(target=f"{server.host}/ns/big:chunked", outdir=str(out))
    assert sha256((out / "big.bin").read_bytes()) == sha256(data)


def test_monolithic_upload_large_file(server, client, tmp_path):
    data = os.urandom(20 * 1024 * 1024 + 777)
    big = write(tmp_path / "mono.bin", data)
    resp = client.push(target=f"{server.host}/ns/big:mono", files=[big],
                       disable_path_validation=True, quiet=True)
    assert_manifest_put(resp, server)
    out = tmp_path / "out"
    client.pull(target=f"{server.host}/ns/big:mono", outdir=str(out))
    assert sha256((out / "mono.bin").read_bytes()) == sha256(data)


def test_tags_and_delete(server, client, tmp_path):
    f = write(tmp_path / "t.txt", b"tagged\n")
    tags = ["b1", "a1", "c1", "a2", "latest"]
    digests = {}
    for i, tag in enumerate(tags):
        # Distinct content per tag so deleting one manifest leaves the others.
        (tmp_path / "t.txt").write_bytes(f"tagged {i}\n".encode())
        resp = client.push(target=f"{server.host}/ns/tags:{tag}", files=[f],
                           disable_path_validation=True, quiet=True)
        digests[tag] = assert_manifest_put(resp, server)

    assert client.get_tags(f"{server.host}/ns/tags") == sorted(tags)
    assert client.get_tags(f"{server.host}/ns/tags", N=2) == sorted(tags)[:2]

    assert client.delete_tag(f"{server.host}/ns/tags", "a2") is True
    assert client.get_tags(f"{server.host}/ns/tags") == sorted(t for t in tags if t != "a2")
    gone = requests.get(f"{server.url}/v2/ns/tags/manifests/{digests['a2']}",
                        headers={"Accept": MT_OCI_MANIFEST}, timeout=30)
    assert gone.status_code == 404
    assert client.delete_tag(f"{server.host}/ns/tags", "a2") is False
    kept = client.get_manifest(f"{server.host}/ns/tags:a1")
    assert kept["layers"][0]["annotations"]["org.opencontainers.image.title"] == "t.txt"
