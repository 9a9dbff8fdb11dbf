#!/usr/bin/env bash
# Records the optimization profile the release build is compiled with
# (profile-guided optimization): builds a profile-generating Switchyard,
# runs the comparison's workloads through it (benches/compare.py --train),
# and merges what it counted into benches/pgo/switchyard.profdata.
#
#   benches/pgo.sh
#
# Run it again after changes to the request path: code changed since the
# profile was recorded is compiled without it (as if it were cold). The
# profile is read by the LLVM version that wrote it, recorded beside it;
# scripts/lib.sh builds without the profile when the toolchain's differs.
# Needs rustup's llvm-tools component (llvm-profdata), installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps nginx wrk h2load:nghttp2-client openssl taskset:util-linux python3 curl
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    rustup component add llvm-tools
fi
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
# A target folder of its own: the instrumented build must not replace the
# release binaries.
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=target/pgo-generate \
    cargo build --release --locked --bin switchyard
# Build scripts ran instrumented too: only the proxy's own run counts.
rm -f "$raw"/*.profraw
python3 benches/compare.py --train --duration 5 --bin-dir target/pgo-generate/release
mkdir -p benches/pgo
"$profdata" merge --sparse -o benches/pgo/switchyard.profdata "$raw"/*.profraw
rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' > benches/pgo/llvm-version
# The dependencies the profile was recorded with (check_release_profile).
sha256sum Cargo.lock | cut -d' ' -f1 > benches/pgo/cargo-lock.sha256
echo "benches/pgo/switchyard.profdata: $(du -h benches/pgo/switchyard.profdata | cut -f1)," \
    "LLVM $(cat benches/pgo/llvm-version)"
