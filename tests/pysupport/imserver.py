"""Start and stop a real image-manager server for Python test suites.

The binary is `$IMAGE_MANAGER_BIN` or `target/debug/image-manager` at the project root.
Extra server arguments (for backend matrices) come from `$IM_TEST_SERVER_ARGS`
(shell-split); `{id}` in them becomes an id unique to each Server (a fresh database name or
bucket prefix per server, created before the first start and dropped on close). Readiness is awaited by polling GET /readyz with a deadline, never by sleeping
a fixed time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from urllib.parse import urlparse

import requests

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    path = os.environ.get("IMAGE_MANAGER_BIN") or str(ROOT / "target" / "debug" / "image-manager")
    if not Path(path).exists():
        raise RuntimeError(f"image-manager binary not found at {path}: run `cargo build` first")
    return path


def _database_command(url: str, sql: str) -> list[str] | None:
    """The client command that runs `sql` on the server of a postgres:// or mysql:// URL."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", str(parsed.port or "")
    user = parsed.username or ""
    if parsed.scheme in ("postgres", "postgresql"):
        return ["psql", "-h", host, "-p", port or "5432", "-U", user or "postgres", "-d", "test",
                "-v", "ON_ERROR_STOP=1", "-qc", sql]
    if parsed.scheme in ("mysql", "mariadb"):
        return ["mariadb", "-h", host, "-P", port or "3306", "-u", user or "root", "-e", sql]
    return None


def create_database(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    cmd = _database_command(url, f"CREATE DATABASE {name}")
    if cmd:
        subprocess.run(cmd, check=True, capture_output=True)


def drop_database(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    cmd = _database_command(url, f"DROP DATABASE IF EXISTS {name}")
    if cmd:
        subprocess.run(cmd, check=False, capture_output=True)


def poll(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until `predicate()` is true, checking every 50 ms up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # polling interval, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


def cli(srv: "Server", *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run an image-manager command (accounts, GC) against `srv`'s store, creating its
    databases first if the server has not started yet."""
    if not srv._created:
        for url in srv.databases:
            create_database(url)
        srv._created = True
    cmd = [binary(), *args, "--data-dir", srv.data_dir, *srv.extra]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def digest(data: bytes) -> str:
    """The OCI digest (sha256) of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def scrape_metrics(srv: "Server") -> dict[str, float]:
    """The server's /metrics, as {series (name and labels): value}; checks the format."""
    r = requests.get(f"{srv.url}/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^(\S+?)(\{[^}]*\})?\s+(\S+)$", line)
        assert m, f"unparsable metrics line {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric(metrics: dict[str, float], name: str, **labels) -> float:
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, v in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(have.get(k) == str(want) for k, want in labels.items()):
            total += v
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One image-manager process on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None, port: int | None = None, matrix: bool = True,
                 tls: tuple[str, str] | None = None):
        """`matrix=False` ignores $IM_TEST_SERVER_ARGS: for tests of the embedded defaults.
        `tls=(cert_pem, key_pem)` serves HTTPS; `verify` is then the certificate to trust."""
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="im-test-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.verify: str | bool = tls[0] if tls else True
        self.env = dict(os.environ)
        self.env.setdefault("RUST_LOG", "warn")
        self.env.update(env or {})
        self.args = list(args or [])
        if tls:
            self.args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.id = "im" + uuid.uuid4().hex[:12]
        matrix_args = os.environ.get("IM_TEST_SERVER_ARGS", "") if matrix else ""
        self.extra = [a.replace("{id}", self.id) for a in shlex.split(matrix_args)]
        self.proc: subprocess.Popen | None = None
        # Databases named after this server's id are created on first start, dropped on close.
        self.databases = [self.extra[i + 1] for i, a in enumerate(self.extra[:-1])
                          if a == "--database" and self.id in self.extra[i + 1]]
        self._created = False
        self.log_path = Path(data_dir) / "server.log"

    def start(self, timeout: float = 30.0) -> "Server":
        if self.alive():
            # A second start would orphan the first process (`with srv.start():` starts twice).
            raise RuntimeError(f"server on {self.url} is already running")
        cmd = [binary(), "serve", "--listen", self.host, "--data-dir", self.data_dir, *self.extra, *self.args]
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        if not self._created:
            for url in self.databases:
                create_database(url)
            self._created = True
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout}s: {self.log()}")
            time.sleep(0.05)  # polling interval while waiting for readiness, not synchronisation

    def replica(self, env: dict[str, str] | None = None) -> "Server":
        """Another server process on its own port sharing this one's data dir, database and
        blob store (a replica). Start it after this one; close it before this one."""
        other = Server(data_dir=self.data_dir, env=env, args=self.args)
        other.id, other.extra, other.databases = self.id, list(self.extra), []
        other.log_path = Path(self.data_dir) / f"server-{other.port}.log"
        return other

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def close(self) -> None:
        self.stop()
        if self._created:
            for url in self.databases:
                drop_database(url)
            self._created = False
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
