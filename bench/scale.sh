#!/usr/bin/env bash
# Scale benchmark of the distribution engine (a benchmark, not a test).
#
# One process of simulated Glance endpoints (loadgen glance-sim) in REGIONS regions, a central
# Image Manager, and (RELAYS=1) one pull-through relay per region. Three runs:
#   small  one SMALL_MIB raw image by web-download to all ENDPOINTS VIMs
#   big    one BIG_MIB image to BIG_TARGETS VIMs spread over the regions
#   base   a fresh SMALL_MIB image to all VIMs: the fault run's baseline (the same work, no fault,
#          later than the first run, so that a cold start does not flatter the fault run)
#   fault  a fresh SMALL_MIB image to all VIMs, one VIM's Glance refusing connections and one
#          reading at 1 MiB/s: the time until the others are active, and what became of the two
# Per run: wall time, targets active/failed, bytes the central served (copies per region =
# bytes / image size / regions), central CPU per target, peak RSS of every process.
# Results: $OUT/results.jsonl (one line per run), $OUT/summary.txt, $OUT/env.txt.
#
# Knobs (environment):
#   ENDPOINTS [1000]  REGIONS [10]  SMALL_MIB [64]  BIG_MIB [1024]  BIG_TARGETS [100]
#   RELAYS [1]        1: a relay per region (needs `serve --upstream`); 0: VIMs download
#                     straight from the central
#   IM_BIN [/tmp/im-release/release/image-manager]
#   CONCURRENCY [64]  distribution.concurrency of the central
#   PER_VIM [2]       distribution.per_vim_concurrency
#   LOADGEN [/tmp/bench-build/release/loadgen] (built when missing, as bench.sh does)
#   SIM_THREADS [2]   POLL_S [1] (the driver's poll of the job)  RUN_TIMEOUT [7200] (s, per run)
#   FAULT_WAIT [SMALL_MIB + 300] (s the fault run waits for its two faulty targets after the rest)
#   RUNS [small,big,base,fault] (also: check, the client check of push, web-download and skip)  OUT [/tmp/scale-results/<time>]  KEEP [0] (1: keep the temp dir)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ENDPOINTS=${ENDPOINTS:-1000}
REGIONS=${REGIONS:-10}
SMALL_MIB=${SMALL_MIB:-64}
BIG_MIB=${BIG_MIB:-1024}
BIG_TARGETS=${BIG_TARGETS:-100}
RELAYS=${RELAYS:-1}
IM_BIN=${IM_BIN:-/tmp/im-release/release/image-manager}
CONCURRENCY=${CONCURRENCY:-64}
PER_VIM=${PER_VIM:-2}
LOADGEN=${LOADGEN:-/tmp/bench-build/release/loadgen}
SIM_THREADS=${SIM_THREADS:-2}
POLL_S=${POLL_S:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-7200}
FAULT_WAIT=${FAULT_WAIT:-$((SMALL_MIB + 300))}
RUNS=${RUNS:-small,big,base,fault}
OUT=${OUT:-/tmp/scale-results/$(date -u +%Y%m%dT%H%M%SZ)}
KEEP=${KEEP:-0}
PY="python3 $HERE/scale.py"

log() { echo "[scale $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$IM_BIN" ] || die "IM_BIN=$IM_BIN is not an executable (build one, or point IM_BIN at one)"
[ "$ENDPOINTS" -ge 3 ] || die "ENDPOINTS must be at least 3 (two of them are the fault run's)"
[ "$BIG_TARGETS" -le "$ENDPOINTS" ] || die "BIG_TARGETS ($BIG_TARGETS) > ENDPOINTS ($ENDPOINTS)"
if [ "$RELAYS" = 1 ] && ! "$IM_BIN" serve --help 2>/dev/null | grep -q -- '--upstream'; then
  die "$IM_BIN has no 'serve --upstream' (relays); run with RELAYS=0"
