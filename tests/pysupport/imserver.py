"""Start and stop a real image-manager server for Python test suites.

The binary is `$IMAGE_MANAGER_BIN` or `target/debug/image-manager` at the project root.
Extra server arguments (for backend matrices) come from `$IM_TEST_SERVER_ARGS`
(shell-split). Readiness is awaited by polling GET /readyz with a deadline, never by sleeping
a fixed time.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    path = os.environ.get("IMAGE_MANAGER_BIN") or str(ROOT / "target" / "debug" / "image-manager")
    if not Path(path).exists():
        raise RuntimeError(f"image-manager binary not found at {path}: run `cargo build` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One image-manager process on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None, port: int | None = None):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="im-test-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.setdefault("RUST_LOG", "warn")
        self.env.update(env or {})
        self.args = list(args or [])
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(data_dir) / "server.log"

    def start(self, timeout: float = 30.0) -> "Server":
        extra = shlex.split(os.environ.get("IM_TEST_SERVER_ARGS", ""))
        cmd = [binary(), "serve", "--listen", self.host, "--data-dir", self.data_dir, *extra, *self.args]
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout}s: {self.log()}")
            time.sleep(0.05)  # polling interval while waiting for readiness, not synchronisation

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
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
