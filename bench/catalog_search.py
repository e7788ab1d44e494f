#!/usr/bin/env python3
"""Catalog search latency over a large catalog, on SQLite and PostgreSQL.

Fills a fresh catalog with N entries (default 100,000: 200 namespaces, five types, labels,
sizes, creation times over two years) by bulk-inserting rows into the migrated database, starts
`image-manager serve` on it, and times GET /api/v1/images for a mix of searches (substring,
prefix, type/format/os/arch filters, labels, size and time ranges, every sort order, cursor
pages), one request at a time over a kept-alive connection. Prints p50/p99/max per search kind
and overall. Goal: p99 under 20 ms.

    python3 bench/catalog_search.py [--entries 100000] [--requests 200] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "image-manager"
WORDS = ("alpine nginx redis postgres cirros ubuntu debian centos fedora vfirewall vrouter vlb amf smf upf "
         "nrf ausf udm pcf nssf dns dhcp ntp kafka zookeeper etcd grafana prometheus loki tempo envoy").split()
TYPES = ["container-image"] * 5 + ["vm-image"] * 3 + ["helm-chart", "vnf-package", "artifact"]
COLUMNS = ("id namespace name version type repository tag digest status size os architecture disk_format vendor "
           "description predecessor source details labels created_at updated_at").split()


def rows(n: int, seed: int = 7):
    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    for i in range(n):
        ns = f"ns{i % 200:03d}"
        kind = rnd.choice(TYPES)
        name = f"{rnd.choice(WORDS)}-{rnd.choice(WORDS)}-{i // 7}"
        version = f"{rnd.randint(0, 9)}.{rnd.randint(0, 20)}.{i % 7}"
        labels = {"env": rnd.choice(["prod", "dev", "test"]), "team": f"t{rnd.randint(0, 49)}"}
        disk = rnd.choice(["qcow2", "raw", "vmdk", "iso"]) if kind == "vm-image" else None
        created = now - rnd.randint(0, 2 * 365 * 86400 * 1000)
        yield {
            "id": f"{i:032x}", "namespace": ns, "name": name, "version": version, "type": kind,
            "repository": f"{ns}/{name}", "tag": version, "digest": "sha256:" + f"{i:064x}",
            "status": rnd.choice(["available"] * 8 + ["deprecated", "quarantined"]),
            "size": rnd.randint(1 << 20, 8 << 30), "os": rnd.choice(["linux", "linux", "windows"]),
            "architecture": rnd.choice(["amd64", "amd64", "arm64"]), "disk_format": disk,
            "vendor": rnd.choice(["acme", "globex", "initech", "umbrella"]), "description": None,
            "predecessor": None, "source": "registry", "details": "{}", "labels": json.dumps(labels),
            "created_at": created, "updated_at": created,
        }


def fill_sqlite(db: Path, n: int) -> None:
    con = sqlite3.connect(db)
    entries = list(rows(n))
    con.executemany(f"INSERT INTO catalog_entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    [tuple(e[c] for c in COLUMNS) for e in entries])
    con.executemany("INSERT INTO catalog_labels (entry_id, label, value) VALUES (?, ?, ?)",
                    [(e["id"], k, v) for e in entries for k, v in json.loads(e["labels"]).items()])
    con.commit()
    con.execute("ANALYZE")
    con.close()


def psql(db: str, sql: str, data: str | None = None) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   input=data, text=True, check=True, capture_output=True)


def fill_postgres(db: str, n: int) -> None:
    entries = list(rows(n))
    buf = io.StringIO()
    w = csv.writer(buf)
    for e in entries:
        w.writerow(["" if e[c] is None else e[c] for c in COLUMNS])
    psql(db, f"COPY catalog_entries ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '')", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    for e in entries:
        for k, v in json.loads(e["labels"]).items():
            w.writerow([e["id"], k, v])
    psql(db, "COPY catalog_labels (entry_id, label, value) FROM STDIN WITH (FORMAT csv)", buf.getvalue())
    psql(db, "ANALYZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def searches(rnd: random.Random):
    w = rnd.choice(WORDS)
    yield "list by name", {}
    yield "substring q", {"q": w[1:4]}
    yield "name prefix", {"name_prefix": w}
    yield "type+disk_format", {"type": "vm-image", "disk_format": rnd.choice(["qcow2", "raw"])}
    yield "label+type", {"label": f"env={rnd.choice(['prod', 'dev'])}", "type": "container-image"}
    yield "os+arch, newest", {"os": "linux", "architecture": "arm64", "sort": "-created"}
    yield "size range by size", {"min_size": 1 << 30, "max_size": 2 << 30, "sort": "size"}
    yield "created range", {"created_after": "2025-06-01T00:00:00Z", "created_before": "2025-09-01T00:00:00Z",
                            "sort": "-created"}
    yield "namespace+vendor", {"namespace": f"ns{rnd.randint(0, 199):03d}", "vendor": "acme"}
    yield "status deprecated", {"status": "deprecated", "sort": "-size"}


def measure(url: str, n: int) -> dict[str, list[float]]:
    rnd = random.Random(11)
    times: dict[str, list[float]] = {}
    s = requests.Session()
    for _ in range(n):
        for kind, params in searches(rnd):
            t0 = time.perf_counter()
            r = s.get(url + "/api/v1/images", params={**params, "limit": 50}, timeout=30)
            dt = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            times.setdefault(kind, []).append(dt)
        # Three pages deep by cursor.
        params = {"type": "container-image", "limit": 50, "sort": "-created"}
        for _ in range(3):
            t0 = time.perf_counter()
            r = s.get(url + "/api/v1/images", params=params, timeout=30)
            times.setdefault("cursor pages", []).append(time.perf_counter() - t0)
            params["cursor"] = r.json()["next_cursor"]
    return times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def run(backend: str, entries: int, reqs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    port = free_port()
    args = ["--data-dir", str(work)]
    db = None
    if backend == "postgres":
        db = f"bench_search_{os.getpid()}"
        psql("test", f"CREATE DATABASE {db}")
        args += ["--database", f"postgres://postgres@127.0.0.1:5432/{db}"]
    proc = None
    try:
        subprocess.run([BIN, "migrate", *args], check=True, capture_output=True)
        t0 = time.time()
        if backend == "sqlite":
            fill_sqlite(work / "metadata.db", entries)
        else:
            fill_postgres(db, entries)
        print(f"[{backend}] inserted {entries} entries in {time.time() - t0:.1f}s", file=sys.stderr)
        proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", *args],
                                env=dict(os.environ, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if requests.get(url + "/readyz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        total = requests.get(url + "/api/v1/images", params={"limit": 1}, timeout=30).json()
        assert total["items"], "no entries visible"
        measure(url, 10)  # warm caches
        times = measure(url, reqs)
        allt = [t for ts in times.values() for t in ts]
        print(f"\n{backend}: {entries} entries, {len(allt)} requests (limit 50)")
        print(f"{'search':22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for kind, ts in times.items():
            print(f"{kind:22} {pct(ts, 50):8.2f} {pct(ts, 99):8.2f} {max(ts) * 1000:8.2f}")
        print(f"{'ALL':22} {pct(allt, 50):8.2f} {pct(allt, 99):8.2f} {max(allt) * 1000:8.2f}   (goal p99 < 20 ms)")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if db:
            psql("test", f"DROP DATABASE IF EXISTS {db}")
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--manifest-path", str(ROOT / "Cargo.toml")], check=True)
    for b in (["sqlite", "postgres"] if a.backend == "both" else [a.backend]):
        run(b, a.entries, a.requests)


if __name__ == "__main__":
    main()
