#!/usr/bin/env bash
# Builds the CUDA binary of `ensemble` (candle's cuda feature) on a Linux machine with or
# without a GPU or a system CUDA toolkit.
#
#   scripts/build_cuda.sh                       # → $CARGO_TARGET_DIR/release/ensemble (default target/)
#   scripts/build_cuda.sh --example bench_transformer -p deberta   # other cargo targets
#   BUILD_WITH=maturin scripts/build_cuda.sh --out dist            # the CUDA wheel (package.sh)
#   CUDA_MAJOR=13 scripts/build_cuda.sh         # CUDA 13.0, one architecture (see below)
#   scripts/build_cuda.sh --locked --bin ensemble  # Cargo.lock as it is (see below)
#
# The binary opens the NVIDIA driver, cuBLAS and cuRAND at run time, when a command first uses
# a GPU (cudarc's dynamic loading; candle-core is patched for it: see
# scripts/candle-core-0.11.1-dynamic-loading.patch). So it starts, and every CPU command works,
# on a machine without a driver; `--device cuda:N` then says which library or driver is
# missing. Nothing of CUDA is linked, so the build needs no CUDA library either: only nvcc for
# candle's kernels. The libraries are looked for in a Python environment's NVIDIA wheels
# (nvidia-cublas-cu12, nvidia-curand-cu12: the ones PyTorch uses) and on the system's library
# path (neural/src/cuda_libraries.rs).
#
# Default, CUDA_MAJOR=12: one binary for NVIDIA drivers ≥ 525 (CUDA 12.0 and later) and GPUs
# of compute capability 7.5 (T4), 8.0 (A100), 8.6 (A10, RTX 30xx), 8.9 (L4, RTX 40xx) and 9.0
# (H100/H200), plus PTX that the driver compiles for other GPUs ≥ 7.0 (V100 from compute_70,
# Blackwell and later from compute_90). 6.x (P100) is not possible: candle's reduce.cu needs
# atomicAdd on __half, which exists from 7.0.
# - Compiler: nvcc 11.8 from Debian 12's non-free `nvidia-cuda-toolkit` (installed here if no
#   nvcc is on PATH: the script adds `contrib non-free` to the apt source). Its PTX (ISA 7.8)
#   loads on any driver ≥ 520, and it compiles cubins up to sm_90. NVIDIA's PyPI wheels for
#   CUDA 12 hold no nvcc, only ptxas. The CUDA API the binary calls is CUDA 12.0's
#   (CUDARC_CUDA_VERSION=12000), whatever nvcc's version.
# - candle-kernels builds PTX for one architecture and candle-core loads it as text; the
#   script patches a copy of the crates.io crate in the target directory
#   (scripts/candle-kernels-0.11.1-multiarch.patch) so that each kernel module is a fatbin with
#   a cubin per architecture and PTX (compressed). bf16 kernels are compiled only for ≥ 8.0
#   (candle's #if __CUDA_ARCH__ >= 800), so the per-arch cubins keep them on A100/H100.
#   CUDA_ARCHS (cubins) and CUDA_PTX (PTX targets) change the architecture lists. The kernels'
#   CUDA runtime (MoE/GGUF kernels only) is linked statically.
#
# CUDA_MAJOR=13: nvcc 13.0 from PyPI wheels, candle's kernels unpatched, one architecture
# (CUDA_COMPUTE_CAP, default 90 = H100/H200; 80 = A100), driver ≥ 580, cuBLAS 13.
#
# CUDA_ROOT=/usr/local/cuda: use that installed toolkit's nvcc instead; with CUDA_MAJOR=12 the
# kernels are still built for all the architectures above (the PTX then has that toolkit's ISA
# version and needs a driver at least as new as the toolkit).
#
# All patched crates are copies in the target directory used through
# `cargo --config patch.crates-io…`: Cargo.toml stays as it is, and Cargo.lock, which the
# patches rewrite, is put back afterwards. With --locked among the arguments, Cargo.lock must
# be complete as it is (checked by `cargo metadata --locked` before the patches), so that the
# patches change only the patched crates' entries; `cargo build` then runs with --locked on
# the lock so rewritten (maturin does not get it: its own `cargo metadata` would see
# --locked without the patches).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_MAJOR=${CUDA_MAJOR:-12}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BUILD_WITH=${BUILD_WITH:-cargo}
PATCH_CONFIG=()
LOCKED=()
for arg in "$@"; do
    if [ "$arg" = --locked ]; then LOCKED=(--locked); fi
