#!/usr/bin/env bash
# Candle beside PyTorch on one GPU: training and inference sequences per second and peak
# memory of a deberta-v3-base-sized random model at 512 tokens (bf16, f16, f32), and of the
# LLM member in Qwen2.5-0.5B's shape with LoRA r 16 against PyTorch + PEFT (the same, plus
# 8-bit base weights in prediction), same batches and steps. Run on the GPU machine from the
# repository root:
#
#   scripts/bench_gpu.sh [BENCH_BINARY [LLM_BENCH_BINARY]]
#
# BENCH_BINARY is the bench_transformer example built with CUDA, by
# `scripts/build_cuda.sh --example bench_transformer -p deberta` (default
# target/release/examples/bench_transformer); LLM_BENCH_BINARY the bench_llm example, by
# `scripts/build_cuda.sh --example bench_llm -p llm` (default target/release/examples/bench_llm;
# its rows are skipped when it is not there). The binary opens cuBLAS and cuRAND of the major
# version it was built with at run time (neural/src/cuda_libraries.rs); an example binary is
# not inside a Python environment, so LD_LIBRARY_PATH gets the Python environment's NVIDIA
# wheels, the ones PyTorch brings, after whatever it already holds. Writes bench_gpu.log and
# prints a table. BENCH_ARGS adds flags to both sides, later ones win (e.g. "--batches 10");
# BENCH_DEVICE=cpu runs the same comparison on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/examples/bench_transformer}
LLM_BIN=${2:-target/release/examples/bench_llm}
PY=${PYTHON:-python3}
LOG=${BENCH_LOG:-bench_gpu.log}
DEVICE=${BENCH_DEVICE:-cuda}
COMMON="--max-len 512 --train-batch 8 --eval-batch 32 --warmup 2 --batches 5 ${BENCH_ARGS:-}"
LLM_COMMON="--shape qwen2.5-0.5b --lora-r 16 --max-len 512 --train-batch 4 --eval-batch 8 --warmup 2 --batches 5 ${BENCH_ARGS:-}"

WHEEL_LIBS=$("$PY" -c '
import glob, os, sysconfig
root = os.path.join(sysconfig.get_paths()["purelib"], "nvidia")
print(":".join(sorted(glob.glob(os.path.join(root, "**", "lib"), recursive=True))))')
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$WHEEL_LIBS"

# One measurement on both sides, same flags: a candle bench binary (--precision) and its
# PyTorch twin (--dtype). Arguments: binary, script, precision, then the flags for both.
pair() {
    local bin=$1 script=$2 precision=$3
    shift 3
    "$bin" --device "$DEVICE" --precision "$precision" "$@"
    "$PY" "$script" --device "$DEVICE" --dtype "$precision" "$@"
}

# shellcheck disable=SC2086 # COMMON and LLM_COMMON are lists of flags
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    for precision in bf16 f16 f32; do
        pair "$BIN" scripts/bench_torch_deberta.py "$precision" $COMMON
    done
    # Training with gradient checkpointing, f16 (the T4 configuration).
    pair "$BIN" scripts/bench_torch_deberta.py f16 --mode train --gradient-checkpointing $COMMON
    if [ -x "$LLM_BIN" ]; then
        for precision in bf16 f16 f32; do
            pair "$LLM_BIN" scripts/bench_torch_llm.py "$precision" $LLM_COMMON
        done
        pair "$LLM_BIN" scripts/bench_torch_llm.py bf16 --mode train --gradient-checkpointing \
            $LLM_COMMON
        # 8-bit base weights: candle only (PEFT has no Q8_0 path to compare with).
        "$LLM_BIN" --device "$DEVICE" --precision f16 --mode infer --eight-bit $LLM_COMMON
    else
        echo "no $LLM_BIN: the LLM rows are skipped"
    fi
} 2>&1 | tee "$LOG"

"$PY" - "$LOG" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    if line.startswith("JSON "):
        r = json.loads(line[5:])
        dtype = r["dtype"].lower() + (" +ckpt" if r.get("gradient_checkpointing") else "")
        dtype += " int8" if r.get("eight_bit") else ""
        # The LLM benches name their shape; the DeBERTa ones are deberta-v3-base-sized.
        model = r.get("shape", "deberta-v3-base")
        framework = "pytorch" if r["framework"] in ("torch", "pytorch") else "candle"
        rows[(model, r["mode"], dtype, framework)] = (r["sequences_per_s"], r["peak_mib"])
print("\n| model | mode | precision | candle seq/s | PyTorch seq/s | candle / PyTorch | candle peak MiB | PyTorch peak MiB |")
print("|---|---|---|---|---|---|---|---|")
for model in ("deberta-v3-base", "qwen2.5-0.5b"):
    for mode in ("train", "infer"):
        for dtype in ("bf16", "f16", "f32", "f16 +ckpt", "bf16 +ckpt", "f16 int8"):
            c = rows.get((model, mode, dtype, "candle"))
            t = rows.get((model, mode, dtype, "pytorch"))
            if not c and not t:
                continue
            ratio = f"{c[0] / t[0]:.2f}" if c and t else "n/a"
            fmt = lambda v, i: f"{v[i]:.1f}" if v else "n/a"
            print(f"| {model} | {mode} | {dtype} | {fmt(c, 0)} | {fmt(t, 0)} | {ratio} | {fmt(c, 1)} | {fmt(t, 1)} |")
EOF
