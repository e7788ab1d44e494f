#!/usr/bin/env bash
# Fetches client tools that this machine's Debian release does not package but Debian trixie
# does, as static Go binaries: `oras` (the ORAS CLI, for the client tests) and
# `cosign` (signing, for the trust work). Only the packages themselves are downloaded (their
# Depends are not: the binaries are static), with `apt-get download` through a private apt
# configuration naming trixie on the same mirror host as the machine's own apt sources; the
# machine's apt sources, state and cache are left alone. Each .deb is unpacked with `dpkg-deb -x`
# under the tools folder:
#
#   ${IM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-manager-tools}/
#     apt/                    private sources.list, lists and package cache
#     oras/usr/bin/oras       the unpacked packages
#     cosign/usr/bin/cosign
#     bin/oras, bin/cosign    symlinks to the above: the path the test suites use
#
# Tests are to find the binaries in that bin/ folder.
# Idempotent: when both binaries are present and run, nothing is fetched.
# Prints the bin/ folder on its last line.
set -euo pipefail

tools_dir=${IM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/image-manager-tools}
bin_dir=$tools_dir/bin
tools=(oras cosign)

works() { # NAME: the unpacked binary exists and answers `version`
  [ -x "$bin_dir/$1" ] && "$bin_dir/$1" version >/dev/null 2>&1
}

missing=()
for t in "${tools[@]}"; do works "$t" || missing+=("$t"); done
if ((${#missing[@]} == 0)); then
  echo "$bin_dir"
  exit 0
fi

# The mirror host of the machine's own Debian sources (deb822 .sources or one-line .list),
# skipping the security archive; deb.debian.org if none is found.
mirror=$(
  { grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
    grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*//'
  } | grep -E '^https?://[^/]+/debian/?$' | head -1 || true
)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

apt_dir=$tools_dir/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc/preferences.d" "$bin_dir"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror trixie main" >"$apt_dir/etc/sources.list"
: >"$apt_dir/status"
apt_opts=(
  -o Dir::Etc::SourceList="$apt_dir/etc/sources.list"
  -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null
  -o Dir::Etc::PreferencesParts="$apt_dir/etc/preferences.d"
  -o Dir::State="$apt_dir"
  -o Dir::State::Lists="$apt_dir/lists"
  -o Dir::State::status="$apt_dir/status"
  -o Dir::Cache="$apt_dir"
  -o Dir::Cache::Archives="$apt_dir/archives"
  -o APT::Architecture="$(dpkg --print-architecture)"
  -o Debug::NoLocking=true
  -o APT::Sandbox::User=root
)

echo "install-tools: fetching ${missing[*]} from Debian trixie ($mirror)" >&2
apt-get "${apt_opts[@]}" update -qq >&2
cd "$apt_dir/archives"
for t in "${missing[@]}"; do
  rm -f "$apt_dir/archives/${t}"_*.deb
  apt-get "${apt_opts[@]}" download -qq "$t" >&2
  deb=$(ls "$apt_dir/archives/${t}"_*.deb | head -1)
  rm -rf "$tools_dir/$t"
  dpkg-deb -x "$deb" "$tools_dir/$t"
  ln -sfn "$tools_dir/$t/usr/bin/$t" "$bin_dir/$t"
  if ! works "$t"; then
    echo "install-tools: $bin_dir/$t does not run" >&2
    exit 1
  fi
  echo "install-tools: $t $(dpkg-deb -f "$deb" Version) -> $bin_dir/$t" >&2
done
echo "$bin_dir"
