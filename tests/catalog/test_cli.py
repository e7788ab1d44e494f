"""`image-manager image upload` and `image upload-package`: the catalog API from the command line,
streamed with a progress bar, authenticated as a user."""

from __future__ import annotations

import hashlib
import json
import subprocess

import requests

import imserver

ADMIN = ("root", "root-password-1")


def run(*args, stdin=None):
    return subprocess.run([imserver.binary(), *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_cli_uploads_an_image_as_a_user_and_reports_refusals(tmp_path):
    disk = tmp_path / "edge.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "128M"], check=True, capture_output=True)
    srv = imserver.Server(args=["--auth", "token"])
    try:
        for url in srv.databases:
            imserver.create_database(url)
        srv._created = True
        r = run("user", "add", ADMIN[0], "--admin", "--password-stdin", "--data-dir", srv.data_dir, *srv.extra,
                stdin=ADMIN[1] + "\n")
        assert r.returncode == 0, r.stderr
        srv.start()
        # Without credentials the server says no, and the CLI says why.
        r = run("image", "upload", str(disk), "--name", "edge", "--version", "1", "--server", srv.url)
        assert r.returncode != 0 and "401" in r.stderr
        r = run("image", "upload", str(disk), "--name", "edge", "--version", "1", "--namespace", "ops",
                "--min-ram", "268435456", "--label", "site=lab", "--server", srv.url, "--user", ADMIN[0],
                "--password-stdin", stdin=ADMIN[1] + "\n")
        assert r.returncode == 0, r.stderr
        e = json.loads(r.stdout)
        assert (e["type"], e["namespace"], e["name"], e["version"]) == ("vm-image", "ops", "edge", "1")
        assert e["checksums"]["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
        assert e["details"]["vm"]["min_ram"] == 268435456 and e["labels"] == {"site": "lab"}
        assert e["details"]["vm"]["file_name"] == "edge.qcow2"
        got = requests.get(f"{srv.url}/api/v1/images/{e['id']}", auth=ADMIN, timeout=30).json()
        assert got["id"] == e["id"]
        # A contradiction between the declared format and the bytes is refused; exit code says so.
        r = run("image", "upload", str(disk), "--name", "edge", "--version", "2", "--namespace", "ops",
                "--disk-format", "raw", "--server", srv.url, "--user", ADMIN[0], "--password-stdin",
                stdin=ADMIN[1] + "\n")
        assert r.returncode != 0 and "422" in r.stderr and "contradicts" in r.stderr
    finally:
        srv.close()
