#!/usr/bin/env bash
# Makes sure the database servers the test matrix uses are running on loopback
# (PostgreSQL 127.0.0.1:5432 trust auth, MariaDB 127.0.0.1:3306 root without password).
# Machines of this kind start them before a session; this starts them if they are down and
# fails loudly if they cannot be reached.
set -euo pipefail

wait_for() { # NAME CHECK-COMMAND...
  local name=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2 # polling a service that is starting, bounded to 20 s
  done
  echo "services: $name is not reachable" >&2
  return 1
}

if ! psql -h 127.0.0.1 -U postgres -d test -qtAc 'SELECT 1' >/dev/null 2>&1; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
wait_for PostgreSQL psql -h 127.0.0.1 -U postgres -d test -qtAc 'SELECT 1'

if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  echo "services: starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
wait_for MariaDB mariadb -h 127.0.0.1 -u root -e 'SELECT 1'
