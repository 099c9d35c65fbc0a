#!/usr/bin/env bash
# Candle's CPU benches beside their PyTorch twins, in rounds, each bench right before its twin
# (this machine's pace drifts, so only one round's pair compares): the LLM member at
# Qwen2.5-0.5B's shape (2 training steps, 3 prediction batches of 512 tokens) and DeBERTa-v3-base
# (2 training steps of 4 rows, prediction of 8 rows), f32, 2 threads on both sides. Prints each
# run's line and candle's speed as a multiple of PyTorch's.
#   scripts/bench_cpu_vs_torch.sh [ROUNDS]
# EXAMPLES: the folder of built bench binaries (default: target/release/examples, built here);
# PYTHON: a Python with torch, transformers and peft (default python3); AVX2=1 holds PyTorch to
# its AVX2 code paths (pair it with benches built without gemm's `x86-v4` feature).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
if [ -z "${EXAMPLES:-}" ]; then
    cargo build --release --quiet -p llm -p deberta --examples
fi
examples="${EXAMPLES:-${CARGO_TARGET_DIR:-target}/release/examples}"
python="${PYTHON:-python3}"
torch_env=()
if [ "${AVX2:-0}" = 1 ]; then
    torch_env=(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2)
fi
llm="--threads 2 --shape qwen2.5-0.5b --max-len 512 --warmup 1"
deberta="--max-len 512 --eval-batch 8 --train-batch 4 --warmup 1 --batches 2"
declare -A benches=(
    [llm-train]="$examples/bench_llm $llm --precision f32 --mode train --train-batch 1 --batches 2|scripts/bench_torch_llm.py $llm --dtype f32 --mode train --train-batch 1 --batches 2"
    [llm-infer]="$examples/bench_llm $llm --precision f32 --mode infer --eval-batch 1 --batches 3|scripts/bench_torch_llm.py $llm --dtype f32 --mode infer --eval-batch 1 --batches 3"
    [deberta-train]="$examples/bench_transformer $deberta --mode train|scripts/bench_torch_deberta.py --device cpu --threads 2 --dtype f32 $deberta --mode train"
    [deberta-infer]="$examples/bench_transformer $deberta --mode infer|scripts/bench_torch_deberta.py --device cpu --threads 2 --dtype f32 $deberta --mode infer"
)
# The "in S s = ... peak ... MiB" part of a bench's summary line; fails when there is none.
seconds_line() {
    grep -o 'in [0-9.]* s = [0-9.]* sequences/s, peak[^,]* [0-9.]* MiB' <<<"$1" | head -1 | grep .
}
for round in $(seq 1 "$rounds"); do
    echo "round $round, $(date -u +%T) UTC"
    for name in llm-train llm-infer deberta-train deberta-infer; do
        IFS='|' read -r candle torch <<<"${benches[$name]}"
        candle_out=$(RAYON_NUM_THREADS=2 $candle 2>&1) || { echo "$name: candle failed:"; echo "$candle_out" | tail -5; exit 1; }
        torch_out=$(env "${torch_env[@]}" "$python" $torch 2>&1) || { echo "$name: PyTorch failed:"; echo "$torch_out" | tail -5; exit 1; }
        candle_line=$(seconds_line "$candle_out")
        torch_line=$(seconds_line "$torch_out")
        ratio=$(awk -v c="$candle_line" -v t="$torch_line" 'BEGIN {
            split(c, a, " "); split(t, b, " "); printf "%.2f", b[2] / a[2] }')
        printf '  %-14s candle %s\n  %-14s torch  %s\n  %-14s candle/PyTorch speed %s×\n' \
            "$name" "$candle_line" "" "$torch_line" "" "$ratio"
    done
done
