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