done
mkdir -p "$TARGET_DIR"

site_packages() {
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# Manifest path of a dependency of the cuda build; exits the script if cargo metadata fails
# or does not list it.
manifest_of() {
    local metadata manifest
    metadata=$(cargo metadata --format-version 1 --features cuda "${LOCKED[@]}") || {
        echo "cargo metadata failed (see above)" >&2
        exit 1
    }
    manifest=$(printf '%s' "$metadata" | python3 -c '
import json, sys
print(next((p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == sys.argv[1]), ""))' "$1") || {
        echo "could not read cargo metadata's output" >&2
        exit 1
    }
    [ -n "$manifest" ] || {
        echo "cargo metadata lists no package $1" >&2
        exit 1
    }
    echo "$manifest"
}

# A copy of crate $1 from crates.io with scripts/$1-<version>-$2.patch applied, in the target
# directory (made again when the patch changes), used in place of the crates.io crate.
use_patched() {
    local manifest src version patch copy stamp
    manifest=$(manifest_of "$1")
    src=$(dirname "$manifest")
    version=$(basename "$src" | sed "s/^$1-//")
    patch="scripts/$1-$version-$2.patch"
    [ -f "$patch" ] || {
        echo "no $patch for $1 $version" >&2
        exit 1
    }
    copy="$(realpath "$TARGET_DIR")/patched/$1-$version"
    stamp="$copy/.patched-$(sha256sum "$patch" | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        rm -rf "$copy"
        mkdir -p "$(dirname "$copy")"
        cp -r "$src" "$copy"
        patch -s -p1 -d "$copy" <"$patch"
        touch "$stamp"
    fi
    PATCH_CONFIG+=(--config "patch.crates-io.$1.path=\"$copy\"")
}

case "$CUDA_MAJOR" in
12)
    if [ -n "${CUDA_ROOT:-}" ]; then
        NVCC="$CUDA_ROOT/bin/nvcc"
        export PATH="$CUDA_ROOT/bin:$PATH"
    else
        if ! command -v nvcc >/dev/null; then
            # Debian 12 (bookworm): nvcc 11.8 is in non-free.
            SUDO=$([ "$(id -u)" = 0 ] && echo || echo sudo)
            SRC=/etc/apt/sources.list.d/debian.sources
            if [ -f "$SRC" ] && ! grep -q 'non-free' "$SRC"; then
                echo "adding contrib non-free to $SRC"
                $SUDO sed -i 's/^Components: main$/Components: main contrib non-free/' "$SRC"
            fi
            $SUDO apt-get update -q
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
                nvidia-cuda-toolkit nvidia-cuda-toolkit-gcc
        fi
        NVCC=$(command -v nvcc)
        unset CUDA_HOME CUDA_PATH CUDA_TOOLKIT_ROOT_DIR
    fi
    export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12000} # driver API of CUDA 12.0 (≥ 525)
    # The CUDA runtime of the kernels (libmoe.a), linked statically.
    for a in "$(dirname "$NVCC")/../lib64" "$(dirname "$(realpath "$NVCC")")/../lib64" \
        /usr/lib/x86_64-linux-gnu; do
        if [ -e "$a/libcudart_static.a" ]; then
            mkdir -p "$TARGET_DIR/cuda-static"
            ln -sf "$(realpath "$a/libcudart_static.a")" "$TARGET_DIR/cuda-static/"
            CANDLE_KERNELS_CUDART_STATIC_DIR=$(realpath "$TARGET_DIR/cuda-static")
            export CANDLE_KERNELS_CUDART_STATIC_DIR
            break
        fi
    done

    # Architectures: cubins, and PTX for the GPUs between and after them. Compressed fatbins
    # (the driver unpacks them when it loads a module): about 8x smaller.
    CUDA_ARCHS=${CUDA_ARCHS:-75 80 86 89 90}
    CUDA_PTX=${CUDA_PTX:-70 90}
    NVCC_ARGS="-Xfatbin=-compress-all"
    for a in $CUDA_ARCHS; do NVCC_ARGS+=" -gencode=arch=compute_$a,code=sm_$a"; done
    for a in $CUDA_PTX; do NVCC_ARGS+=" -gencode=arch=compute_$a,code=compute_$a"; done
    export CANDLE_KERNELS_NVCC_ARGS="$NVCC_ARGS"
    # The statically linked MoE/GGUF kernels (quantized mixture-of-experts models, unused by
    # this project) need >= 8.0 for their bf16 WMMA code: sm_80 cubin and compute_80 PTX.
    export CUDA_COMPUTE_CAP=80
    export CANDLE_KERNELS_MOE_NVCC_ARGS="-Xfatbin=-compress-all -gencode=arch=compute_80,code=compute_80"
    export NVCC
    use_patched candle-kernels multiarch
    KERNELS="sm_$(echo $CUDA_ARCHS | sed 's/ /,sm_/g') + PTX compute_$(echo $CUDA_PTX | sed 's/ /,compute_/g')"
    ;;
