#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds and runs the
# Rust tests of the workspace (the server, and the pure parsers of crates/formats; unit +
# integration: the oci-client crate, the S3 store against moto), the fuzz targets of fuzz/ for a
# few seconds each (scripts/fuzz.sh, FUZZ_SECONDS, 15 by default here), then the
# Python suites against real server processes:
#   * once (they do not depend on the storage backend): spec-tests/ (OCI conformance) and
#     tests/clients/ (skopeo, the ORAS SDK and CLI, podman, buildah), tests/vims/ (the Glance
#     harness of tests/pysupport/glance.py: a real Glance 33, alone and behind Keystone 30), plus the tests of
#     tests/server/ marked backend_independent (transport, connection limits, a full disk);
#   * on each backend pair, the storage-sensitive suites tests/server/ (lifecycle, replicas,
#     upload integrity, GC, quotas, auth), tests/distribution/ (VIMs, distribution jobs to a real
#     Glance, alone and behind Keystone, to CNCF Distribution and a second Image Manager, through
#     a MultiCloud API server) and tests/catalog/ (VM images, VNF packages, search,
#     the OpenAPI document with schemathesis): SQLite + filesystem, PostgreSQL + S3,
#     MariaDB + S3.
# The four Python passes share no state (every server gets its own database and S3 prefix) and
# run in parallel; each one's output is printed when it ends, with its duration.
#
# Cached between runs on this machine, never required (a cold cache only makes the run slower):
# the cargo target directory ($IM_CARGO_TARGET_DIR, default ~/.cache/image-manager/target; the
# fuzz build goes to its fuzz/ folder), the cargo-fuzz binary (~/.cache/image-manager/cargo-fuzz)
# and pip's own cache.
set -euo pipefail
cd "$(dirname "$0")/.."

t_start=$(date +%s)
timing=()
step() { # NAME COMMAND...: run it, note its duration
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  echo "== $name"
  "$@" || rc=$?
  timing+=("$(printf '%-34s %5d s' "$name" $(($(date +%s) - t0)))")
  return "$rc"
}
report() {
  echo "== durations"
  printf '   %s\n' "${timing[@]}"
  echo "   total                              $(($(date +%s) - t_start)) s"
}
trap report EXIT

export CARGO_TARGET_DIR="${IM_CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-manager/target}"
export IMAGE_MANAGER_BIN="$CARGO_TARGET_DIR/debug/image-manager"

step "install test dependencies" scripts/install-test-deps.sh
step "database services" scripts/services.sh

step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# `cargo test` also builds the server binary the Python suites run (with the same dependency
# features as the tests, so nothing is compiled twice).
step "cargo test" cargo test --workspace
# The fuzz targets depend only on crates/formats, so their nightly build is short (see
# scripts/fuzz.sh); each runs a few seconds from its seed corpus, failing on any crash.
step "fuzz" env FUZZ_SECONDS="${FUZZ_SECONDS:-15}" scripts/fuzz.sh
test -x "$IMAGE_MANAGER_BIN" || { echo "no server binary at $IMAGE_MANAGER_BIN" >&2; exit 1; }

eval "$(python3 tests/pysupport/s3server.py start --bucket im-test)"
cleanup() {
  python3 tests/pysupport/s3server.py stop "$S3_PID" >/dev/null 2>&1 || true
  report
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
s3="--storage s3://$S3_BUCKET/{id}?endpoint=$S3_ENDPOINT&region=us-east-1&path_style=true"

logs=$(mktemp -d)
declare -A pass_pid pass_start
pass() { # NAME SERVER-ARGS PYTEST-RUN...: start one pass in the background; each PYTEST-RUN
  # is one pytest command line (its arguments as one word, split on spaces), run in turn.
  local name=$1 args=$2
  shift 2
  pass_start[$name]=$(date +%s)
  (
    export IM_TEST_SERVER_ARGS="$args"
    for run in "$@"; do
      # pytest's exit code 5 (nothing collected) fails the pass like any other: a suite that
      # ran no test did not pass.
      # shellcheck disable=SC2086
      python3 -m pytest $run -q -p no:cacheprovider || exit $?
    done
  ) >"$logs/$name.log" 2>&1 &
  pass_pid[$name]=$!
}

storage="tests/server tests/catalog tests/distribution -m not(backend_independent)"
pass "once: spec-tests, clients" "" "spec-tests tests/clients tests/vims" "tests/server -m backend_independent"
pass "SQLite + filesystem" "" "$storage"
pass "PostgreSQL + S3" "--database postgres://postgres@127.0.0.1:5432/{id} $s3" "$storage"
pass "MariaDB + S3" "--database mysql://root@127.0.0.1:3306/{id} $s3" "$storage"

failed=()
for name in "once: spec-tests, clients" "SQLite + filesystem" "PostgreSQL + S3" "MariaDB + S3"; do
  rc=0
  wait "${pass_pid[$name]}" || rc=$?
  echo "== pass: $name (exit $rc)"
  if ((rc == 0)); then tail -n 5 "$logs/$name.log"; else tail -n 300 "$logs/$name.log"; fi
  timing+=("$(printf '%-34s %5d s' "pass: $name" $(($(date +%s) - ${pass_start[$name]})))")
  ((rc == 0)) || failed+=("$name")
done
if ((${#failed[@]})); then
  echo "== FAILED passes: ${failed[*]} (full logs in $logs)" >&2
  exit 1
fi
