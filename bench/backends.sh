#!/usr/bin/env bash
# Benchmark image-manager on PostgreSQL + S3 (A) against the embedded defaults, SQLite +
# filesystem (B), in one run with the load generator in this folder. S3 is moto's server
# (tests/pysupport/s3server.py), so the S3 side measures moto as much as our S3 code.
#   ROUNDS=1 SCENARIOS="push-large pull-large small-ops" bench/backends.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
PORT_A=${PORT_A:-5321}; PORT_B=${PORT_B:-5322}
WORK=$(mktemp -d /tmp/bench-backends-XXXX)
DB=bench_$(date +%s)
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $DB"
eval "$(python3 "$ROOT/tests/pysupport/s3server.py" start --bucket bench)"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
RUST_LOG=warn "$ROOT/target/release/image-manager" serve --listen 127.0.0.1:$PORT_A --data-dir "$WORK/a" \
  --database "postgres://postgres@127.0.0.1:5432/$DB" \
  --storage "s3://bench/a?endpoint=$S3_ENDPOINT&region=us-east-1&path_style=true" >"$WORK/a.log" 2>&1 &
PA=$!
RUST_LOG=warn "$ROOT/target/release/image-manager" serve --listen 127.0.0.1:$PORT_B --data-dir "$WORK/b" >"$WORK/b.log" 2>&1 &
PB=$!
cleanup() {
  kill "$PA" "$PB" 2>/dev/null || true
  python3 "$ROOT/tests/pysupport/s3server.py" stop "$S3_PID" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS $DB" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$PORT_A/readyz" >/dev/null && curl -sf "http://127.0.0.1:$PORT_B/readyz" >/dev/null; do
  sleep 0.1
done
echo "moto PID $S3_PID (its CPU is not in srv_cpu_*; see other_cores)" >&2
PID_A=$PA PID_B=$PB "$HERE/bench.sh" "http://127.0.0.1:$PORT_A" "http://127.0.0.1:$PORT_B"