fi
if [ ! -x "$LOADGEN" ]; then
  log "building loadgen into /tmp/bench-build"
  CARGO_TARGET_DIR=/tmp/bench-build cargo build --release --manifest-path "$HERE/loadgen/Cargo.toml" >&2
fi

# A thousand VIM clients keep connections open to the simulator.
ulimit -n 65536 2>/dev/null || true
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/scale-work.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Poll a command until it succeeds, for at most $1 seconds.
until_ok() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    python3 -c 'import select; select.select([], [], [], 0.1)'
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

# 1. The simulator: ENDPOINTS endpoints, plus one more that reads at 1 MiB/s (the fault run's).
SLOW=$ENDPOINTS
"$LOADGEN" glance-sim --listen 127.0.0.1:0 --endpoints $((ENDPOINTS + 1)) --slow "$SLOW" \
  --threads "$SIM_THREADS" >"$WORK/sim.out" 2>"$WORK/sim.err" &
SIM_PID=$!
PIDS+=("$SIM_PID")
until_ok 30 test -s "$WORK/sim.out" || die "the simulator did not start: $(cat "$WORK/sim.err")"
SIM_ADDR=$(head -1 "$WORK/sim.out")
SIM="http://$SIM_ADDR"
log "simulator $SIM (pid $SIM_PID), $ENDPOINTS endpoints + slow endpoint $SLOW"

# 2. Relays, one per region, in front of the central (its port is chosen first; a relay
# starts without its upstream). The central routes each region's VIMs to its relay by label.
CPORT=$(free_port)
CENTRAL="http://127.0.0.1:$CPORT"
RELAY_URLS=""
RELAY_PIDS=""
: >"$WORK/central.toml"
if [ "$RELAYS" = 1 ]; then
  for r in $(seq 0 $((REGIONS - 1))); do
    RPORT=$(free_port)
    mkdir -p "$WORK/relay$r"
    RUST_LOG="${RUST_LOG:-warn}" "$IM_BIN" serve --upstream "$CENTRAL" --listen "127.0.0.1:$RPORT" \
      --data-dir "$WORK/relay$r" >"$WORK/relay$r.log" 2>&1 &
    PIDS+=("$!")
    RELAY_PIDS="$RELAY_PIDS,relay$r=$!"
    RELAY_URLS="$RELAY_URLS${RELAY_URLS:+,}http://127.0.0.1:$RPORT"
    printf '[[distribution.relays]]\nurl = "http://127.0.0.1:%s"\nselector = "region=r%s"\n' "$RPORT" "$r" \
      >>"$WORK/central.toml"
    until_ok 60 curl -sf "http://127.0.0.1:$RPORT/metrics" || die "relay $r did not start: $(tail -20 "$WORK/relay$r.log")"
  done
  log "relays $RELAY_URLS"
fi

# The central Image Manager.
mkdir -p "$WORK/central"
env IMAGE_MANAGER_DISTRIBUTION__PUBLIC_URL="$CENTRAL" \
  IMAGE_MANAGER_DISTRIBUTION__CONCURRENCY="$CONCURRENCY" \
  IMAGE_MANAGER_DISTRIBUTION__PER_VIM_CONCURRENCY="$PER_VIM" \
  IMAGE_MANAGER_DISTRIBUTION__HEALTH_INTERVAL_SECS=0 \
  IMAGE_MANAGER_DISTRIBUTION__INVENTORY_INTERVAL_SECS=0 \
  IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS=200 \
  RUST_LOG="${RUST_LOG:-warn}" \
  "$IM_BIN" serve --config "$WORK/central.toml" --listen "127.0.0.1:$CPORT" --data-dir "$WORK/central" --auth none \
  >"$WORK/central.log" 2>&1 &
CENTRAL_PID=$!
PIDS+=("$CENTRAL_PID")
until_ok 120 curl -sf "$CENTRAL/healthz" || until_ok 5 curl -sf "$CENTRAL/metrics" ||
  die "the central did not start: $(tail -20 "$WORK/central.log")"
