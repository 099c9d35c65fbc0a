#!/usr/bin/env bash
# Peak host memory of `transformer --predict-only --int8-base` (the LLM member's 8-bit
# prediction) against the base's bf16 weight bytes, on the CPU, where host memory stands for
# a GPU's. Each binary trains fold 0 on a few arena rows (so that it has an adapter, in its own
# run folder), then predicts it again in 8 bits under /usr/bin/time.
#
#   python3 scripts/make_random_llm.py --shape gemma-2-2b --layers 8 --out /tmp/gemma2-2b-8l
#   scripts/bench_int8_memory.sh /tmp/gemma2-2b-8l target/release/ensemble [OTHER_BINARY ...]
#
# Needs ../shared/arena-sample. Prints one line per binary.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
shift
sample=../shared/arena-sample
[ -f "$sample/train.csv" ] || { echo "no $sample/train.csv" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The first 9 training rows and the 3 test rows: enough for a fold, small enough to train fast.
python3 - "$sample/train.csv" "$work/train.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="")))
csv.writer(open(sys.argv[2], "w", newline="")).writerows(rows[:10])
PY
weights=$(python3 - "$model" <<'PY'
import json, os, struct, sys
total = 0
for name in os.listdir(sys.argv[1]):
    if name.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], name), "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for key, t in header.items():
            if key != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                total += 2 * n  # bytes in bf16
print(total)
PY
)
for binary in "$@"; do
    out="$work/run-$(basename "$binary")-$RANDOM"
    common=(transformer --model "$model" --train "$work/train.csv" --test "$sample/test.csv"
        --out "$out" --folds 3 --max-len 96 --epochs 1 --fold 0)
    "$binary" "${common[@]}" 2>"$work/train.log" ||
        { cat "$work/train.log" >&2; exit 1; }
    /usr/bin/time -v "$binary" "${common[@]}" --predict-only --int8-base 2>"$work/predict.log" ||
        { cat "$work/predict.log" >&2; exit 1; }
    peak_kib=$(grep "Maximum resident set size" "$work/predict.log" | awk '{print $NF}')
    seconds=$(grep "Elapsed (wall clock)" "$work/predict.log" | awk '{print $NF}')
    python3 - "$binary" "$peak_kib" "$weights" "$seconds" <<'PY'
import sys
binary, peak_kib, weights, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
peak = peak_kib * 1024
print(f"{binary}: --predict-only --int8-base peak RSS {peak / 2**20:,.0f} MiB = "
      f"{peak / weights:.2f}x the bf16 weights ({weights / 2**20:,.0f} MiB), wall {seconds}")
PY
done
