#!/usr/bin/env bash
# The cost of authentication on manifest GET: one image-manager without auth (A) against one
# with --auth token (B) where every request carries a bearer token (its signature, expiry,
# issuer, audience and scope are checked per request; a token seen before skips the signature
# check). Also, for the record, B with HTTP Basic on every request (an argon2 check each).
# Same machine, same run, alternating A,B for ROUNDS rounds; the load generator is wrk.
#   ROUNDS=3 SECS=5 CONNS=32 bench/auth.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}; CONNS=${CONNS:-32}; THREADS=${THREADS:-2}
PORT_A=${PORT_A:-5331}; PORT_B=${PORT_B:-5332}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo;
  $sudo_ apt-get install -y wrk >&2; }
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/image-manager"
WORK=$(mktemp -d /tmp/bench-auth-XXXX)
ADMIN=bench; PASS=bench-password-1
echo "$PASS" | "$BIN" user add "$ADMIN" --admin --password-stdin --data-dir "$WORK/b" >/dev/null
RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT_A --data-dir "$WORK/a" >"$WORK/a.log" 2>&1 &
PA=$!
RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT_B --data-dir "$WORK/b" --auth token >"$WORK/b.log" 2>&1 &
PB=$!
trap 'kill $PA $PB 2>/dev/null || true; rm -rf "$WORK"' EXIT
until curl -sf "http://127.0.0.1:$PORT_A/readyz" >/dev/null && curl -sf "http://127.0.0.1:$PORT_B/readyz" >/dev/null; do
  sleep 0.1
done

MT=application/vnd.oci.image.manifest.v1+json
REPO=bench/auth
push() { # push(port, curl auth args...)
  local port=$1; shift
  printf '{"architecture":"amd64","os":"linux"}' >"$WORK/config"
  head -c 4096 /dev/urandom >"$WORK/layer"
  local cd ld
  cd=sha256:$(sha256sum "$WORK/config" | cut -d' ' -f1); ld=sha256:$(sha256sum "$WORK/layer" | cut -d' ' -f1)
  for f in config layer; do
    local d; [ $f = config ] && d=$cd || d=$ld
    curl -sf "$@" -X POST --data-binary "@$WORK/$f" -H 'Content-Type: application/octet-stream' \
      "http://127.0.0.1:$port/v2/$REPO/blobs/uploads/?digest=$d" >/dev/null
  done
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":4096}]}' \
    "$MT" "$cd" "$(stat -c %s "$WORK/config")" "$ld" >"$WORK/manifest"
  curl -sf "$@" -X PUT --data-binary "@$WORK/manifest" -H "Content-Type: $MT" \
    "http://127.0.0.1:$port/v2/$REPO/manifests/v1" >/dev/null
}
push $PORT_A
push $PORT_B -u "$ADMIN:$PASS"
TOKEN=$(curl -sf -u "$ADMIN:$PASS" "http://127.0.0.1:$PORT_B/token?service=image-manager&scope=repository:$REPO:pull" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# Sanity: the token opens B and nothing opens B without it.
test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" -H "Accept: $MT" \
  "http://127.0.0.1:$PORT_B/v2/$REPO/manifests/v1")" = 200
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_B/v2/$REPO/manifests/v1")" = 401

rate() { # rate(url, wrk header args...) -> requests/s; fails on any non-2xx
  local url=$1; shift
  local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H "Accept: $MT" "$@" "$url")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers: $out" >&2; return 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
URL_A="http://127.0.0.1:$PORT_A/v2/$REPO/manifests/v1"; URL_B="http://127.0.0.1:$PORT_B/v2/$REPO/manifests/v1"
echo "round  none(req/s)  token(req/s)  token/none  cpu-us/req none  cpu-us/req token"
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  c0=$(cpu $PA); a=$(rate "$URL_A"); c1=$(cpu $PA)
  d0=$(cpu $PB); b=$(rate "$URL_B" -H "Authorization: Bearer $TOKEN"); d1=$(cpu $PB)
  hz=$(getconf CLK_TCK)
  ratio=$(python3 -c "print(f'{$b/$a:.3f}')")
  ratios+=("$ratio")
  python3 -c "print(f'{$r:5d}  {$a:11.0f}  {$b:12.0f}  {$ratio:>10}  {($c1-$c0)/$hz*1e6/($a*$SECS):15.1f}  {($d1-$d0)/$hz*1e6/($b*$SECS):16.1f}')"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median token/none: $median (auth cost $(python3 -c "print(f'{(1-$median)*100:.1f}')")% of the unauthenticated rate; goal < 10%)"
basic=$(wrk -t"$THREADS" -c"$CONNS" -d3s -H "Accept: $MT" -H "Authorization: Basic $(printf '%s' "$ADMIN:$PASS" | base64)" "$URL_B" |
  awk '/Requests\/sec/ {print $2}')
echo "for the record: HTTP Basic on every request (argon2 per request): $basic req/s"
