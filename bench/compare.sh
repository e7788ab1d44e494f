#!/usr/bin/env bash
# Benchmark image-manager (A) against CNCF Distribution (B, Debian's docker-registry) on this
# machine in one run, with the load generator in this folder. Prints the ratio table.
#   bench/compare.sh                  # defaults (fsync on); IM_ARGS/IM_ENV tune the A side
#   IM_ENV="IMAGE_MANAGER_STORAGE__FSYNC=false" bench/compare.sh
# Needs: docker-registry (apt-get install docker-registry) and a release build of image-manager.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench"
command -v docker-registry >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-registry; }
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
PORT_A=${PORT_A:-5301}; PORT_B=${PORT_B:-5302}
DATA_A=$(mktemp -d /tmp/bench-im-XXXX)
env ${IM_ENV:-} RUST_LOG=warn "$ROOT/target/release/image-manager" serve --listen 127.0.0.1:$PORT_A \
  --data-dir "$DATA_A" ${IM_ARGS:-} >"$DATA_A.log" 2>&1 &
PA=$!
PB=$("$HERE/distribution.sh" start b "$PORT_B")
cleanup() { kill "$PA" 2>/dev/null || true; "$HERE/distribution.sh" stop b || true; rm -rf "$DATA_A"; }
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$PORT_A/readyz" >/dev/null; do sleep 0.1; done
PID_A=$PA PID_B=$PB "$HERE/bench.sh" "http://127.0.0.1:$PORT_A" "http://127.0.0.1:$PORT_B"
