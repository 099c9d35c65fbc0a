#!/usr/bin/env bash
# Builds a release binary that runs on older Linux (glibc >= 2.31: Kaggle's notebook image,
# Ubuntu 20.04+, Debian 11+) and packs it with configs/ and the README into
# dist/ensemble-<version>-x86_64-linux-glibc2.31.tar.gz.
#
# A binary takes the glibc symbol versions of the machine it is linked on, so the build runs
# inside a Debian 11 (bullseye, glibc 2.31, gcc 10) root that debootstrap makes under
# .tools/bullseye (once, ~400 MB), with this machine's Rust toolchain and cargo cache mounted
# in. gcc's libstdc++ and libgomp (LightGBM's OpenMP) are the real ones, so LightGBM runs on
# all cores there. The working tree is copied in as it is (tracked and untracked files, not
# ignored ones). At the end the binary's highest GLIBC_ symbol version is checked.
#
# Needs root (debootstrap, chroot, mount) and Debian's package mirror. Extra arguments go to
# cargo build, e.g. `--no-default-features` for a binary without the transformer member.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
root="$repo/.tools/bullseye"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
max_glibc=2.31

say() { echo "package: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root for debootstrap, chroot and mount (run it with sudo)"
[ "$(uname -m)" = x86_64 ] || fail "builds x86_64 binaries on an x86_64 machine only"
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
    rm -rf "$root"
    debootstrap --variant=minbase \
        --include=build-essential,ca-certificates,python3-pip,libclang-dev \
        bullseye "$root" "$mirror" >/dev/null ||
        fail "debootstrap failed (see $root/debootstrap/debootstrap.log)"
    touch "$root/.complete"
fi

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || true; done
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
git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -x -C "$root/build"

say "building in Debian 11 (a full release build: 15-25 minutes on 2 cores)"
chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/cargo/bin:/usr/bin:/bin \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo TERM=dumb /bin/bash -euo pipefail -c '
    [ -x /opt/py/cmake/data/bin/cmake ] ||
        python3 -m pip install -q --target /opt/py "cmake>=3.28,<4"
    export CMAKE=/opt/py/cmake/data/bin/cmake
    export LIBCLANG_PATH=$(dirname "$(ls /usr/lib/llvm-*/lib/libclang.so | head -n1)")
    cd /build
    cargo build --release --locked '"$*"'
'

binary="$root/build/target/release/ensemble"
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
glibcxx=$(objdump -T "$binary" | grep -o 'GLIBCXX_[0-9.]*' | sed 's/GLIBCXX_//' | sort -V | tail -n1)
[ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -n1)" = "$max_glibc" ] ||
    fail "the binary needs GLIBC_$glibc, above $max_glibc"
say "the binary needs GLIBC_$glibc (at most $max_glibc) and GLIBCXX_${glibcxx:-none}"

version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
name="ensemble-$version-x86_64-linux-glibc$max_glibc"
stage=$(mktemp -d)
mkdir -p "$stage/$name" dist
cp "$binary" "$stage/$name/ensemble"
strip "$stage/$name/ensemble"
cp -r configs README.md "$stage/$name/"
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
rm -rf "$stage"
say "wrote dist/$name.tar.gz ($(du -h "dist/$name.tar.gz" | cut -f1))"