13)
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} # 90: H100/H200
    if [ -z "${CUDA_ROOT:-}" ]; then
        VENV=${CUDA_VENV:-/tmp/cuda-wheels-13.0}
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' \
            'nvidia-nvvm==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'
        CUDA_ROOT="$(site_packages "$VENV")/nvidia/cu13"
        [ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"
    fi
    export CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT" CUDA_ROOT
    export PATH="$CUDA_ROOT/bin:$PATH"
    export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
    NVCC=nvcc
    KERNELS="PTX compute_$CUDA_COMPUTE_CAP"
    ;;
*)
    echo "CUDA_MAJOR must be 12 or 13" >&2
    exit 1
    ;;
esac
use_patched candle-core dynamic-loading
use_patched cudarc sonames-first
# What `ensemble --version` reports of this build.
export ENSEMBLE_CUDA_BUILD="CUDA $CUDA_MAJOR (API $((CUDARC_CUDA_VERSION / 1000)).$((CUDARC_CUDA_VERSION % 1000 / 10))), kernels $KERNELS"

# The patches rewrite Cargo.lock's entries for the patched crates: put the file back afterwards.
cp Cargo.lock "$TARGET_DIR/Cargo.lock.before-cuda"
trap 'cp "$TARGET_DIR/Cargo.lock.before-cuda" Cargo.lock' EXIT

# The arguments other than --locked (which was applied to `cargo metadata` above).
ARGS=()
for arg in "$@"; do
    if [ "$arg" != --locked ]; then ARGS+=("$arg"); fi
done

"$NVCC" --version | tail -n 2
case "$BUILD_WITH" in
cargo)
    [ ${#ARGS[@]} -gt 0 ] || ARGS=(--bin ensemble)
    if [ ${#LOCKED[@]} -gt 0 ]; then
        # Writes the patched crates' entries into Cargo.lock, which --locked holds the build to.
        cargo metadata --format-version 1 --features cuda "${PATCH_CONFIG[@]}" >/dev/null
    fi
    cargo build --release --features cuda "${PATCH_CONFIG[@]}" "${LOCKED[@]}" "${ARGS[@]}"
    ;;
maturin)
    # Not given --locked: maturin passes it to its own `cargo metadata`, but not the --config
    # patches, and that would refuse the lock the patches need. Cargo.lock was checked above.
    maturin build --release --features cuda "${PATCH_CONFIG[@]}" "${ARGS[@]}"
    ;;
*)
    echo "BUILD_WITH must be cargo or maturin" >&2
    exit 1
    ;;
esac
echo "built: $ENSEMBLE_CUDA_BUILD"
