#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (on the pure parsers of crates/formats, and nothing else
# of the server: disk-image inspector, CSAR reader, manifest parser, Range/Content-Range headers,
# token scopes) and runs each one for a bounded time, starting from a copy of its committed seed
# corpus in fuzz/corpus/<target>/ (the copy grows; the committed corpus is never modified). Fails on any crash, failed assertion, leak,
# timeout or out-of-memory, printing the path of the input that caused it; to keep such an
# input, fix the parser and copy the file into fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [TARGET...]     all targets when none is named
#   FUZZ_SECONDS=N                  seconds per target (default 20)
#
# Needs the nightly toolchain and cargo-fuzz; installs them when missing: nightly with rustup
# (minimal profile), cargo-fuzz from crates.io into a cache folder
# (${XDG_CACHE_HOME:-~/.cache}/image-manager/cargo-fuzz, a few minutes to build once; nothing
# depends on the cache, a cold one only makes the run slower).
# Release build with debug assertions and overflow checks (-O -a); no sanitizer: the crate has
# no unsafe code of its own, and without one the build is shorter and runs are faster.
# Target directory: $CARGO_TARGET_DIR/fuzz when set (scripts/test.sh sets it), else fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "installing the nightly Rust toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  fuzz_root="${XDG_CACHE_HOME:-$HOME/.cache}/image-manager/cargo-fuzz"
  if [[ ! -x $fuzz_root/bin/cargo-fuzz ]]; then
    echo "installing cargo-fuzz into $fuzz_root"
    t0=$(date +%s)
    # Its own temporary target directory, not the caller's CARGO_TARGET_DIR.
    env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --root "$fuzz_root"
    echo "cargo-fuzz install: $(($(date +%s) - t0)) s"
  fi
  export PATH="$fuzz_root/bin:$PATH"
fi

seconds=${FUZZ_SECONDS:-20}
target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="${target_dir:-$PWD/fuzz/target}"
build=(-O -a -s none --target-dir "$target_dir")

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//')
fi

t0=$(date +%s)
cargo +nightly fuzz build "${build[@]}"
echo "fuzz build: $(($(date +%s) - t0)) s"

host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"
work=$(mktemp -d "${TMPDIR:-/tmp}/im-fuzz.XXXXXX")
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  if [[ -d fuzz/corpus/$t ]]; then cp -a "fuzz/corpus/$t/." "$work/$t/corpus/"; fi
  rc=0
  "$bin_dir/$t" "$work/$t/corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/$t/artifacts/" >"$work/$t/log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n 1)
  artifacts=$(find "$work/$t/artifacts" -type f)
  if ((rc != 0)) || [[ -n $artifacts ]]; then
    tail -n 60 "$work/$t/log"
    echo "fuzz $t: FAILED (exit $rc); input(s):" >&2
    printf '   %s\n' $artifacts >&2
    failed+=("$t")
  else
    echo "fuzz $t: ok, ${execs:-?} runs in ${seconds} s, corpus $(find "$work/$t/corpus" -type f | wc -l) inputs"
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED targets: ${failed[*]} (logs and inputs in $work)" >&2
  exit 1
fi
rm -rf "$work"
