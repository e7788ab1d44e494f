"""Start and stop moto's S3 server (a real S3-compatible HTTP server) for test suites.

From Python:

    from pysupport.s3server import S3Server
    with S3Server(bucket="im-test") as s3:
        args = f"--storage s3://{s3.bucket}/{{id}}?endpoint={s3.endpoint}&region=us-east-1&path_style=true"

From a shell (scripts/test.sh), the server outliving the command:

    eval "$(python3 tests/pysupport/s3server.py start --bucket im-test)"   # sets S3_ENDPOINT, S3_PID, S3_BUCKET
    ...
    python3 tests/pysupport/s3server.py stop "$S3_PID"

`start` prints `S3_ENDPOINT=http://127.0.0.1:PORT`, `S3_PID=PID`, `S3_BUCKET=NAME` (and
`S3_LOG=PATH`, the server's output) and records the PID in a state file so that `stop` without
a PID stops it. Readiness is awaited by polling with a deadline, never by sleeping a fixed time.
moto accepts any credentials; clients still need some: `AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

STATE_FILE = Path(tempfile.gettempdir()) / "image-manager-s3server.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One `python3 -m moto.server` process on 127.0.0.1 with one bucket created."""

    def __init__(self, bucket: str = "im-test", port: int | None = None, log_path: str | None = None):
        self.bucket = bucket
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or str(Path(tempfile.gettempdir()) / f"image-manager-moto-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def start(self, timeout: float = 60.0, detach: bool = False) -> "S3Server":
        """Start the server, wait until it answers, create the bucket. With `detach`, the
        server runs in its own session and survives this Python process."""
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=detach)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.endpoint + "/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server not answering after {timeout}s: {self.log()}")
            time.sleep(0.1)  # polling interval while waiting for readiness, not synchronisation
        self.create_bucket(self.bucket)
        return self

    def create_bucket(self, bucket: str) -> None:
        r = requests.put(f"{self.endpoint}/{bucket}", timeout=10)
        if r.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {bucket}: {r.status_code} {r.text[:500]}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        elif self.pid is not None:
            stop_pid(self.pid, timeout)
        self.pid = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_moto(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the caller
    return b"moto.server" in cmdline


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop the moto server with this PID (only if it is one), waiting for it to exit."""
    if not _alive(pid) or not _is_moto(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        try:  # reap it when it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)  # polling interval while waiting for exit
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a server in the background and create a bucket")
    start.add_argument("--bucket", default="im-test")
    start.add_argument("--port", type=int, default=None)
    start.add_argument("--timeout", type=float, default=60.0)
    stop = sub.add_parser("stop", help="stop a server started with `start`")
    stop.add_argument("pid", type=int, nargs="?", help="default: the last one started")
    args = parser.parse_args(argv)

    if args.command == "start":
        server = S3Server(bucket=args.bucket, port=args.port).start(timeout=args.timeout, detach=True)
        STATE_FILE.write_text(json.dumps({"pid": server.pid, "endpoint": server.endpoint}))
        print(f"S3_ENDPOINT={server.endpoint}")
        print(f"S3_PID={server.pid}")
        print(f"S3_BUCKET={server.bucket}")
        print(f"S3_LOG={server.log_path}")
        return 0

    pid = args.pid
    if pid is None:
        try:
            pid = json.loads(STATE_FILE.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            print("no server recorded; nothing to stop", file=sys.stderr)
            return 0
    stop_pid(pid)
    try:
        if json.loads(STATE_FILE.read_text()).get("pid") == pid:
            STATE_FILE.unlink()
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
