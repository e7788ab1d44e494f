"""Garbage collection: `image-manager gc` against the stores of a stopped or running server,
and the server's own schedule (`[gc] interval_secs`).

Every `gc` invocation gets the server's data directory and its `$IM_TEST_SERVER_ARGS`
(`server.extra`), so under the backend matrix it works on the same database and blob store.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests

import imserver

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"

# Collect everything the rules allow: no retention for untagged manifests, no grace for blobs.
NOW = ["--untagged-retention-secs", "0", "--blob-grace-secs", "0"]


digest = imserver.digest


def new_repo(prefix: str = "gc") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def gc(srv: imserver.Server, *args: str, timeout: float = 120) -> dict:
    """Run `image-manager gc --json` on the server's stores and return its report."""
    cmd = [imserver.binary(), "gc", "--data-dir", srv.data_dir, *srv.extra, "--json", *args]
    run = subprocess.run(cmd, env=srv.env, capture_output=True, timeout=timeout)
    assert run.returncode == 0, f"gc failed ({run.returncode}): {run.stderr.decode(errors='replace')}"
    return json.loads(run.stdout)


def on_filesystem(srv: imserver.Server) -> bool:
    """Whether the blobs live under the data directory (no --storage from the matrix)."""
    return "--storage" not in srv.extra


def blob_file(srv: imserver.Server, d: str) -> Path:
    hexd = d.split(":", 1)[1]
    return Path(srv.data_dir) / "blobs" / "sha256" / hexd[:2] / hexd


def trash(srv: imserver.Server) -> list[Path]:
    t = Path(srv.data_dir) / "trash"
    return sorted(t.iterdir()) if t.exists() else []


def push_blob(srv: imserver.Server, repo: str, data: bytes) -> str:
    d = digest(data)
    r = requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={d}", data=data,
                      headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return d


def descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def image_manifest(config: bytes, layers: list[bytes], subject: bytes | None = None,
                   artifact_type: str | None = None) -> bytes:
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": descriptor(CONFIG_TYPE, config),
         "layers": [descriptor(LAYER_TYPE, layer) for layer in layers]}
    if subject is not None:
        m["subject"] = descriptor(OCI_MANIFEST, subject)
    if artifact_type:
        m["artifactType"] = artifact_type
    return json.dumps(m, sort_keys=True).encode()


def index_manifest(children: list[bytes]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [descriptor(OCI_MANIFEST, c) for c in children]}).encode()


