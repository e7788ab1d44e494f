#!/usr/bin/env bash
# start.sh - run a real OpenStack Glance 33 (Image API v2) on loopback for the
# integration tests (tests/glance.rs through tests/support/glance.rs, and the Python
# suites through tests/pysupport/glance.py), with no auth or behind a real Keystone 30.
# Copied from the team's harness and adapted: every port and the data dir come from the
# environment, so that tests run several instances side by side (one data dir each), and
# the venvs live in the cache folder, reused while their stamp matches.
#
#   start.sh                 install the venvs when missing, then start (idempotent)
#   start.sh --install-only  only create the venvs (glance, and keystone) and the database
#                            templates (used by scripts/install-test-deps.sh, so that tests
#                            never pip-install and start in seconds)
#   GLANCE_NO_INSTALL=1      fail instead of installing when a venv is missing or stale
#
# stdout: KEY=VALUE lines (GLANCE_ENDPOINT=..., ...); progress goes to stderr.
# See README.md beside this file for the variables and Glance's behaviour.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PYTHON="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/image-manager"
GLANCE_VENV="${GLANCE_VENV:-$CACHE/glance-venv}"
GLANCE_DATA_DIR="${GLANCE_DATA_DIR:-/tmp/glance-data}"
GLANCE_NO_INSTALL="${GLANCE_NO_INSTALL:-0}"
GLANCE_HOST="${GLANCE_HOST:-127.0.0.1}"
GLANCE_PORT="${GLANCE_PORT:-9292}"
GLANCE_AUTH="${GLANCE_AUTH:-noauth}"            # noauth | keystone
GLANCE_WORKERS="${GLANCE_WORKERS:-1}"
GLANCE_THREADS="${GLANCE_THREADS:-8}"
GLANCE_DEBUG="${GLANCE_DEBUG:-false}"
GLANCE_RESET="${GLANCE_RESET:-0}"               # 1: stop + wipe data first
GLANCE_START_TIMEOUT="${GLANCE_START_TIMEOUT:-90}"
GLANCE_WEB_DOWNLOAD_HOSTS="${GLANCE_WEB_DOWNLOAD_HOSTS:-127.0.0.1,localhost}"
GLANCE_NOAUTH_PROJECT_ID="${GLANCE_NOAUTH_PROJECT_ID:-noauth-project}"
GLANCE_NOAUTH_USER_ID="${GLANCE_NOAUTH_USER_ID:-noauth-user}"
GLANCE_NOAUTH_ROLES="${GLANCE_NOAUTH_ROLES:-admin,member,reader}"
KEYSTONE_VENV="${KEYSTONE_VENV:-$CACHE/keystone-venv}"
KEYSTONE_HOST="${KEYSTONE_HOST:-127.0.0.1}"
KEYSTONE_PORT="${KEYSTONE_PORT:-35357}"
KEYSTONE_ADMIN_PASSWORD="${KEYSTONE_ADMIN_PASSWORD:-admin-secret}"
KEYSTONE_DEMO_PASSWORD="${KEYSTONE_DEMO_PASSWORD:-demo-secret}"
GLANCE_SERVICE_PASSWORD="${GLANCE_SERVICE_PASSWORD:-glance-secret}"
KEYSTONE_REGION="${KEYSTONE_REGION:-RegionOne}"
GLANCE_TOKEN_CACHE_TIME="${GLANCE_TOKEN_CACHE_TIME:-300}"

ETC="$GLANCE_DATA_DIR/etc"
LOG="$GLANCE_DATA_DIR/log"
RUN="$GLANCE_DATA_DIR/run"
KSDATA="$GLANCE_DATA_DIR/keystone"
# Freshly initialised databases (and keystone keys), copied into new data dirs.
TEMPLATES="$CACHE/glance-templates"
GLANCE_URL="http://$GLANCE_HOST:$GLANCE_PORT"
KEYSTONE_URL="http://$KEYSTONE_HOST:$KEYSTONE_PORT"

