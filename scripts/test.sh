#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds, then runs
# the Rust tests (unit + integration, including the oci-client crate), our OCI conformance suite
# (spec-tests/) and the real-client tests (skopeo, ORAS) against real server processes.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build
cargo test
python3 -m pytest spec-tests tests/clients -q
