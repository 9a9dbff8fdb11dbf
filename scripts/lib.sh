# Shared by the scripts in this folder: install what the build needs
# (Debian/Ubuntu packages), so a fresh machine needs nothing by hand.

# ensure_build_deps [COMMAND[:PACKAGE]...]: cmake and a C compiler, plus any
# extra commands named, each installed from PACKAGE (default: the command's
# own name) when missing.
ensure_build_deps() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    local extra
    for extra in "$@"; do
        command -v "${extra%%:*}" >/dev/null 2>&1 || missing+=("${extra#*:}")
    done
    if ((${#missing[@]})); then
        local sudo=()
        if [ "$(id -u)" -ne 0 ]; then
            sudo=(sudo)
        fi
        echo "switchyard: installing build prerequisites: ${missing[*]}" >&2
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "switchyard: a Rust toolchain (cargo) is required" >&2
        exit 1
    fi
}

# use_release_profile: release builds from here on are optimized with the
# profile benches/pgo.sh recorded from the benchmark's workloads (about a
# quarter fewer instructions per proxied request), when this toolchain's
# LLVM is the one that wrote it; otherwise they build without it.
use_release_profile() {
    local profile="$PWD/benches/pgo/switchyard.profdata"
    [ -f "$profile" ] || return 0
    local recorded have
    recorded=$(cat benches/pgo/llvm-version 2>/dev/null || true)
    have=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    if [ "$recorded" != "$have" ]; then
        echo "switchyard: building without benches/pgo/switchyard.profdata" \
            "(recorded with LLVM ${recorded:-unknown}; this rustc has LLVM ${have:-unknown})" >&2
        return 0
    fi
    # Flags already set are kept; the encoded form (one flag per field)
    # keeps a profile path with spaces in one piece.
    local sep=$'\x1f' flags=${CARGO_ENCODED_RUSTFLAGS:-}
    if [ -z "$flags" ] && [ -n "${RUSTFLAGS:-}" ]; then
        local -a words
        read -ra words <<<"$RUSTFLAGS"
        flags=$(IFS=$sep; echo "${words[*]}")
    fi
    export CARGO_ENCODED_RUSTFLAGS="${flags:+$flags$sep}-Cprofile-use=$profile"
}

# check_release_profile BUILD_LOG: after a release build with the profile
# (use_release_profile), fails when the profile no longer fits the code.
# The compiler drops the counts of any function whose control flow changed
# since the profile was recorded and compiles it as if it were cold: the
# build succeeds, only slower (a changed hot function costs per request).
# BUILD_LOG holds the build's output, where each such function is reported
# with the counts discarded. Counts of STALE_PROFILE_MIN_COUNT (10,000) or
# more mean the function ran on the benchmark's request path; fewer are
# start-up and rare paths, reported but not failed. Crates from the
# registry are compiled with their warnings capped, so a changed Cargo.lock
# is checked against the one the profile was recorded with instead.
# ALLOW_STALE_PROFILE=1 reports without failing (to measure a change before
# recording the profile again).
check_release_profile() {
    local log=$1
    [[ ${CARGO_ENCODED_RUSTFLAGS:-} == *-Cprofile-use=* ]] || return 0
    local min=${STALE_PROFILE_MIN_COUNT:-10000} stale=0
    local lock_recorded lock_now
    lock_recorded=$(cat benches/pgo/cargo-lock.sha256 2>/dev/null || true)
    lock_now=$(sha256sum Cargo.lock | cut -d' ' -f1)
    if [ -z "$lock_recorded" ]; then
        echo "switchyard: benches/pgo/cargo-lock.sha256 is missing: the profile's dependencies are unknown" >&2
    elif [ "$lock_recorded" != "$lock_now" ]; then
        echo "switchyard: Cargo.lock changed since benches/pgo/switchyard.profdata was recorded" >&2
        stale=1
    fi
    # "... function control flow change detected (hash mismatch) SYMBOL
    # Hash = H up to N count discarded"
    local hot cold
    hot=$(grep -o 'hash mismatch) [^ ]* Hash = [0-9]* up to [0-9]* count discarded' "$log" |
        awk -v min="$min" '$(NF-2) >= min { print $(NF-2), $3 }' | sort -rn || true)
    cold=$(grep -o 'hash mismatch) [^ ]* Hash = [0-9]* up to [0-9]* count discarded' "$log" |
        awk -v min="$min" '$(NF-2) < min' | wc -l || true)
    if [ "$cold" -gt 0 ]; then
        echo "switchyard: $cold function(s) changed since the profile was recorded, each run fewer than $min times in its workload" >&2
    fi
    if [ -n "$hot" ]; then
        echo "switchyard: function(s) on the benchmark's request path changed since the profile was recorded" \
            "(counts discarded, symbol):" >&2
        echo "$hot" | head -20 | sed 's/^/    /' >&2
        stale=1
    fi
    if [ "$stale" -eq 1 ]; then
        echo "switchyard: the optimization profile is stale: record it again with benches/pgo.sh" >&2
        if [ "${ALLOW_STALE_PROFILE:-}" != 1 ]; then
            return 1
        fi
        echo "switchyard: ALLOW_STALE_PROFILE=1: going on with the stale profile" >&2
    fi
    return 0
}
