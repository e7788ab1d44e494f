"""A server that implements ONAP MultiCloud's image API as its API description (the
`multivim.image` swagger of the openstack plugins) describes it: there is no installable
MultiCloud, so the distribution tests run this instead.

    v0: /api/multicloud/v0/{cloud-owner}_{region}/{tenant}/images[/{id}]
    v1: /api/multicloud/v1/{cloud-owner}/{region}/{tenant}/images[/{id}]

POST creates an image from `name`, `imagePath`, `imageType`, `containerFormat`, `visibility`
and `properties` ([{keyName, value}]): `returnCode` 0 when an image of that name exists (that
image is answered), else 1, and the bytes are fetched from `imagePath` in the background (then
`status` active, `size`, `checksum` md5 and sha512 `os_hash_value`, as Glance reports them).
GET lists (`?name=`) or reads one; DELETE removes one."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import urllib.request
import uuid


class MultiCloud:
    def __init__(self, cloud_owner: str, region: str, tenant: str, read_bytes_per_sec: int | None = None):
        """`read_bytes_per_sec` makes it a slow cloud: it reads images at about that rate.
        `fetching` is how many images it is fetching now, `fetching_peak` the most at once."""
        self.cloud_owner, self.region, self.tenant = cloud_owner, region, tenant
        self.read_bytes_per_sec = read_bytes_per_sec
        self.fetching = self.fetching_peak = 0
        self.images: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        mc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _route(self):
                path = self.path.split("?", 1)[0]
                v0 = f"/api/multicloud/v0/{mc.cloud_owner}_{mc.region}/{mc.tenant}/images"
                v1 = f"/api/multicloud/v1/{mc.cloud_owner}/{mc.region}/{mc.tenant}/images"
                for base in (v0, v1):
                    if path == base:
                        return base, None
                    if path.startswith(base + "/"):
                        return base, path[len(base) + 1:]
                return None, None

            def _send(self, status: int, body=None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                base, iid = self._route()
                mc.requests.append(("GET", self.path))
                if base is None:
                    return self._send(404, {"error": "unknown vim or tenant"})
                with mc.lock:
                    if iid:
                        img = mc.images.get(iid)
                        return self._send(200, img) if img else self._send(404, {"error": "no such image"})
                    name = None
                    if "?" in self.path:
                        from urllib.parse import parse_qs
                        name = parse_qs(self.path.split("?", 1)[1]).get("name", [None])[0]
                    imgs = [i for i in mc.images.values() if name is None or i["name"] == name]
                self._send(200, {"vimId": f"{mc.cloud_owner}_{mc.region}", "vimName": mc.region,
                                 "tenantId": mc.tenant, "images": imgs})

            def do_POST(self):
                base, iid = self._route()
                mc.requests.append(("POST", self.path))
                if base is None or iid:
                    return self._send(404, {"error": "unknown vim or tenant"})
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                for k in ("name", "imagePath", "imageType", "containerFormat"):
                    if k not in req:
                        return self._send(400, {"error": f"{k} is required"})
                with mc.lock:
                    for img in mc.images.values():
                        if img["name"] == req["name"]:
                            return self._send(200, dict(img, returnCode=0))
                    img = {"id": str(uuid.uuid4()), "name": req["name"], "status": "queued",
                           "imageType": req["imageType"], "containerFormat": req["containerFormat"],
                           "visibility": req.get("visibility", "private"), "tenantId": mc.tenant,
                           "vimId": f"{mc.cloud_owner}_{mc.region}"}
                    for p in req.get("properties", []):
                        img[p["keyName"]] = p["value"]
                    mc.images[img["id"]] = img
                threading.Thread(target=mc._fetch, args=(img["id"], req["imagePath"]), daemon=True).start()
                self._send(201, dict(img, returnCode=1))

            def do_DELETE(self):
                base, iid = self._route()
                mc.requests.append(("DELETE", self.path))
                with mc.lock:
                    if base is None or not iid or iid not in mc.images:
                        return self._send(404, {"error": "no such image"})
                    del mc.images[iid]
                self._send(204)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/multicloud"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _read(self, r) -> bytes:
        if not self.read_bytes_per_sec:
            return r.read()
        chunk, out, start = 16 * 1024, bytearray(), time.monotonic()
        while True:
            b = r.read(chunk)
            if not b:
                return bytes(out)
            out += b
            # A slow link: hold the reading back to the rate (throttling, not synchronisation).
            ahead = len(out) / self.read_bytes_per_sec - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def _fetch(self, iid: str, url: str):
        with self.lock:
            self.fetching += 1
            self.fetching_peak = max(self.fetching_peak, self.fetching)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = self._read(r)
            update = {"status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest(),
                      "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}
        except Exception as e:  # the image fails, as Glance's would
            update = {"status": "killed", "error": str(e)}
        with self.lock:
            self.fetching -= 1
            if iid in self.images:
                self.images[iid].update(update)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
