#!/usr/bin/env bash
# Builds the CUDA binary of `ensemble` (candle's cuda feature) on a machine without a GPU or a
# system CUDA toolkit, using NVIDIA's PyPI wheels for nvcc, headers and libraries.
#
#   scripts/build_cuda.sh            # → $CARGO_TARGET_DIR/release/ensemble (default target/)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh   # A100 instead of H100
#
# Run the result with `ensemble transformer --device cuda:0 ...` on a machine with a driver;
# the wheels' libraries (cudart, cublas, curand) must be on LD_LIBRARY_PATH there too (the
# script prints the line to use).
set -euo pipefail

VENV=${CUDA_VENV:-/tmp/cuda-wheels}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # 90: H100/H200

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 \
    nvidia-cublas-cu12 nvidia-curand-cu12

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NV="$SITE/nvidia"
# bindgen_cuda and cudarc look for a toolkit root with bin/nvcc, include/ and lib64/.
ROOT=${CUDA_ROOT_DIR:-/tmp/cuda-root}
mkdir -p "$ROOT/bin" "$ROOT/include" "$ROOT/lib64"
ln -sf "$NV/cuda_nvcc/bin/"* "$ROOT/bin/"
for part in cuda_nvcc cuda_runtime cublas curand; do
    [ -d "$NV/$part/include" ] && cp -rs "$NV/$part/include/." "$ROOT/include/" 2>/dev/null || true
    [ -d "$NV/$part/lib" ] && ln -sf "$NV/$part/lib/"* "$ROOT/lib64/"
done
# Link names without the SONAME version suffix.
for lib in cudart cublas cublasLt curand; do
    so=$(ls "$ROOT/lib64/lib$lib.so."* 2>/dev/null | head -n1 || true)
    [ -n "$so" ] && ln -sf "$so" "$ROOT/lib64/lib$lib.so"
done
[ -d "$NV/cuda_nvcc/nvvm" ] && ln -sfn "$NV/cuda_nvcc/nvvm" "$ROOT/nvvm"

export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" CUDA_TOOLKIT_ROOT_DIR="$ROOT"
export PATH="$ROOT/bin:$PATH"
export LIBRARY_PATH="$ROOT/lib64:${LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$ROOT/lib64:${LD_LIBRARY_PATH:-}"

cargo build --release --features cuda --bin ensemble
echo "built; at run time: export LD_LIBRARY_PATH=$ROOT/lib64:\$LD_LIBRARY_PATH"
