"""Prometheus metrics at /metrics: requests by route, method and status with latency, bytes in
and out, blob store calls by operation, metadata database calls by role, operation and
outcome, uploads in flight, free space, indexer lag, GC."""

from __future__ import annotations

import os
import uuid

import requests

import imserver

digest = imserver.digest


scrape = imserver.scrape_metrics
value = imserver.metric


def test_metrics_follow_a_push_and_a_pull():
    with imserver.Server() as srv:
        before = scrape(srv)
        repo = f"metrics/{uuid.uuid4().hex[:8]}"
        data = os.urandom(300_000)
        assert requests.post(f"{srv.url}/v2/{repo}/blobs/uploads/?digest={digest(data)}", data=data).status_code == 201
        assert requests.get(f"{srv.url}/v2/{repo}/blobs/{digest(data)}").content == data
        assert requests.get(f"{srv.url}/v2/{repo}/blobs/sha256:{'0' * 64}").status_code == 404
        after = scrape(srv)

        def grew(name, by=1.0, **labels):
            d = value(after, name, **labels) - value(before, name, **labels)
            assert d >= by, f"{name}{labels} grew by {d}, expected at least {by}"

        grew("image_manager_http_requests_total", route="v2_upload_start", method="POST", status=201)
        grew("image_manager_http_requests_total", route="v2_blob", method="GET", status=200)
        grew("image_manager_http_requests_total", route="v2_blob", method="GET", status=404)
        grew("image_manager_http_request_duration_seconds_count", route="v2_blob", method="GET", by=2)
        grew("image_manager_http_request_body_bytes_total", by=len(data))
        grew("image_manager_http_response_body_bytes_total", by=len(data))
        grew("image_manager_store_call_duration_seconds_count", store="blob", op="upload_commit")
        grew("image_manager_store_call_duration_seconds_count", store="blob", op="get")
        # Every metadata call is timed by the one wrapper, by role trait, method and outcome.
        grew("image_manager_metadata_call_duration_seconds_count", store="registry", op="link_blob", outcome="ok")
        grew("image_manager_metadata_call_duration_seconds_count", store="registry", op="repo_blob_size",
             outcome="ok", by=2)
        assert any(k.startswith("image_manager_metadata_call_duration_seconds_bucket{") for k in after)
        if "--database" in os.environ.get("IM_TEST_SERVER_ARGS", ""):
            # PostgreSQL or MariaDB: every query goes through sqlx.
            assert not any(k.startswith("image_manager_sqlite_hot_reads") for k in after)
        else:
            # SQLite: the pull's reads ran in place, none had to be handed to sqlx.
            grew("image_manager_sqlite_hot_reads_total", outcome="in_place", by=2)
            assert value(after, "image_manager_sqlite_hot_reads_total", outcome="sqlx") == 0
        assert value(after, "image_manager_upload_writes_in_flight") == 0
        assert value(after, "image_manager_connections_open") >= 1
        assert value(after, "image_manager_catalog_indexer_lag_events") >= 0
        free = value(after, "image_manager_blob_store_free_bytes")
        assert free > 0 or free == -1  # -1: an S3 store does not tell


def test_request_spans_reach_core_and_store_calls():
    """Tracing: a store call runs in the span of the core operation that made it, inside the
    request's span, so one request's path can be followed in the logs."""
    import json
    env = {"IMAGE_MANAGER_LOG__FORMAT": "json", "RUST_LOG": "image_manager=debug,sqlx=debug,tower_http=debug"}
    with imserver.Server(env=env) as srv:
        data = os.urandom(2048)
        r = requests.post(f"{srv.url}/v2/spans/repo/blobs/uploads/?digest={digest(data)}", data=data, timeout=30)
        assert r.status_code == 201, r.text
        lines = [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.startswith("{")]
    chains = [[s.get("name") for s in ev.get("spans", [])] for ev in lines]
    assert any(c[:1] == ["request"] and "put_blob_sized" in c and c[-1] == "metadata_store" for c in chains), chains[-20:]
    stores = [ev["span"] for ev in lines if ev.get("span", {}).get("name") == "metadata_store"]
    assert any(s.get("store") == "registry" and s.get("op") == "link_blob" for s in stores), stores
