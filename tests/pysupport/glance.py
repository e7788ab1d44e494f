"""Start and stop a real OpenStack Glance 33 (optionally behind a real Keystone 30) for
Python test suites: tests/services/glance/start.sh on free loopback ports in a temporary data
dir, stopped by stop.sh and removed on close.

    from glance import Glance                  # with tests/pysupport on sys.path (conftest.py)
    with Glance(mode="noauth") as g:           # or mode="keystone"
        requests.get(f"{g.endpoint}/v2/images")
    with Glance(mode="keystone") as g:
        g.auth_url, g.demo_user, g.demo_password, g.demo_project, g.region
        app_id, app_secret = g.demo_app_credential("vim-1")
        token = g.token("demo", g.demo_password, "demo")

The venvs come from scripts/install-test-deps.sh (`start.sh --install-only`); tests never
pip-install (GLANCE_NO_INSTALL=1), so a missing venv fails with the command to run. Web-download
may fetch from 127.0.0.1 and localhost only (any port). Readiness is awaited by start.sh
polling with a deadline, never by sleeping a fixed time. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "tests" / "services" / "glance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Glance:
    """One Glance (and Keystone in keystone mode) of its own; `start()`/`stop()` or `with`."""

    def __init__(self, mode: str = "noauth", env: dict[str, str] | None = None):
        if mode not in ("noauth", "keystone"):
            raise ValueError("mode is noauth or keystone")
        self.mode = mode
        self.extra_env = dict(env or {})
        self.data_dir: str | None = None
        self.endpoint: str | None = None  # http://127.0.0.1:PORT
        self.auth_url: str | None = None  # http://127.0.0.1:PORT/v3 (keystone mode)
        self.region = "RegionOne"
        self.demo_user = "demo"
        self.demo_password = "demo-secret"
        self.demo_project = "demo"
        self.admin_password = "admin-secret"
        self.vars: dict[str, str] = {}

    def start(self) -> "Glance":
        self.data_dir = tempfile.mkdtemp(prefix="im-glance-")
        env = dict(os.environ)
        env.update({
            "GLANCE_DATA_DIR": self.data_dir,
            "GLANCE_PORT": str(free_port()),
            "KEYSTONE_PORT": str(free_port()),
            "GLANCE_AUTH": self.mode,
            "GLANCE_NO_INSTALL": "1",
        })
        env.update(self.extra_env)
        proc = subprocess.run(["bash", str(SERVICES / "start.sh")], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"glance start.sh failed ({proc.returncode}):\n{proc.stderr}\n{logs}")
        self.vars = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        self.endpoint = self.vars["GLANCE_ENDPOINT"]
        if self.mode == "keystone":
            self.auth_url = self.vars["OS_AUTH_URL"]
            self.region = self.vars["OS_REGION_NAME"]
            self.demo_password = self.vars["KEYSTONE_DEMO_PASSWORD"]
            self.admin_password = self.vars["OS_PASSWORD"]
        return self

    def stop(self) -> None:
        if not self.data_dir:
            return
        env = dict(os.environ, GLANCE_DATA_DIR=self.data_dir)
        subprocess.run(["bash", str(SERVICES / "stop.sh")], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir = None

    def __enter__(self) -> "Glance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        """The last lines of the service logs, for failure messages."""
        out = []
        for name in ("glance-api.log", "glance-api.gunicorn.log", "keystone.log"):
            p = Path(self.data_dir or "/nonexistent") / "log" / name
            if p.exists():
                out.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # --- Keystone (keystone mode) ---------------------------------------------------------

    def _call(self, method: str, path: str, body=None, token: str | None = None):
        if not self.auth_url:
            raise RuntimeError("not a keystone-mode Glance")
        req = urllib.request.Request(self.auth_url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Auth-Token", token)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.headers.get("X-Subject-Token"), (json.loads(raw) if raw else {})

    def token(self, user: str, password: str, project: str) -> str:
        """A token of `user` scoped to `project` (all in domain Default)."""
        return self.token_doc(user, password, project)[0]

    def token_doc(self, user: str, password: str, project: str):
        return self._call("POST", "/auth/tokens", {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})

    def admin_token(self) -> str:
        return self.token("admin", self.admin_password, "admin")

    def demo_app_credential(self, name: str) -> tuple[str, str]:
        """A new application credential of user demo on project demo: (id, secret)."""
        token, doc = self.token_doc(self.demo_user, self.demo_password, self.demo_project)
        user_id = doc["token"]["user"]["id"]
        _, out = self._call("POST", f"/users/{user_id}/application_credentials",
                            {"application_credential": {"name": name}}, token=token)
        ac = out["application_credential"]
        return ac["id"], ac["secret"]
