#!/usr/bin/env bash
# Makes this clone buildable: LightGBM is compiled from source by lightgbm3-sys, which needs
# CMake >= 3.28 (< 4: LightGBM's CMakeLists predates CMake 4) and libclang for its bindings.
#
# Nothing is installed system-wide and root is not needed: a tool that is missing or too old
# comes from its PyPI wheel into .tools/, and .cargo/config.toml (both git-ignored, written
# here) points cargo's build scripts at it. Idempotent: a second run finds everything in
# place and only checks. Remove .tools/ and .cargo/config.toml to undo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools/py"
config="$root/.cargo/config.toml"
marker="# Written by scripts/setup.sh"

say() { echo "setup: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

command -v cargo >/dev/null || fail "no cargo on PATH: install Rust from https://rustup.rs"
command -v c++ >/dev/null ||
    fail "no C++ compiler (c++) on PATH: on Debian/Ubuntu, apt-get install build-essential"

pip_install() { # wheel spec, what it is for
    command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 ||
        fail "$2 is needed and comes from PyPI, but python3 with pip is missing: on Debian/Ubuntu, apt-get install python3-pip"
    say "installing $1 from PyPI into .tools/ ($2)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --upgrade --target "$tools" "$1" ||
        fail "pip could not install $1 (no network to PyPI?)"
}

version_ok() { # cmake binary -> 0 when 3.28 <= version < 4
    local v
    v=$("$1" --version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+' | head -n1) || return 1
    [ -n "$v" ] || return 1
    local major=${v%%.*} minor=${v#*.}
    [ "$major" -eq 3 ] && [ "$minor" -ge 28 ]
}

# CMake: the one on PATH when it is recent enough, else the wheel's.
cmake_bin=""
if [ -n "${CMAKE:-}" ] && version_ok "$CMAKE"; then
    cmake_bin="$CMAKE"
elif command -v cmake >/dev/null && version_ok "$(command -v cmake)"; then
    cmake_bin=$(command -v cmake)
else
    [ -x "$tools/cmake/data/bin/cmake" ] && version_ok "$tools/cmake/data/bin/cmake" ||
        pip_install 'cmake>=3.28,<4' "CMake for LightGBM"
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
        pip_install 'libclang==18.1.1' "libclang for LightGBM's bindings"
    libclang_dir="$tools/clang/native"
    builtin_headers=$(c++ -print-file-name=include)
    [ -f "$builtin_headers/stddef.h" ] ||
        fail "the C++ compiler's builtin headers ($builtin_headers/stddef.h) are missing"
    extra_clang_args="-isystem $builtin_headers"
    say "libclang: $libclang_dir (headers from $builtin_headers)"
fi

# Cargo reads [env] for build scripts; a user's own config is never overwritten.
if [ -f "$config" ] && ! head -n1 "$config" | grep -qF "$marker"; then
    fail "$config exists and was not written by this script: add to its [env] table
  CMAKE = \"$cmake_bin\"
  LIBCLANG_PATH = \"$libclang_dir\"
  BINDGEN_EXTRA_CLANG_ARGS = \"$extra_clang_args\""
fi
mkdir -p "$(dirname "$config")"
new=$(
    cat <<EOF
$marker (build tools for lightgbm3-sys); rerun it after moving the clone.
[env]
CMAKE = "$cmake_bin"
LIBCLANG_PATH = "$libclang_dir"
BINDGEN_EXTRA_CLANG_ARGS = "$extra_clang_args"
EOF
)
if [ "$(cat "$config" 2>/dev/null)" != "$new" ]; then
    printf '%s\n' "$new" >"$config"
    say "wrote .cargo/config.toml"
fi
say "ready"
