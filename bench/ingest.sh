#!/usr/bin/env bash
# VM image ingest (POST /api/v1/images: sha256 + sha512 + md5 + format inspection in one pass)
# against a raw monolithic blob push of the same size on /v2 (sha256 only), on one server, same
# run, alternating, ROUNDS rounds, fresh random content each time (no deduplication).
#   SIZE_MIB=1024 ROUNDS=3 bench/ingest.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}; ROUNDS=${ROUNDS:-3}; PORT=${PORT:-5341}
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/image-manager"
WORK=$(mktemp -d /tmp/bench-ingest-XXXX)
RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.1; done
URL="http://127.0.0.1:$PORT"
cpu() { awk '{print $14+$15}' "/proc/$PID/stat"; }
hz=$(getconf CLK_TCK)

# measure FILE CURL_ARGS... -> "seconds cpu_seconds". The body streams from stdin (chunked), the
# same way for both endpoints (curl -T FILE would append the file name to a URL ending in /).
measure() {
  local file=$1; shift
  sync
  local c0 t0 t1 c1
  c0=$(cpu); t0=$(date +%s.%N)
  curl -sf -o "$WORK/answer" -T - "$@" <"$file"
  t1=$(date +%s.%N); c1=$(cpu)
  python3 -c "print($t1-$t0, ($c1-$c0)/$hz)"
}
echo "round  v2-push MiB/s  ingest MiB/s  ingest/push  server CPU s/GiB push  ingest"
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/a.raw"
  head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/b.raw"
  d=sha256:$(sha256sum "$WORK/a.raw" | cut -d' ' -f1)
  read -r tp cp < <(measure "$WORK/a.raw" -X POST -H 'Content-Type: application/octet-stream' \
    "$URL/v2/bench/push/blobs/uploads/?digest=$d")
  read -r ti ci < <(measure "$WORK/b.raw" -X POST -H 'Content-Type: application/octet-stream' \
    "$URL/api/v1/images?name=ingest&version=r$r-$RANDOM")
  python3 - "$WORK/answer" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))
assert e["type"] == "vm-image" and all(e["checksums"].values()), e
EOF
  ratio=$(python3 -c "print(f'{$tp/$ti:.3f}')")
  ratios+=("$ratio")
  python3 -c "
m=$SIZE_MIB; g=m/1024
print(f'{$r:5d}  {m/$tp:13.0f}  {m/$ti:12.0f}  {$ratio:>11}  {$cp/g:20.2f}  {$ci/g:6.2f}')"
  rm -f "$WORK/a.raw" "$WORK/b.raw"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median ingest/push throughput: $median (goal >= 0.80); $(nproc) cores"
