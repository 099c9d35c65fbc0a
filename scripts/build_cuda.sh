#!/usr/bin/env bash
# Builds the CUDA binary of `ensemble` (candle's cuda feature) on a Linux machine with or
# without a GPU or a system CUDA toolkit.
#
#   scripts/build_cuda.sh                       # → $CARGO_TARGET_DIR/release/ensemble (default target/)
#   scripts/build_cuda.sh --example bench_transformer -p deberta   # other cargo targets
#   CUDA_MAJOR=13 scripts/build_cuda.sh         # CUDA 13.0, one architecture (see below)
#
# Default, CUDA_MAJOR=12: one binary for NVIDIA drivers ≥ 525 (CUDA 12.0 and later) and GPUs
# of compute capability 7.5 (T4), 8.0 (A100), 8.6 (A10, RTX 30xx), 8.9 (L4, RTX 40xx) and 9.0
# (H100/H200), plus PTX that the driver compiles for other GPUs ≥ 7.0 (V100 from compute_70,
# Blackwell and later from compute_90). 6.x (P100) is not possible: candle's reduce.cu needs
# atomicAdd on __half, which exists from 7.0.
# - Compiler: nvcc 11.8 from Debian 12's non-free `nvidia-cuda-toolkit` (installed here if no
#   nvcc is on PATH: the script adds `contrib non-free` to the apt source). Its PTX (ISA 7.8)
#   loads on any driver ≥ 520, and it compiles cubins up to sm_90. NVIDIA's PyPI wheels for
#   CUDA 12 hold no nvcc, only ptxas.
# - candle-kernels builds PTX for one architecture and candle-core loads it as text; the
#   script patches a copy of the crates.io crate in the target directory
#   (scripts/candle-kernels-0.11.1-multiarch.patch) so that each kernel module is a fatbin with
#   a cubin per architecture and PTX (compressed), built with `cargo --config patch.crates-io…`
#   (Cargo.toml unchanged; Cargo.lock is restored afterwards). bf16 kernels are compiled only
#   for ≥ 8.0 (candle's #if __CUDA_ARCH__ >= 800), so the per-arch cubins keep them on A100/H100.
# - Libraries: the binary needs cuBLAS (and its cuBLASLt) and cuRAND of CUDA 12
#   (libcublas.so.12, libcurand.so.10; linked against NVIDIA's cu12 wheels 12.1, the libraries
#   PyTorch's cu12 wheels bring; NVRTC is unused and dropped), and the driver API at cudarc's
#   CUDA 12.0 level. The kernels' CUDA runtime
#   (MoE/GGUF kernels only) is linked statically.
#   CUDA_ARCHS (cubins) and CUDA_PTX (PTX targets) change the architecture lists.
#
# CUDA_MAJOR=13: nvcc 13.0 from PyPI wheels, candle unpatched, one architecture
# (CUDA_COMPUTE_CAP, default 90 = H100/H200; 80 = A100), driver ≥ 580. The CUDA 12 wheels hold
# only ptxas; the CUDA 13 ones hold the whole compiler. 13.0 is pinned: cudarc 0.19 knows CUDA
# up to 13.4, and 13.0 needs the oldest driver.
#
# CUDA_ROOT=/usr/local/cuda: use that installed toolkit (its nvcc and libraries) instead; with
# CUDA_MAJOR=12 the kernels are still built for all the architectures above (the PTX then has
# that toolkit's ISA version and needs a driver at least as new as the toolkit).
#
# candle links the driver library (libcuda), which only a GPU driver installs. A stub with the
# same soname and every cu* symbol that cudarc declares satisfies the linker; at run time the
# real driver's libcuda.so.1 is loaded. At run time cuBLAS and cuRAND must be found: the script
# prints the LD_LIBRARY_PATH line.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_MAJOR=${CUDA_MAJOR:-12}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
STUBS=${CUDA_STUBS:-/tmp/cuda-stubs}
PATCH_CONFIG=()
mkdir -p "$TARGET_DIR"

site_packages() {
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# Manifest path of a dependency of the cuda build.
manifest_of() {
    cargo metadata --format-version 1 --features cuda | python3 -c '
import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == sys.argv[1]))' "$1"
}

# The libcuda link stub, in directory $1.
make_libcuda_stub() {
    mkdir -p "$1"
    if [ ! -e "$1/libcuda.so" ]; then
        grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$(dirname "$(manifest_of cudarc)")/src/driver/sys/mod.rs" |
            sed 's/pub unsafe fn //; s/(//' | sort -u | sed 's/.*/void &(void) {}/' >"$1/libcuda.c"
        gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$1/libcuda.so" "$1/libcuda.c"
    fi
}

