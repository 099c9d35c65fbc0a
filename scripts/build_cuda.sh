#!/usr/bin/env bash
# Builds the CUDA binary of `ensemble` (candle's cuda feature) on a machine without a GPU or a
# system CUDA toolkit, from NVIDIA's PyPI wheels (nvcc, headers, cuBLAS, cuRAND, NVRTC).
#
#   scripts/build_cuda.sh                       # → $CARGO_TARGET_DIR/release/ensemble (default target/)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh   # A100 instead of H100/H200
#   CUDA_ROOT=/usr/local/cuda scripts/build_cuda.sh   # use an installed toolkit instead
#   scripts/build_cuda.sh --example bench_transformer -p deberta   # other cargo targets
#
# Why the details:
# - The CUDA 12 nvcc wheels hold only ptxas; the CUDA 13 ones hold the whole compiler. 13.0 is
#   pinned: cudarc 0.19 knows CUDA up to 13.4, and 13.0 needs the oldest driver (≥ 580).
# - candle links the driver library (libcuda), which only a GPU driver installs. A stub with
#   the same soname and every cu* symbol that cudarc declares satisfies the linker; at run
#   time the real driver's libcuda.so.1 is loaded.
# At run time the wheels' libraries must be on LD_LIBRARY_PATH: the script prints the line.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # 90: H100/H200
VENV=${CUDA_VENV:-/tmp/cuda-wheels-13.0}

if [ -z "${CUDA_ROOT:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' \
        'nvidia-nvvm==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
        'nvidia-cuda-cccl==13.0.*' 'nvidia-cublas<13.1' 'nvidia-curand<10.4.1'
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    CUDA_ROOT="$SITE/nvidia/cu13"
    # Unversioned names for the linker (the wheels ship only libX.so.N).
    for so in "$CUDA_ROOT"/lib/lib*.so.*; do
        ln -sf "$(basename "$so")" "$CUDA_ROOT/lib/$(basename "$so" | sed 's/\.so\..*/.so/')"
    done
    [ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"
fi
LIB="$CUDA_ROOT/lib64"

STUBS=${CUDA_STUBS:-/tmp/cuda-stubs}
if [ ! -e "$LIB/libcuda.so" ] && [ ! -e "$LIB/stubs/libcuda.so" ]; then
    mkdir -p "$STUBS"
    CUDARC=$(cargo metadata --format-version 1 --features cuda | python3 -c '
import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
    grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$(dirname "$CUDARC")/src/driver/sys/mod.rs" |
        sed 's/pub unsafe fn //; s/(//' | sort -u | sed 's/.*/void &(void) {}/' >"$STUBS/libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so" "$STUBS/libcuda.c"
fi

export CUDA_ROOT CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export PATH="$CUDA_ROOT/bin:$PATH"
export LIBRARY_PATH="$LIB:$LIB/stubs:$STUBS:${LIBRARY_PATH:-}"

nvcc --version | tail -n 2
if [ $# -eq 0 ]; then
    set -- --bin ensemble
fi
cargo build --release --features cuda "$@"
echo "built; at run time: export LD_LIBRARY_PATH=$LIB:\$LD_LIBRARY_PATH"