def put_manifest(srv: imserver.Server, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST):
    return requests.put(f"{srv.url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type})


def push_image(srv: imserver.Server, repo: str, ref: str | None, layers: list[bytes], config: bytes | None = None,
               subject: bytes | None = None) -> tuple[bytes, list[bytes]]:
    """Push blobs and manifest; `ref` None pushes by digest (untagged). Returns (manifest, blobs)."""
    config = config if config is not None else os.urandom(40)
    for data in [config, *layers]:
        push_blob(srv, repo, data)
    body = image_manifest(config, layers, subject=subject)
    r = put_manifest(srv, repo, ref or digest(body), body)
    assert r.status_code == 201, r.text
    return body, [config, *layers]


def has_manifest(srv: imserver.Server, repo: str, ref: str) -> bool:
    r = requests.head(f"{srv.url}/v2/{repo}/manifests/{ref}",
                      headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert r.status_code in (200, 404), r.status_code
    return r.status_code == 200


def has_blob(srv: imserver.Server, repo: str, d: str) -> bool:
    r = requests.head(f"{srv.url}/v2/{repo}/blobs/{d}")
    assert r.status_code in (200, 404), r.status_code
    return r.status_code == 200


def blob_bytes(srv: imserver.Server, repo: str, d: str) -> bytes | None:
    r = requests.get(f"{srv.url}/v2/{repo}/blobs/{d}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.status_code
    return r.content


def deleted(report: dict, kind: str) -> set[str]:
    return {e["digest"] for e in report["deleted"] if e["kind"] == kind}


poll = imserver.poll


def test_untagged_manifests_and_their_exclusive_blobs_are_collected_offline():
    with imserver.Server() as srv:
        repo = new_repo()
        shared = os.urandom(1000)
        old, old_blobs = push_image(srv, repo, "v1", [os.urandom(3000), shared])
        new, new_blobs = push_image(srv, repo, "v1", [os.urandom(2000), shared])  # moves the tag
        gone = [digest(b) for b in old_blobs if b is not shared]

        # Nothing is old enough under the defaults (7 days, 1 h).
        report = gc(srv)
        assert report["manifests"] == 0 and report["blobs"] == 0
        assert has_manifest(srv, repo, digest(old))

        srv.stop()
        report = gc(srv, *NOW)
        srv.start()

        assert report["dry_run"] is False
        assert report["manifest_links"] == 1 and report["manifests"] == 1
        assert report["manifest_bytes"] == len(old)
        assert deleted(report, "manifest") == {digest(old)}
        assert deleted(report, "blob") == set(gone)
        assert report["blob_bytes"] == sum(len(b) for b in old_blobs if b is not shared)

        assert not has_manifest(srv, repo, digest(old))
        assert has_manifest(srv, repo, "v1")
        assert requests.get(f"{srv.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == new
        for d in gone:
            assert not has_blob(srv, repo, d)
        for b in new_blobs:
            assert blob_bytes(srv, repo, digest(b)) == b
        if on_filesystem(srv):
            assert all(not blob_file(srv, d).exists() for d in gone)
            assert all(blob_file(srv, digest(b)).exists() for b in new_blobs)
            assert trash(srv) == []

        # A second run finds nothing more.
        again = gc(srv, *NOW)
        assert again["manifests"] == 0 and again["blobs"] == 0 and again["manifest_links"] == 0


def test_blob_still_linked_from_another_repository_survives():
    with imserver.Server() as srv:
        one, two = new_repo(), new_repo()
        shared = os.urandom(4096)
        m1, _ = push_image(srv, one, "v1", [shared])
        push_image(srv, two, "v1", [shared])
        assert requests.delete(f"{srv.url}/v2/{one}/manifests/v1").status_code == 202  # untag

        report = gc(srv, *NOW)
        assert digest(m1) in deleted(report, "manifest")
        assert digest(shared) not in deleted(report, "blob")
        assert not has_blob(srv, one, digest(shared)), "repository one no longer links it"
        assert blob_bytes(srv, two, digest(shared)) == shared
        if on_filesystem(srv):
            assert blob_file(srv, digest(shared)).read_bytes() == shared


def test_referrers_of_tagged_images_and_index_children_survive():
    with imserver.Server() as srv:
        repo = new_repo()
        tagged, tagged_blobs = push_image(srv, repo, "v1", [os.urandom(500)])
        sig, sig_blobs = push_image(srv, repo, None, [os.urandom(300)], subject=tagged)
        sig_of_sig, _ = push_image(srv, repo, None, [os.urandom(200)], subject=sig)
        child1, child1_blobs = push_image(srv, repo, None, [os.urandom(400)])
        child2, child2_blobs = push_image(srv, repo, None, [os.urandom(410)])
        index = index_manifest([child1, child2])
        assert put_manifest(srv, repo, "multi", index, OCI_INDEX).status_code == 201
        loose, loose_blobs = push_image(srv, repo, None, [os.urandom(600)])
        loose_sig, loose_sig_blobs = push_image(srv, repo, None, [os.urandom(100)], subject=loose)
        # An untagged index whose child is tagged: the index goes, the child stays.
        kept_child, kept_child_blobs = push_image(srv, repo, "kept", [os.urandom(50)])
        loose_index = index_manifest([kept_child])
        assert put_manifest(srv, repo, digest(loose_index), loose_index, OCI_INDEX).status_code == 201

        report = gc(srv, *NOW)
        assert deleted(report, "manifest") == {digest(loose), digest(loose_sig), digest(loose_index)}
        assert deleted(report, "blob") == {digest(b) for b in loose_blobs + loose_sig_blobs}
        for m in (tagged, sig, sig_of_sig, child1, child2, index, kept_child):
            assert has_manifest(srv, repo, digest(m))
        for b in tagged_blobs + sig_blobs + child1_blobs + child2_blobs + kept_child_blobs:
            assert blob_bytes(srv, repo, digest(b)) == b
        refs = requests.get(f"{srv.url}/v2/{repo}/referrers/{digest(tagged)}").json()
        assert [m["digest"] for m in refs["manifests"]] == [digest(sig)]
        assert not has_manifest(srv, repo, digest(loose))


def test_blob_without_manifest_survives_the_grace_period():
    with imserver.Server() as srv:
        repo = new_repo()
        data = os.urandom(2048)
        d = push_blob(srv, repo, data)
        report = gc(srv, "--untagged-retention-secs", "0")  # grace: the default hour
        assert report["blob_links"] == 0 and report["blobs"] == 0
        assert blob_bytes(srv, repo, d) == data

        report = gc(srv, "--untagged-retention-secs", "0", "--blob-grace-secs", "3600")
        assert report["blobs"] == 0
        report = gc(srv, *NOW)
        assert deleted(report, "blob-link") == {d} and deleted(report, "blob") == {d}
        assert report["blob_bytes"] == len(data)
        assert not has_blob(srv, repo, d)

        # Pushed again after a collection: stored anew, bytes intact.
        push_blob(srv, repo, data)
        assert blob_bytes(srv, repo, d) == data


def test_dry_run_changes_nothing_and_counts_bytes():
    with imserver.Server() as srv:
        repo, other = new_repo(), new_repo()
        old, old_blobs = push_image(srv, repo, "v1", [os.urandom(1234), os.urandom(777)])
        push_image(srv, repo, "v1", [os.urandom(10)])
        # The same untagged manifest in two repositories: it only goes when both let it go.
        for b in old_blobs:
            push_blob(srv, other, b)
        assert put_manifest(srv, other, digest(old), old).status_code == 201
        stray = push_blob(srv, repo, os.urandom(999))

        dry = gc(srv, "--dry-run", *NOW)
        assert dry["dry_run"] is True
        assert dry["manifest_links"] == 2
        assert dry["manifests"] == 1 and dry["manifest_bytes"] == len(old)
        assert deleted(dry, "blob") == {digest(b) for b in old_blobs} | {stray}
        assert dry["blob_bytes"] == sum(len(b) for b in old_blobs) + 999
        # Nothing changed.
        assert has_manifest(srv, repo, digest(old)) and has_manifest(srv, other, digest(old))
        for b in old_blobs:
            assert blob_bytes(srv, repo, digest(b)) == b
        assert has_blob(srv, repo, stray)
        assert gc(srv, "--dry-run", *NOW) == dry, "a dry run is repeatable"

        real = gc(srv, *NOW)
        assert real["dry_run"] is False
        for key in ("manifest_links", "blob_links", "manifests", "manifest_bytes", "blobs", "blob_bytes"):
            assert real[key] == dry[key], key
        assert not has_manifest(srv, repo, digest(old)) and not has_manifest(srv, other, digest(old))
        assert has_manifest(srv, repo, "v1")


def test_text_report():
    with imserver.Server() as srv:
        repo = new_repo()
        push_image(srv, repo, "v1", [b"x" * 100])
        push_image(srv, repo, "v1", [b"y" * 100])
        cmd = [imserver.binary(), "gc", "--data-dir", srv.data_dir, *srv.extra, "--dry-run", *NOW]
        out = subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=60, check=True).stdout
        assert f"would delete blob {digest(b'x' * 100)} (100 bytes)" in out
        assert out.strip().splitlines()[-1].startswith("would delete 1 manifests (")


def test_online_schedule_collects():
    # The blob grace covers the gap between a push's blobs and its manifest (a loaded machine
    # can make it longer than the collection interval); the old image's blobs pass it while
    # the test waits.
    env = {"IMAGE_MANAGER_GC__INTERVAL_SECS": "1",
           "IMAGE_MANAGER_GC__UNTAGGED_RETENTION_SECS": "0",
           "IMAGE_MANAGER_GC__BLOB_GRACE_SECS": "5",
           "RUST_LOG": "info"}
    with imserver.Server(env=env) as srv:
        repo = new_repo()
        old, old_blobs = push_image(srv, repo, "v1", [os.urandom(700)])
        new, new_blobs = push_image(srv, repo, "v1", [os.urandom(800)])
        poll(lambda: not has_manifest(srv, repo, digest(old)), what="the scheduled collection")
        poll(lambda: not any(has_blob(srv, repo, digest(b)) for b in old_blobs), what="old blobs collected")
        for b in new_blobs:
            assert blob_bytes(srv, repo, digest(b)) == b
        poll(lambda: "garbage collection" in srv.log(), what="the collection summary in the log")


class Pusher(threading.Thread):
    """Pushes images into a few repositories while collections run: fresh blobs, blobs shared
    between images (skipped when the repository already has them), tags moved to new images,
    now and then an index. Remembers what each tag must end up pointing at."""

    def __init__(self, srv: imserver.Server, repos: list[str], rounds: int, seed: int,
                 progress: threading.Condition):
        super().__init__(daemon=True)
        self.srv, self.repos, self.rounds, self.progress = srv, repos, rounds, progress
        self.rng = random.Random(seed)
        self.pool = [os.urandom(self.rng.randint(1, 64 * 1024)) for _ in range(6)]
        self.expected: dict[tuple[str, str], tuple[bytes, str, list[bytes]]] = {}
        self.pushed = 0
        self.retries = 0
        self.error: BaseException | None = None
        self.done = False

    def run(self) -> None:
        try:
            for i in range(self.rounds):
                repo = self.rng.choice(self.repos)
                tag = f"t{self.rng.randint(0, 3)}"
                if i % 7 == 6:
                    self.push_index(repo, tag)
                else:
                    self.push(repo, tag)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            with self.progress:
                self.done = True
                self.progress.notify_all()

    def upload(self, repo: str, blobs: list[bytes], force: bool) -> None:
        for b in blobs:
            if not force and requests.head(f"{self.srv.url}/v2/{repo}/blobs/{digest(b)}").status_code == 200:
                continue  # reuse what the repository has, as clients do
            r = requests.post(f"{self.srv.url}/v2/{repo}/blobs/uploads/?digest={digest(b)}", data=b)
            if r.status_code != 201:
                raise RuntimeError(f"blob upload: {r.status_code} {r.text}")

    def put(self, repo: str, ref: str, body: bytes, media_type: str, prepare, tagged: bool = True) -> None:
        """PUT a manifest, preparing (uploading what it needs) again when a collection took
        something it relied on in between: with no grace period that is the rules. Only
        tagged pushes count as progress."""
        failures = []
        for attempt in range(30):
            try:
                prepare(attempt > 0)
                r = put_manifest(self.srv, repo, ref, body, media_type)
            except RuntimeError as e:
                failures.append(str(e)[:120])
                r = None
            if r is not None and r.status_code == 201:
                if tagged:
                    with self.progress:
                        self.pushed += 1
                        self.progress.notify_all()
                return
            if r is not None and r.status_code not in (400, 404, 500):
                raise RuntimeError(f"manifest push: {r.status_code} {r.text}")
            if r is not None:
                failures.append(f"{r.status_code} {r.text[:120]}")
            self.retries += 1
        raise RuntimeError(f"manifest {ref} in {repo} not pushed after 30 attempts: {failures[-3:]}")

    def make_image(self) -> tuple[bytes, list[bytes]]:
        layers = [os.urandom(self.rng.randint(1, 32 * 1024))]
        layers += self.rng.sample(self.pool, self.rng.randint(0, 2))
        config = json.dumps({"n": self.rng.random()}).encode()
        return image_manifest(config, layers), [config, *layers]

    def push(self, repo: str, tag: str) -> None:
        body, blobs = self.make_image()
        self.put(repo, tag, body, OCI_MANIFEST, lambda force: self.upload(repo, blobs, force))
        self.expected[(repo, tag)] = (body, OCI_MANIFEST, blobs)

    def push_index(self, repo: str, tag: str) -> None:
        children = [self.make_image() for _ in range(2)]
        index = index_manifest([c[0] for c in children])

        def prepare(force: bool) -> None:
            for body, blobs in children:
                # Children go by digest: untagged, so only the index keeps them once it is in.
                self.put(repo, digest(body), body, OCI_MANIFEST,
                         lambda f, b=blobs: self.upload(repo, b, force or f), tagged=False)

        self.put(repo, tag, index, OCI_INDEX, prepare)
        self.expected[(repo, tag)] = (index, OCI_INDEX, [b for _, blobs in children for b in blobs])


def verify_images(srv: imserver.Server, expected: dict) -> int:
    checked = 0
    for (repo, tag), (body, media_type, blobs) in sorted(expected.items()):
        r = requests.get(f"{srv.url}/v2/{repo}/manifests/{tag}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
        assert r.status_code == 200, f"{repo}:{tag}: {r.status_code}"
        assert r.content == body, f"{repo}:{tag} points at another manifest"
        if media_type == OCI_INDEX:
            for child in json.loads(body)["manifests"]:
                assert has_manifest(srv, repo, child["digest"]), f"{repo}:{tag} lost child {child['digest']}"
        for b in blobs:
            got = blob_bytes(srv, repo, digest(b))
            assert got is not None, f"{repo}:{tag} lost blob {digest(b)}"
            assert hashlib.sha256(got).hexdigest() == digest(b).split(":")[1] and got == b
            checked += 1
    return checked


def test_collections_during_continuous_pushes_lose_nothing_tagged():
    """`gc` runs again and again, with no retention and no grace, while two clients push.

    A run starts once every pusher has completed a push since the previous run started: with
    no grace period a collection may take the blobs a push just uploaded (the client then
    uploads them again), and this keeps the pushers making progress however slow the storage,
    while every run still overlaps pushes in flight."""
    with imserver.Server(env={"IMAGE_MANAGER_STORAGE__FSYNC": "false"}) as srv:
        repos = [new_repo("gcrace") for _ in range(3)]
        progress = threading.Condition()
        pushers = [Pusher(srv, repos[:2], rounds=45, seed=1, progress=progress),
                   Pusher(srv, repos[2:], rounds=30, seed=2, progress=progress)]
        for p in pushers:
            p.start()
        runs = collected = 0
        deadline = time.monotonic() + 300
        seen = [0 for _ in pushers]

        def everyone_moved() -> bool:
            return all(p.pushed > n or p.done for p, n in zip(pushers, seen))

        while not all(p.done for p in pushers) and time.monotonic() < deadline:
            with progress:
                progress.wait_for(everyone_moved, timeout=30)
                seen = [p.pushed for p in pushers]
            report = gc(srv, *NOW)
            runs += 1
            collected += report["manifests"] + report["blobs"]
        for p in pushers:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
            assert not p.is_alive(), "pusher did not finish in time"
            assert p.error is None, f"pusher failed: {p.error!r}"
        final = gc(srv, *NOW)
        collected += final["manifests"] + final["blobs"]

        assert runs >= 10, "collections ran while pushing"
        assert collected > 0, "moved tags left garbage that was collected"
        expected = {k: v for p in pushers for k, v in p.expected.items()}
        assert verify_images(srv, expected) > 0
        # Nothing else is left: every remaining manifest is reachable, so a further run is empty.
        after = gc(srv, *NOW)
        assert after["manifests"] == 0 and after["manifest_links"] == 0 and after["blobs"] == 0
        if on_filesystem(srv):
            assert trash(srv) == []
        assert srv.alive(), srv.log()