T0=$SECONDS
log() { echo "[glance/start.sh +$((SECONDS - T0))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v curl >/dev/null || die "curl is required"
command -v "$PYTHON" >/dev/null || die "$PYTHON is required"

case "$GLANCE_AUTH" in
  noauth) FLAVOR=noauth ;;
  keystone) FLAVOR=keystone ;;
  *) die "GLANCE_AUTH must be noauth or keystone (got '$GLANCE_AUTH')" ;;
esac

INSTALL_ONLY=0
case "${1:-}" in
  --install-only) INSTALL_ONLY=1 ;;
  "") ;;
  *) die "unknown argument '$1' (only --install-only)" ;;
esac

# --- helpers ---------------------------------------------------------------

# pid_alive PIDFILE: the pid in it is alive and is one of our gunicorns.
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid="$(cat "$1")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q gunicorn
}

http_ok() { curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# render TEMPLATE OUT KEY=VALUE... : replace @KEY@ tokens, fail on leftovers.
render() {
  "$PYTHON" - "$@" <<'PY'
import os, re, sys
tpl, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
s = open(tpl).read()
for p in pairs:
    k, v = p.split('=', 1)
    s = s.replace('@%s@' % k, v)
left = re.findall(r'@[A-Z_]+@', s)
if left:
    sys.exit('unrendered tokens in %s: %s' % (tpl, sorted(set(left))))
open(out + '.tmp', 'w').write(s)
os.replace(out + '.tmp', out)
PY
}

# ensure_venv VENV REQUIREMENTS LABEL: create/complete the venv unless its
# stamp says it already holds exactly these pins.
ensure_venv() {
  local venv=$1 req=$2 label=$3 stamp t0
  stamp="$( { cat "$req" "$HERE/constraints.txt"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
  if [[ -x $venv/bin/python && -f $venv/.start-sh-stamp ]] &&
     [[ "$(cat "$venv/.start-sh-stamp")" == "$stamp" ]] &&
     "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    return 0
  fi
  [[ $GLANCE_NO_INSTALL != 1 ]] ||
    die "$label venv $venv is missing or stale (GLANCE_NO_INSTALL=1): run scripts/install-test-deps.sh"
  t0=$(date +%s)
  log "installing $label into $venv (pinned by constraints.txt) ..."
  if [[ -e $venv ]] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    [[ -f $venv/pyvenv.cfg ]] || die "$venv exists and is not a venv; refusing to touch it"
    log "removing broken venv $venv"
    rm -rf "$venv"
  fi
  [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$venv/bin/pip" install -q -r "$req" -c "$HERE/constraints.txt" >&2
  echo "$stamp" > "$venv/.start-sh-stamp"
  log "$label installed in $(( $(date +%s) - t0 ))s"
}

# wait_up NAME URL PIDFILE LOGFILE
wait_up() {
  local name=$1 url=$2 pidfile=$3 logfile=$4 deadline
  deadline=$(( $(date +%s) + GLANCE_START_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    if http_ok "$url"; then return 0; fi
    if [[ -s $pidfile ]] && ! pid_alive "$pidfile"; then break; fi
    if [[ -s ${pidfile%.pid}.launcher.pid ]] &&
       ! kill -0 "$(cat "${pidfile%.pid}.launcher.pid")" 2>/dev/null; then break; fi
    sleep 0.25
  done
  log "$name did not answer $url within ${GLANCE_START_TIMEOUT}s; last log lines:"
  tail -n 40 "$logfile" >&2 || true
  die "$name failed to start"
}

# start_gunicorn NAME VENV APP HOST PORT WORKERS THREADS ENV...
start_gunicorn() {
  local name=$1 venv=$2 app=$3 host=$4 port=$5 workers=$6 threads=$7
  shift 7
  rm -f "$RUN/$name.pid"
  # setsid: own session, so the service survives the caller's terminal/job
  # control; gunicorn itself writes the master PID to $RUN/$name.pid.
  env "$@" setsid "$venv/bin/gunicorn" \
      --name "$name" --bind "$host:$port" \
      --workers "$workers" --worker-class gthread --threads "$threads" \
      --timeout 600 --graceful-timeout 10 --no-control-socket \
      --pid "$RUN/$name.pid" \
      --error-logfile "$LOG/$name.gunicorn.log" \
      --access-logfile "$LOG/$name.access.log" \
      "$app" >> "$LOG/$name.stdout.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.launcher.pid"
}

print_env() {
  local f="$GLANCE_DATA_DIR/glance.env"
  {
    echo "GLANCE_ENDPOINT=$GLANCE_URL"
    echo "OS_IMAGE_URL=$GLANCE_URL"
    echo "GLANCE_AUTH=$GLANCE_AUTH"
    echo "GLANCE_PID=$(cat "$RUN/glance-api.pid")"
    echo "GLANCE_PID_FILE=$RUN/glance-api.pid"
    echo "GLANCE_DATA_DIR=$GLANCE_DATA_DIR"
    echo "GLANCE_VENV=$GLANCE_VENV"
    if [[ $GLANCE_AUTH == keystone ]]; then
      echo "KEYSTONE_PID=$(cat "$RUN/keystone.pid")"
      echo "OS_AUTH_URL=$KEYSTONE_URL/v3"
      echo "OS_IDENTITY_API_VERSION=3"
      echo "OS_USERNAME=admin"
      echo "OS_PASSWORD=$KEYSTONE_ADMIN_PASSWORD"
      echo "OS_PROJECT_NAME=admin"
      echo "OS_USER_DOMAIN_NAME=Default"
      echo "OS_PROJECT_DOMAIN_NAME=Default"
      echo "OS_REGION_NAME=$KEYSTONE_REGION"
      echo "KEYSTONE_DEMO_USER=demo"
      echo "KEYSTONE_DEMO_PASSWORD=$KEYSTONE_DEMO_PASSWORD"
      echo "KEYSTONE_DEMO_PROJECT=demo"
    fi
  } > "$f.tmp"
  mv "$f.tmp" "$f"
  cat "$f"
  log "ready: $GLANCE_URL (auth=$GLANCE_AUTH); env in $f; stop with $HERE/stop.sh"
}

if ((INSTALL_ONLY)); then
  # Both venvs, in parallel (independent pip runs; each is mostly download and unpack).
  ensure_venv "$GLANCE_VENV" "$HERE/requirements-glance.txt" glance & g=$!
  ensure_venv "$KEYSTONE_VENV" "$HERE/requirements-keystone.txt" keystone & k=$!
  rc=0
  wait $g || rc=1
  wait $k || rc=1
  ((rc == 0)) || exit $rc
  # Also the database templates (see below): one keystone-mode start and stop on free ports,
  # so that the first test's Glance starts as fast as the next ones.
  if ! compgen -G "$CACHE/glance-templates/keystone-*/.complete" >/dev/null ||
     ! compgen -G "$CACHE/glance-templates/glance-*/.complete" >/dev/null; then
    tmp="$(mktemp -d)"
    ports="$("$PYTHON" -c 'import socket
ss = [socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')"
    read -r gp kp <<<"$ports"
    log "preparing the database templates (a keystone-mode start in $tmp)"
    GLANCE_AUTH=keystone GLANCE_DATA_DIR="$tmp" GLANCE_PORT="$gp" KEYSTONE_PORT="$kp" \
      bash "$HERE/start.sh" >/dev/null || rc=1
    GLANCE_DATA_DIR="$tmp" GLANCE_PURGE=1 bash "$HERE/stop.sh" 2>/dev/null
  fi
  exit $rc
fi

# --- reset / already running -------------------------------------------------

if [[ $GLANCE_RESET == 1 ]]; then
  log "GLANCE_RESET=1: stopping and wiping $GLANCE_DATA_DIR"
  GLANCE_DATA_DIR="$GLANCE_DATA_DIR" bash "$HERE/stop.sh" >&2 || true
  rm -rf "$GLANCE_DATA_DIR"
fi

mkdir -p "$ETC" "$LOG" "$RUN" "$GLANCE_DATA_DIR"/{images,staging,tasks,lock}

if pid_alive "$RUN/glance-api.pid" && http_ok "$GLANCE_URL/versions"; then
  running_mode="$(cat "$RUN/glance-api.mode" 2>/dev/null || echo unknown)"
  if [[ $running_mode != "$GLANCE_AUTH" ]]; then
    die "glance-api already running with auth=$running_mode; run stop.sh first to switch to $GLANCE_AUTH"
  fi
  if [[ $GLANCE_AUTH == keystone ]] && ! pid_alive "$RUN/keystone.pid"; then
    die "glance-api runs in keystone mode but keystone is down; run stop.sh and start again"
  fi
  log "already running"
  print_env
  exit 0
fi

# --- install -------------------------------------------------------------------

ensure_venv "$GLANCE_VENV" "$HERE/requirements-glance.txt" glance
if [[ $GLANCE_AUTH == keystone ]]; then
  ensure_venv "$KEYSTONE_VENV" "$HERE/requirements-keystone.txt" keystone
fi

# --- keystone (optional) -------------------------------------------------------

if [[ $GLANCE_AUTH == keystone ]]; then
  mkdir -p "$KSDATA"/{fernet-keys,credential-keys,lock}
  chmod 700 "$KSDATA/fernet-keys" "$KSDATA/credential-keys"
  render "$HERE/keystone.conf.in" "$KSDATA/keystone.conf" \
    "DEBUG=$GLANCE_DEBUG" "LOG=$LOG" "KSDATA=$KSDATA"
  KM=(env PYTHONWARNINGS=ignore "$KEYSTONE_VENV/bin/keystone-manage" --config-file "$KSDATA/keystone.conf")
  setup_stamp="$(echo "$GLANCE_URL $KEYSTONE_URL $KEYSTONE_REGION $KEYSTONE_ADMIN_PASSWORD $GLANCE_SERVICE_PASSWORD $KEYSTONE_DEMO_PASSWORD" | cat - "$HERE/keystone_setup.py" | sha256sum | cut -d' ' -f1)"
  # Each keystone-manage run and each Keystone call of keystone_setup.py costs seconds: the
  # first fully set up Keystone of a venv is kept as a template (database and keys) that new
  # data dirs copy, with the catalog's URLs pointed at their own ports.
  tpl="$TEMPLATES/keystone-$(echo "$(cat "$KEYSTONE_VENV/.start-sh-stamp") $KEYSTONE_REGION $KEYSTONE_ADMIN_PASSWORD $GLANCE_SERVICE_PASSWORD $KEYSTONE_DEMO_PASSWORD" |
    cat - "$HERE/keystone.conf.in" "$HERE/keystone_setup.py" | sha256sum | cut -c1-16)"
  if [[ ! -f $KSDATA/.bootstrapped ]]; then
    if [[ -f $tpl/.complete ]]; then
      log "keystone: database and keys from the template $tpl"
      cp "$tpl/keystone.sqlite" "$KSDATA/keystone.sqlite"
      cp -a "$tpl/fernet-keys/." "$KSDATA/fernet-keys/"
      cp -a "$tpl/credential-keys/." "$KSDATA/credential-keys/"
      "$PYTHON" - "$KSDATA/keystone.sqlite" "$KEYSTONE_URL/v3" "$GLANCE_URL" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for kind, url in (("identity", sys.argv[2]), ("image", sys.argv[3])):
    db.execute("UPDATE endpoint SET url = ? WHERE service_id IN"
               " (SELECT id FROM service WHERE type = ?)", (url, kind))
db.commit()
PY
      echo "$setup_stamp" > "$KSDATA/.setup-done"
    else
      log "keystone: db_sync, fernet/credential keys, bootstrap"
      "${KM[@]}" db_sync >&2
      "${KM[@]}" fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" >&2
      "${KM[@]}" credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" >&2
      "${KM[@]}" bootstrap --bootstrap-password "$KEYSTONE_ADMIN_PASSWORD" \
        --bootstrap-username admin --bootstrap-project-name admin \
        --bootstrap-role-name admin --bootstrap-service-name keystone \
        --bootstrap-region-id "$KEYSTONE_REGION" \
        --bootstrap-admin-url "$KEYSTONE_URL/v3" \
        --bootstrap-internal-url "$KEYSTONE_URL/v3" \
        --bootstrap-public-url "$KEYSTONE_URL/v3" >&2
    fi
    touch "$KSDATA/.bootstrapped"
  fi
  if ! pid_alive "$RUN/keystone.pid"; then
    port_busy "$KEYSTONE_HOST" "$KEYSTONE_PORT" && die "port $KEYSTONE_HOST:$KEYSTONE_PORT is already in use"
    log "starting keystone on $KEYSTONE_URL"
    # keystone parses sys.argv with oslo.config and would choke on
    # gunicorn's options: import it through a shim that clears argv.
    printf '%s\n' 'import sys' 'sys.argv = sys.argv[:1]' \
      'from keystone.wsgi.api import application  # noqa' > "$KSDATA/keystone_wsgi.py"
    start_gunicorn keystone "$KEYSTONE_VENV" keystone_wsgi:application \
      "$KEYSTONE_HOST" "$KEYSTONE_PORT" 1 4 \
      "OS_KEYSTONE_CONFIG_DIR=$KSDATA" "OS_KEYSTONE_CONFIG_FILES=keystone.conf" \
      "PYTHONPATH=$KSDATA" "PYTHONWARNINGS=ignore"
  fi
  if [[ "$(cat "$KSDATA/.setup-done" 2>/dev/null)" != "$setup_stamp" ]]; then
    wait_up keystone "$KEYSTONE_URL/v3" "$RUN/keystone.pid" "$LOG/keystone.gunicorn.log"
    log "keystone: users, projects and the image endpoints (keystone_setup.py)"
    KEYSTONE_URL="$KEYSTONE_URL" KEYSTONE_ADMIN_PASSWORD="$KEYSTONE_ADMIN_PASSWORD" \
    GLANCE_SERVICE_PASSWORD="$GLANCE_SERVICE_PASSWORD" \
    KEYSTONE_DEMO_PASSWORD="$KEYSTONE_DEMO_PASSWORD" \
    GLANCE_URL="$GLANCE_URL" KEYSTONE_REGION="$KEYSTONE_REGION" \
      "$PYTHON" "$HERE/keystone_setup.py" >&2
    echo "$setup_stamp" > "$KSDATA/.setup-done"
    if [[ ! -f $tpl/.complete ]]; then
      mkdir -p "$TEMPLATES"
      t="$(mktemp -d "$TEMPLATES/.tmp.XXXXXX")"
      "$PYTHON" -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
        "$KSDATA/keystone.sqlite" "$t/keystone.sqlite"
      cp -a "$KSDATA/fernet-keys" "$KSDATA/credential-keys" "$t/"
      touch "$t/.complete"
      mv -T "$t" "$tpl" 2>/dev/null || rm -rf "$t" # another start made it first
    fi
  fi
  # Keystone finishes starting while glance-api starts; both are awaited below.
fi

# --- glance config + db ------------------------------------------------------

hosts="$(echo "$GLANCE_WEB_DOWNLOAD_HOSTS" | tr -d ' ')"
render "$HERE/glance-api.conf.in" "$ETC/glance-api.conf" \
  "DEBUG=$GLANCE_DEBUG" "LOG=$LOG" "DATA=$GLANCE_DATA_DIR" "ETC=$ETC" \
  "FLAVOR=$FLAVOR" "WEB_DOWNLOAD_HOSTS=$hosts"
if [[ $GLANCE_AUTH == keystone ]]; then
  render "$HERE/glance-api-keystone.conf.in" "$ETC/keystone-authtoken.part" \
    "KEYSTONE_URL=$KEYSTONE_URL" "GLANCE_SERVICE_PASSWORD=$GLANCE_SERVICE_PASSWORD" \
    "TOKEN_CACHE_TIME=$GLANCE_TOKEN_CACHE_TIME" "KEYSTONE_REGION=$KEYSTONE_REGION"
  { echo; cat "$ETC/keystone-authtoken.part"; } >> "$ETC/glance-api.conf"
  rm -f "$ETC/keystone-authtoken.part"
fi
render "$HERE/glance-api-paste.ini.in" "$ETC/glance-api-paste.ini" "ETC=$ETC" \
  "NOAUTH_PROJECT_ID=$GLANCE_NOAUTH_PROJECT_ID" \
  "NOAUTH_USER_ID=$GLANCE_NOAUTH_USER_ID" "NOAUTH_ROLES=$GLANCE_NOAUTH_ROLES"
cp "$HERE/glance_noauth.py" "$HERE/glance_wsgi.py" "$ETC/"

db_stamp="$(cat "$GLANCE_VENV/.start-sh-stamp")"
if [[ ! -f $GLANCE_DATA_DIR/glance.sqlite || "$(cat "$GLANCE_DATA_DIR/.db-synced" 2>/dev/null)" != "$db_stamp" ]]; then
  gtpl="$TEMPLATES/glance-$(echo "$db_stamp" | sha256sum | cut -c1-16)"
  if [[ ! -f $GLANCE_DATA_DIR/glance.sqlite && -f $gtpl/.complete ]]; then
    log "glance database from the template $gtpl"
    cp "$gtpl/glance.sqlite" "$GLANCE_DATA_DIR/glance.sqlite"
  else
    log "glance-manage db_sync"
    "$GLANCE_VENV/bin/glance-manage" --config-file "$ETC/glance-api.conf" db_sync >/dev/null 2>>"$LOG/glance-manage.log" ||
      { tail -n 30 "$LOG/glance-manage.log" >&2; die "db_sync failed"; }
    if [[ ! -f $gtpl/.complete ]]; then
      mkdir -p "$TEMPLATES"
      t="$(mktemp -d "$TEMPLATES/.tmp.XXXXXX")"
      cp "$GLANCE_DATA_DIR/glance.sqlite" "$t/" && touch "$t/.complete"
      mv -T "$t" "$gtpl" 2>/dev/null || rm -rf "$t"
    fi
  fi
  echo "$db_stamp" > "$GLANCE_DATA_DIR/.db-synced"
fi

# --- glance-api ------------------------------------------------------------------

if pid_alive "$RUN/glance-api.pid"; then
  log "glance-api process $(cat "$RUN/glance-api.pid") alive but not answering; waiting"
else
  port_busy "$GLANCE_HOST" "$GLANCE_PORT" && die "port $GLANCE_HOST:$GLANCE_PORT is already in use"
  log "starting glance-api on $GLANCE_URL (auth=$GLANCE_AUTH)"
  echo "$GLANCE_AUTH" > "$RUN/glance-api.mode"
  start_gunicorn glance-api "$GLANCE_VENV" glance_wsgi:application \
    "$GLANCE_HOST" "$GLANCE_PORT" "$GLANCE_WORKERS" "$GLANCE_THREADS" \
    "OS_GLANCE_CONFIG_DIR=$ETC" "PYTHONPATH=$ETC" "PYTHONWARNINGS=ignore"
fi
if [[ $GLANCE_AUTH == keystone ]]; then
  wait_up keystone "$KEYSTONE_URL/v3" "$RUN/keystone.pid" "$LOG/keystone.gunicorn.log"
fi
wait_up glance-api "$GLANCE_URL/versions" "$RUN/glance-api.pid" "$LOG/glance-api.gunicorn.log"
# gunicorn writes the pid file right after binding; make sure it is there.
for _ in $(seq 1 40); do [[ -s $RUN/glance-api.pid ]] && break; sleep 0.25; done
print_env
