#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds, then runs
# the Rust tests (unit + integration: the oci-client crate, the S3 store against moto) and the
# Python suites (spec-tests/ conformance, tests/clients/ skopeo, ORAS SDK and CLI, podman and
# buildah, tests/server/ lifecycle, replicas, GC, quotas) against real server processes on each backend pair:
#   SQLite + filesystem, PostgreSQL + S3, MariaDB + S3; tests/catalog/ covers the image catalog
#   (VM image upload and inspection, VNF packages, search, the OpenAPI document with schemathesis).
# Each server of the PostgreSQL/MariaDB runs gets its own database (created and dropped by the
# test harness) and its own prefix in the S3 bucket.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/services.sh

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build
cargo test

suites=(spec-tests tests/clients tests/server tests/catalog)

echo "== backend: SQLite + filesystem"
python3 -m pytest "${suites[@]}" -q

eval "$(python3 tests/pysupport/s3server.py start --bucket im-test)"
trap 'python3 tests/pysupport/s3server.py stop "$S3_PID" >/dev/null 2>&1 || true' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
s3="--storage s3://$S3_BUCKET/{id}?endpoint=$S3_ENDPOINT&region=us-east-1&path_style=true"

echo "== backend: PostgreSQL + S3"
IM_TEST_SERVER_ARGS="--database postgres://postgres@127.0.0.1:5432/{id} $s3" python3 -m pytest "${suites[@]}" -q

echo "== backend: MariaDB + S3"
IM_TEST_SERVER_ARGS="--database mysql://root@127.0.0.1:3306/{id} $s3" python3 -m pytest "${suites[@]}" -q
