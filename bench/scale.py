#!/usr/bin/env python3
"""API work of bench/scale.sh: register the simulated VIMs, run one distribution and measure
it, print the summary. Standard library only. Every command prints JSON (or a table).

  scale.py vims CENTRAL SIM_BASE N REGIONS OUT.json [--relays URL,URL,...]
  scale.py upload CENTRAL FILE NAME VERSION            -> the entry
  scale.py patch-vim CENTRAL VIM_ID JSON
  scale.py run CENTRAL ENTRY_ID VIMS.json --label L --sim SIM_URL --pids name=PID,... [...]
  scale.py check CENTRAL SIM_URL FILE VIMS.json        (the client check: push, web-download, skip)
  scale.py summary RESULTS.jsonl
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL = {"active", "failed", "cancelled", "removed"}


class Api:
    """A tiny JSON client that counts the body bytes it reads (they are part of the central's
    egress counter, and are subtracted from it)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.read_bytes = 0

    def call(self, method: str, path: str, body=None, timeout: float = 120.0, ok=(200, 201, 202, 204)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        self.read_bytes += len(raw)
        if status not in ok:
            raise SystemExit(f"{method} {path}: HTTP {status}: {raw[:2000].decode(errors='replace')}")
        return json.loads(raw) if raw else None

    def text(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            raw = r.read()
        self.read_bytes += len(raw)
        return raw.decode()


def metric(api: Api, name: str) -> float | None:
    """The sum of every sample of `name` (with or without labels) in GET /metrics."""
    total, seen = 0.0, False
    for line in api.text("/metrics").splitlines():
        if line.startswith("#"):
            continue
        key = line.split(" ", 1)[0]
        if key == name or key.startswith(name + "{"):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (IndexError, ValueError):
                pass
    return total if seen else None


def proc(pid: int) -> dict:
    """CPU seconds (user + system) and peak RSS (VmHWM, KiB) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        hwm = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return {"cpu_s": cpu, "hwm_kib": hwm}
    except (OSError, IndexError, ValueError):
        return {"cpu_s": None, "hwm_kib": None}


def reset_hwm(pid: int) -> bool:
    """Reset a process's peak RSS to its current RSS (needs root, as in bench.sh)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sim_stats(sim: str, reset_peak: bool = False) -> dict:
    q = "?reset_peak=1" if reset_peak else ""
    with urllib.request.urlopen(sim.rstrip("/") + "/stats" + q, timeout=60) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- commands

def cmd_vims(a) -> None:
    api = Api(a.central)
    relays = [u for u in (a.relays or "").split(",") if u]

    def one(i: int) -> dict:
        region = f"r{i % a.regions}"
        body = {"name": f"sim-{i:05d}", "type": "openstack", "glance_url": f"{a.sim_base}/g/{i}",
                "labels": {"region": region, "sim": "1"}}
        if relays and a.per_vim_relay:
            # Per VIM (VimInput.relay_url) instead of by label (the central's distribution.relays).
            body["relay_url"] = relays[i % a.regions]
        v = api.call("POST", "/api/v1/vims", body)
        return {"i": i, "id": v["id"], "region": region, "glance_url": body["glance_url"]}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        vims = list(pool.map(one, range(a.n)))
    with open(a.out, "w") as f:
        json.dump(vims, f)
    print(json.dumps({"registered": len(vims)}))


def upload(api: Api, path: str, name: str, version: str) -> dict:
    size = os.path.getsize(path)
    q = urllib.parse.urlencode({"name": name, "version": version, "disk_format": "raw"})
    with open(path, "rb") as f:
        req = urllib.request.Request(f"{api.base}/api/v1/images?{q}", data=f, method="POST")
        req.add_header("Content-Type", "application/octet-stream")
        req.add_header("Content-Length", str(size))
        with urllib.request.urlopen(req, timeout=3600) as r:
            raw = r.read()
    api.read_bytes += len(raw)
    return json.loads(raw)


def cmd_upload(a) -> None:
    e = upload(Api(a.central), a.file, a.name, a.version)
    print(json.dumps({"id": e["id"], "size": e.get("size"), "kind": e.get("kind") or e.get("type")}))


def cmd_patch_vim(a) -> None:
    v = Api(a.central).call("PATCH", f"/api/v1/vims/{a.vim}", json.loads(a.json))
    print(json.dumps({"id": v["id"], "settings": v["settings"]}))


def wait_job(api: Api, job_id: str, deadline: float, every: float, ignore: set[str], t0: float,
             after_others: float | None = None):
    """Poll until every target is final (or the deadline, or `after_others` seconds after the
    targets not in `ignore` are final): returns the last view, the time all targets not in
    `ignore` were final, and the time all were final (None if not)."""
    others_done = all_done = None
    while True:
        job = api.call("GET", f"/api/v1/distributions/{job_id}")
        now = time.monotonic() - t0
        targets = job["targets"]
        rest = [t for t in targets if t["vim_id"] not in ignore]
        if others_done is None and all(t["state"] in FINAL for t in rest):
            others_done = now
            if after_others is not None:
                deadline = min(deadline, time.monotonic() + after_others)
        if all(t["state"] in FINAL for t in targets):
            all_done = now
            return job, others_done, all_done
        if time.monotonic() >= deadline:
            return job, others_done, all_done
        time.sleep(every)


def cmd_run(a) -> None:
    api = Api(a.central)
    vims = json.load(open(a.vims))
    if a.first:
        vims = spread(vims, a.first)
    # "ROLE=VIM_ID" or "VIM_ID", comma-separated.
    roles = {x.split("=", 1)[-1]: (x.split("=", 1)[0] if "=" in x else "") for x in (a.ignore or "").split(",") if x}
    ignore = set(roles)
    pids = {}
    for kv in (a.pids or "").split(","):
        if "=" in kv:
            k, v = kv.split("=", 1)
            pids[k] = int(v)
    entry = api.call("GET", f"/api/v1/images/{a.entry}")
    size = int(entry["details"]["vm"].get("file_size") or entry["size"])
    egress_metric = a.egress_metric
    reset = {k: reset_hwm(p) for k, p in pids.items()}
    before = {k: proc(p) for k, p in pids.items()}
    sim0 = sim_stats(a.sim, reset_peak=True)
    m0 = metric(api, egress_metric)
    read0 = api.read_bytes
    t0 = time.monotonic()
    job = api.call("POST", "/api/v1/distributions",
                   {"images": [a.entry], "vims": [v["id"] for v in vims], "method": a.method})
    job, others_s, all_s = wait_job(api, job["id"], t0 + a.timeout, a.poll, ignore, t0,
                                    a.fault_wait if ignore else None)
    wall = time.monotonic() - t0
    m1 = metric(api, egress_metric)
    polled_all = api.read_bytes - read0  # the /metrics page itself counts too
    after = {k: proc(p) for k, p in pids.items()}
    sim1 = sim_stats(a.sim)
    states: dict[str, int] = {}
    for t in job["targets"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    n = len(job["targets"])
    regions = len({v["region"] for v in vims})
    central_src = a.central.split("://", 1)[-1].rstrip("/")
    by0 = sim0.get("web_download_bytes_by_source") or {}
    by1 = sim1.get("web_download_bytes_by_source") or {}
    from_central = by1.get(central_src, 0) - by0.get(central_src, 0)
    served = None if m0 is None or m1 is None else m1 - m0
    # The driver's own reads of the central (polls, /metrics) are in the all-responses counter.
    own = polled_all if egress_metric.endswith("http_response_body_bytes_total") else 0
    served_net = None if served is None else max(0.0, served - own)
    egress = served_net if served_net is not None else from_central
    procs = {}
    for k in pids:
        b, e = before[k], after[k]
        cpu = None if b["cpu_s"] is None or e["cpu_s"] is None else e["cpu_s"] - b["cpu_s"]
        procs[k] = {"cpu_s": r3(cpu), "peak_rss_mib": r3(e["hwm_kib"] / 1024 if e["hwm_kib"] else None),
                    "peak_reset": reset[k]}
    ignored = [{"role": roles.get(t["vim_id"], ""), "vim_id": t["vim_id"], "state": t["state"], "attempts": t["attempts"],
                "bytes_done": t["bytes_done"], "last_error": (t.get("last_error") or "")[:300]}
               for t in job["targets"] if t["vim_id"] in ignore]
    central_cpu = procs.get("central", {}).get("cpu_s")
    line = {
        "run": a.label, "method": a.method, "image_mib": r3(size / 1048576), "targets": n, "regions": regions,
        "states": states, "all_final": all_s is not None,
        "wall_s": r3(all_s if all_s is not None else wall),
        "others_wall_s": r3(others_s) if ignore else None,
        "central_served_bytes": served_net, "central_served_raw_bytes": served,
        "driver_read_bytes": polled_all, "sim_bytes_from_central": from_central,
        "copies_per_region": r3(egress / size / regions) if egress is not None and size else None,
        "copies_total": r3(egress / size) if egress is not None and size else None,
        "sim_bytes_received": sim1["totals"]["bytes_received"] - sim0["totals"]["bytes_received"],
        "sim_transfers_peak": sim1["totals"]["transfers_peak"],
        "central_cpu_ms_per_target": r3(central_cpu * 1000 / n) if central_cpu is not None and n else None,
        "procs": procs, "ignored": ignored, "job": job["id"],
        "failed_examples": [(t["vim_id"], (t.get("last_error") or "")[:200]) for t in job["targets"]
                            if t["state"] == "failed" and t["vim_id"] not in ignore][:3],
    }
    print(json.dumps(line))


def spread(vims: list[dict], k: int) -> list[dict]:
    """k VIMs spread over the regions (round robin over them)."""
    by: dict[str, list[dict]] = {}
    for v in vims:
        by.setdefault(v["region"], []).append(v)
    out, i = [], 0
    keys = sorted(by)
    while len(out) < min(k, len(vims)):
        r = by[keys[i % len(keys)]]
        j = i // len(keys)
        if j < len(r):
            out.append(r[j])
        i += 1
    return out


def r3(x):
    return None if x is None else round(x, 3)


def cmd_check(a) -> None:
    """The real client against the simulator: push and web-download reach active, a second
    distribution is skipped as already there, and the VIM health check passes."""
    api = Api(a.central)
    vims = json.load(open(a.vims))[:4]
    e = upload(api, a.file, "sim-check", "1")
    out = {}
    for method, vs in (("push", vims[:2]), ("web-download", vims[2:4])):
        for round_ in ("first", "again"):
            t0 = time.monotonic()
            job = api.call("POST", "/api/v1/distributions",
                           {"images": [e["id"]], "vims": [v["id"] for v in vs], "method": method})
            job, _, done = wait_job(api, job["id"], t0 + 300, 0.2, set(), t0)
            out[f"{method}/{round_}"] = {
                "states": [t["state"] for t in job["targets"]],
                "skipped": [t["skipped"] for t in job["targets"]],
                "errors": [t.get("last_error") for t in job["targets"] if t.get("last_error")],
                "secs": r3(done)}
    # The health check (GET /v2/images?limit=1, /v2/info/import, /v2/info/usage).
    health = api.call("POST", f"/api/v1/vims/{vims[0]['id']}/test")["health"]
    out["health"] = {k: health.get(k) for k in ("state", "import_methods", "free_bytes")}
    stats = sim_stats(a.sim)
    out["sim"] = [{k: s[k] for k in ("endpoint", "images", "active", "bytes_received", "uploads_done",
                                      "imports_done")} for s in stats["endpoints"][:4]]
    ok = all(all(s == "active" for s in v["states"]) for k, v in out.items() if "/" in k) and \
        all(not any(v["skipped"]) for k, v in out.items() if k.endswith("/first")) and \
        all(all(v["skipped"]) for k, v in out.items() if k.endswith("/again")) and \
        out["health"]["state"] == "ok" and "web-download" in (out["health"]["import_methods"] or [])
    out["ok"] = ok
    print(json.dumps(out, indent=1))
    if not ok:
        sys.exit(1)


def cmd_summary(a) -> None:
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    print(f"{'run':<10} {'targets':>7} {'MiB':>6} {'wall s':>8} {'others s':>8} {'active':>6} {'failed':>6} "
          f"{'central MiB out':>15} {'copies/reg':>10} {'cpu ms/tgt':>10}  peak RSS MiB")
    for r in rows:
        served = r["central_served_bytes"] if r["central_served_bytes"] is not None else r["sim_bytes_from_central"]
        rss = " ".join(f"{k}={v['peak_rss_mib']}" for k, v in r["procs"].items())
        print(f"{r['run']:<10} {r['targets']:>7} {r['image_mib']:>6.0f} {r['wall_s']:>8} "
              f"{(r['others_wall_s'] if r['others_wall_s'] is not None else '-'):>8} "
              f"{r['states'].get('active', 0):>6} {r['states'].get('failed', 0):>6} "
              f"{(served or 0) / 1048576:>15.1f} {str(r['copies_per_region']):>10} "
              f"{str(r['central_cpu_ms_per_target']):>10}  {rss}")
        for t in r.get("ignored") or []:
            print(f"           {t.get('role') or 'fault'} target {t['vim_id']}: {t['state']} after {t['attempts']} attempts, "
                  f"{t['bytes_done']} B; {t['last_error'][:160]}")
        for vim, why in r.get("failed_examples") or []:
            print(f"           failed {vim}: {why}")
    base = next((r for r in rows if r["run"] == "base"), None) or next((r for r in rows if r["run"] == "small"), None)
    fault = next((r for r in rows if r["run"] == "fault"), None)
    if base and fault and fault.get("others_wall_s") and base["wall_s"]:
        print(f"fault run: the other {fault['targets'] - len(fault['ignored'])} targets took "
              f"{fault['others_wall_s']} s, {fault['others_wall_s'] / base['wall_s']:.2f} x the {base['wall_s']} s "
              f"of the run '{base['run']}' without faults")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("vims")
    for k in ("central", "sim_base"):
        s.add_argument(k)
    s.add_argument("n", type=int)
    s.add_argument("regions", type=int)
    s.add_argument("out")
    s.add_argument("--relays")
    s.add_argument("--per-vim-relay", action="store_true",
                   help="give each VIM its relay_url instead of the central's label routes")
    s.set_defaults(f=cmd_vims)
    s = sub.add_parser("upload")
    for k in ("central", "file", "name", "version"):
        s.add_argument(k)
    s.set_defaults(f=cmd_upload)
    s = sub.add_parser("patch-vim")
    for k in ("central", "vim", "json"):
        s.add_argument(k)
    s.set_defaults(f=cmd_patch_vim)
    s = sub.add_parser("run")
    for k in ("central", "entry", "vims"):
        s.add_argument(k)
    s.add_argument("--label", required=True)
    s.add_argument("--sim", required=True)
    s.add_argument("--method", default="web-download")
    s.add_argument("--pids", default="")
    s.add_argument("--first", type=int, default=0, help="only this many VIMs, spread over the regions")
    s.add_argument("--ignore", default="", help="VIM ids (ROLE=ID) left out of others_wall_s")
    s.add_argument("--timeout", type=float, default=3600)
    s.add_argument("--fault-wait", type=float, default=300,
                   help="with --ignore: seconds to wait for the ignored targets after the others")
    s.add_argument("--poll", type=float, default=1.0)
    # The central's counter of blob bytes sent through download links (/dl): the driver's own
    # reads are not in it. With image_manager_http_response_body_bytes_total (every response
    # body), they are subtracted.
    s.add_argument("--egress-metric", default="image_manager_download_link_bytes_total")
    s.set_defaults(f=cmd_run)
    s = sub.add_parser("check")
    for k in ("central", "sim", "file", "vims"):
        s.add_argument(k)
    s.set_defaults(f=cmd_check)
    s = sub.add_parser("summary")
    s.add_argument("results")
    s.set_defaults(f=cmd_summary)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
