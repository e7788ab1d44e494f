#!/usr/bin/env bash
# Installs what the test suites need on a fresh machine of this kind (Debian, root):
# skopeo, podman and buildah (tests/clients), qemu-img (test disk images), openssl (test
# certificates) and docker-registry (CNCF Distribution, the target of tests/oci_target.rs and
# tests/distribution) from Debian, the Python test packages from PyPI (moto's S3 server and
# schemathesis included), the oras CLI (scripts/install-tools.sh), and the venvs of a real
# OpenStack Glance 33 and Keystone 30 (tests/services/glance/start.sh --install-only: PyPI,
# pinned by its constraints.txt) in ${XDG_CACHE_HOME:-~/.cache}/image-manager/glance-venv and
# keystone-venv, which tests/glance.rs and tests/pysupport/glance.py start on free ports
# (the tests themselves never install).
# The podman/buildah tests use vfs storage and chroot isolation, so as root they need nothing
# beyond the packages' own dependencies (crun or runc, conmon, uidmap); run as another user,
# podman and buildah also need a subordinate id range for that user in /etc/subuid and
# /etc/subgid (checked below).
# Idempotent and quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
[ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
# The build links OpenSSL's libcrypto (sha512 and md5 of VM image ingest).
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } || need_apt+=(libssl-dev pkg-config)
if ((${#need_apt[@]})); then
  echo "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The package's own service (where systemd runs one) would hold port 5000: the tests start
# their registries themselves.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if (($(id -u) != 0)); then
  me=$(id -un)
  if ! grep -q "^$me:" /etc/subuid 2>/dev/null || ! grep -q "^$me:" /etc/subgid 2>/dev/null; then
    echo "warning: $me has no range in /etc/subuid and /etc/subgid: rootless podman and buildah" \
      "(tests/clients) will fail; add one, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $me" >&2
  fi
fi

# moto before 5.2.5 answers CompleteMultipartUpload with a root element S3 clients reject.
moto_ok() {
  python3 -c 'import sys, moto.server, moto; sys.exit(tuple(map(int, moto.__version__.split(".")[:3])) < (5, 2, 5))' 2>/dev/null
}
if ! python3 -c 'import pytest, requests, oras, schemathesis' 2>/dev/null || ! moto_ok; then
  echo "installing Python test packages"
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

# Glance and Keystone venvs: reused while their stamp (requirements, constraints, Python version)
# matches; both built in parallel when missing (about 2 min with an empty pip cache).
command -v curl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
python3 -c 'import ensurepip' 2>/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}
tests/services/glance/start.sh --install-only

# oras and cosign CLIs (static binaries from Debian trixie, unpacked into a cache folder).
scripts/install-tools.sh >/dev/null

