#!/usr/bin/env bash
# Everything CI checks: formatting, lints, every example config, and the
# whole test suite (unit tests and end-to-end tests against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps pebble pebble-challtestsrv:pebble
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --locked --bin switchyard
target/debug/switchyard check examples/*.toml
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The unit tests of the framework crates carried in vendor/.
scripts/framework-tests.sh 2>&1 | tee -a "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
