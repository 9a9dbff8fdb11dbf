#!/usr/bin/env bash
# The load comparison: Switchyard against nginx, HAProxy and a bare pingora
# proxy, one core each. Installs what it needs (Debian packages), builds the
# release binaries, runs benches/compare.py and writes
# benches/results/{latest,quick}.{md,json}.
#
#   benches/compare.sh            # full: 5 rounds of 10 s per scenario (~25 min)
#   benches/compare.sh --quick    # one short round (~2 min): checks the harness works
#
# Each proxy also runs once under valgrind's callgrind, which counts the
# instructions a proxied request costs it: a measure that does not move
# with the machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps nginx haproxy wrk h2load:nghttp2-client openssl taskset:util-linux python3 valgrind
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
use_release_profile
# Two builds: the examples' dev-dependencies turn on framework features the
# binary does not use, and built with them the binary's framework functions
# would differ from those the optimization profile was recorded on.
# The build's output is kept: it tells whether the profile still fits the
# code (check_release_profile). Cached warnings are shown again on a build
# that has nothing to do, so a fresh build is checked too.
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo build --release --locked --bin switchyard 2>&1 | tee "$build_log"
check_release_profile "$build_log"
cargo build --release --locked --example pingora-floor --example loadgen
rm -f "$build_log"
trap - EXIT
# The harness replaces this shell, so a signal sent to this script reaches
# it, and it stops what it started.
exec python3 benches/compare.py --bin-dir target/release "$@"
