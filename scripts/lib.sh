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