log "central $CENTRAL (pid $CENTRAL_PID), concurrency $CONCURRENCY, per VIM $PER_VIM"
PROCS="central=$CENTRAL_PID,sim=$SIM_PID$RELAY_PIDS"

# 3. The VIMs (health checks off: the central's interval is 0).
log "registering $ENDPOINTS VIMs in $REGIONS regions"
$PY vims "$CENTRAL" "$SIM" "$ENDPOINTS" "$REGIONS" "$WORK/vims.json" ${RELAY_URLS:+--relays "$RELAY_URLS"} >&2

{
  echo "date $(date -u +%FT%TZ)"
  echo "host $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
  echo "im_bin $IM_BIN ($("$IM_BIN" --version 2>/dev/null || echo '?'))"
  echo "loadgen $LOADGEN"
  for k in ENDPOINTS REGIONS SMALL_MIB BIG_MIB BIG_TARGETS RELAYS CONCURRENCY PER_VIM SIM_THREADS POLL_S; do
    echo "$k ${!k}"
  done
} >"$OUT/env.txt"
: >"$OUT/results.jsonl"

image() { # NAME MIB SEED -> the entry id
  local f="$WORK/$1.raw"
  "$LOADGEN" gen-data --path "$f" --mib "$2" --seed "$3" >&2
  $PY upload "$CENTRAL" "$f" "$1" 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
  rm -f "$f"
}

run() { # LABEL ENTRY [extra scale.py run args]
  local label=$1 entry=$2; shift 2
  log "run $label: distributing"
  $PY run "$CENTRAL" "$entry" "$WORK/vims.json" --label "$label" --sim "$SIM" --pids "$PROCS" \
    --poll "$POLL_S" "$@" | tee -a "$OUT/results.jsonl" >&2
}

case ",$RUNS," in *,check,*)
  # The real client against the simulator: push and web-download reach active on 2 VIMs each,
  # and a second distribution of the same image is skipped as already there.
  "$LOADGEN" gen-data --path "$WORK/check.raw" --mib 3 --seed 10 >&2
  $PY check "$CENTRAL" "$SIM" "$WORK/check.raw" "$WORK/vims.json" | tee "$OUT/check.json" >&2
  rm -f "$WORK/check.raw" ;;
esac
case ",$RUNS," in *,small,*)
  E=$(image scale-small "$SMALL_MIB" 11)
  run small "$E" --timeout "$RUN_TIMEOUT" ;;
esac
case ",$RUNS," in *,big,*)
  E=$(image scale-big "$BIG_MIB" 12)
  run big "$E" --first "$BIG_TARGETS" --timeout "$RUN_TIMEOUT" ;;
esac
case ",$RUNS," in *,base,*)
  E=$(image scale-base "$SMALL_MIB" 14)
  run base "$E" --timeout "$RUN_TIMEOUT" ;;
esac
case ",$RUNS," in *,fault,*)
  # VIM 0's Glance refuses connections (a port nobody listens on), VIM 1's is the slow endpoint.
  read -r V0 V1 < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v[0]["id"], v[1]["id"])' "$WORK/vims.json")
  CLOSED=$(free_port)
  $PY patch-vim "$CENTRAL" "$V0" "{\"glance_url\": \"http://127.0.0.1:$CLOSED/g/0\"}" >/dev/null
  $PY patch-vim "$CENTRAL" "$V1" "{\"glance_url\": \"$SIM/g/$SLOW\"}" >/dev/null
  E=$(image scale-fault "$SMALL_MIB" 13)
  # The others' time is taken when they are done; the two faulty ones get FAULT_WAIT more.
  run fault "$E" --ignore "refusing=$V0,slow=$V1" --timeout "$RUN_TIMEOUT" --fault-wait "$FAULT_WAIT" ;;
esac

$PY summary "$OUT/results.jsonl" | tee "$OUT/summary.txt"
log "results in $OUT"
