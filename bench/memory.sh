#!/usr/bin/env bash
# Peak memory of image-manager while pushing and pulling one large blob (default 2 GiB):
# prints the server's VmHWM (peak RSS) after the push and after the pull.
#   bench/memory.sh [SIZE_MIB]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MIB=${1:-2048}
PORT=${PORT:-5311}
WORK=$(mktemp -d /tmp/bench-mem-XXXX)
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
"$ROOT/target/release/image-manager" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" >"$WORK/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.1; done
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$WORK/blob"
DIGEST=sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)
hwm() { awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$PID/status; }
echo "idle: $(hwm)"
LOC=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$PORT/v2/mem/test/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
curl -sf -X PUT -T "$WORK/blob" -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$PORT$LOC?digest=$DIGEST" -o /dev/null
echo "after ${MIB} MiB push: $(hwm)"
GOT=sha256:$(curl -sf "http://127.0.0.1:$PORT/v2/mem/test/blobs/$DIGEST" | sha256sum | cut -d' ' -f1)
[ "$GOT" = "$DIGEST" ] || { echo "pulled content differs"; exit 1; }
echo "after ${MIB} MiB pull: $(hwm)"
