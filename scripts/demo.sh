#!/usr/bin/env bash
# Builds Switchyard and runs its demo: a proxy on 127.0.0.1:8080 in front of
# two demo upstreams (blue and green) split 90/10. Extra arguments go to
# `switchyard demo` (for example `--listen 127.0.0.1:9080`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps curl
use_release_profile
cargo build --release --locked --bin switchyard
exec target/release/switchyard demo "$@"