case "$CUDA_MAJOR" in
12)
    if [ -n "${CUDA_ROOT:-}" ]; then
        NVCC="$CUDA_ROOT/bin/nvcc"
        LIB="$CUDA_ROOT/lib64"
        RUNTIME_LIBS="$LIB"
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
        # cuBLAS, cuRAND, NVRTC of CUDA 12 to link against: the set PyTorch's cu121 wheels use.
        VENV=${CUDA_VENV:-/tmp/cuda-wheels-12}
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet 'nvidia-cublas-cu12==12.1.3.1' \
            'nvidia-curand-cu12==10.3.2.106' 'nvidia-cuda-nvrtc-cu12==12.1.105'
        SITE=$(site_packages "$VENV")
        # Only this folder is searched for the CUDA libraries (CUDA_ROOT is cudarc's search
        # root), so the system's CUDA 11 libraries that Debian's toolkit installs are not linked.
        LINK=${CUDA_LINK_DIR:-/tmp/cuda12-link}
        LIB="$LINK/lib"
        mkdir -p "$LIB"
        for so in "$SITE"/nvidia/{cublas,curand,cuda_nvrtc}/lib/lib*.so.*; do
            ln -sf "$so" "$LIB/$(basename "$so" | sed 's/\.so\..*/.so/')"
        done
        RUNTIME_LIBS="$SITE/nvidia/cublas/lib:$SITE/nvidia/curand/lib"
        export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12000}  # driver API of CUDA 12.0 (≥ 525)
        unset CUDA_HOME CUDA_PATH CUDA_TOOLKIT_ROOT_DIR
        CUDA_ROOT="$LINK"
    fi
    # The CUDA runtime of the kernels (libmoe.a), linked statically.
    for a in "$(dirname "$NVCC")/../lib64" "$(dirname "$(realpath "$NVCC")")/../lib64" \
        /usr/lib/x86_64-linux-gnu; do
        if [ -e "$a/libcudart_static.a" ]; then
            mkdir -p "$TARGET_DIR/cuda-static"
            ln -sf "$(realpath "$a/libcudart_static.a")" "$TARGET_DIR/cuda-static/"
            export CANDLE_KERNELS_CUDART_STATIC_DIR="$(realpath "$TARGET_DIR/cuda-static")"
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

    # candle-kernels, patched, in the target directory.
    KERNELS_SRC=$(dirname "$(manifest_of candle-kernels)")
    KERNELS_VERSION=$(basename "$KERNELS_SRC" | sed 's/^candle-kernels-//')
    PATCH="scripts/candle-kernels-$KERNELS_VERSION-multiarch.patch"
    [ -f "$PATCH" ] || { echo "no $PATCH for candle-kernels $KERNELS_VERSION" >&2; exit 1; }
    KERNELS="$(realpath "$TARGET_DIR")/candle-kernels-$KERNELS_VERSION-multiarch"
    STAMP="$KERNELS/.patched-$(sha256sum "$PATCH" | cut -c1-16)"
    if [ ! -e "$STAMP" ]; then
        rm -rf "$KERNELS"
        cp -r "$KERNELS_SRC" "$KERNELS"
        patch -s -p1 -d "$KERNELS" <"$PATCH"
        touch "$STAMP"
    fi
    PATCH_CONFIG=(--config "patch.crates-io.candle-kernels.path=\"$KERNELS\"")
    # The patch rewrites Cargo.lock's candle-kernels entry: put the file back afterwards.
    cp Cargo.lock "$TARGET_DIR/Cargo.lock.before-cuda"
    trap 'cp "$TARGET_DIR/Cargo.lock.before-cuda" Cargo.lock' EXIT
    ;;
13)
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # 90: H100/H200
    if [ -z "${CUDA_ROOT:-}" ]; then
        VENV=${CUDA_VENV:-/tmp/cuda-wheels-13.0}
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' \
            'nvidia-nvvm==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
            'nvidia-cuda-cccl==13.0.*' 'nvidia-cublas<13.1' 'nvidia-curand<10.4.1'
        CUDA_ROOT="$(site_packages "$VENV")/nvidia/cu13"
        # Unversioned names for the linker (the wheels ship only libX.so.N).
        for so in "$CUDA_ROOT"/lib/lib*.so.*; do
            ln -sf "$(basename "$so")" "$CUDA_ROOT/lib/$(basename "$so" | sed 's/\.so\..*/.so/')"
        done
        [ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"
    fi
    LIB="$CUDA_ROOT/lib64"
    RUNTIME_LIBS="$LIB"
    export CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
    export PATH="$CUDA_ROOT/bin:$PATH"
    NVCC=nvcc
    ;;
*)
    echo "CUDA_MAJOR must be 12 or 13" >&2
    exit 1
    ;;
esac

export CUDA_ROOT
if [ ! -e "$LIB/libcuda.so" ] && [ ! -e "$LIB/stubs/libcuda.so" ]; then
    make_libcuda_stub "$STUBS"
    export LIBRARY_PATH="$STUBS:${LIBRARY_PATH:-}"
fi
export LIBRARY_PATH="$LIB:$LIB/stubs:${LIBRARY_PATH:-}"

"$NVCC" --version | tail -n 2
if [ $# -eq 0 ]; then
    set -- --bin ensemble
fi
cargo build --release --features cuda "${PATCH_CONFIG[@]}" "$@"
echo "built; at run time: export LD_LIBRARY_PATH=$RUNTIME_LIBS:\$LD_LIBRARY_PATH"
