#!/usr/bin/env bash
# Sentence-encoder throughput and peak memory, candle against PyTorch in one run: the first N
# distinct answer texts of alpaca-pref, the same model folder, token budget and batch size,
# both on THREADS cores; then the largest difference between their embeddings.
#   scripts/bench_encoder.sh [MODEL_DIR] [N] [MAX_TOKENS] [BATCH] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/all-MiniLM-L6-v2}"
n="${2:-2000}"
max_tokens="${3:-128}"
batch="${4:-32}"
threads="${5:-2}"
work="${BENCH_OUT:-/tmp/ensemble-bench-encoder}"
[ -f "$model/model.safetensors" ] || scripts/get_minilm.sh "$model"
mkdir -p "$work"
python3 - "$n" "$work/texts.json" <<'PY'
import csv, gzip, json, sys
csv.field_size_limit(1 << 30)
n, out = int(sys.argv[1]), sys.argv[2]
texts, seen = [], set()
with gzip.open("../shared/alpaca-pref/train.csv.gz", "rt", newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
        for column in ("response_a", "response_b"):
            text = "\n\n".join(t or "" for t in json.loads(row[column]))
            if text not in seen:
                seen.add(text)
                texts.append(text)
        if len(texts) >= n:
            break
json.dump(texts[:n], open(out, "w"))
PY
cargo build --release --quiet -p encoder --example bench_encoder
peak() { grep -o 'Maximum resident set size (kbytes): [0-9]*' "$1" | awk '{printf "%.0f MiB", $NF / 1024}'; }
RAYON_NUM_THREADS="$threads" /usr/bin/time -v target/release/examples/bench_encoder \
    "$model" "$work/texts.json" "$max_tokens" "$batch" "$work/candle.json" 2>"$work/candle.time"
echo "  candle peak memory: $(peak "$work/candle.time")"
/usr/bin/time -v python3 scripts/bench_torch_encoder.py \
    "$model" "$work/texts.json" "$max_tokens" "$batch" "$threads" "$work/torch.json" 2>"$work/torch.time"
echo "  pytorch peak memory: $(peak "$work/torch.time")"
python3 - "$work" <<'PY'
import json, sys
a = json.load(open(f"{sys.argv[1]}/candle.json"))
b = json.load(open(f"{sys.argv[1]}/torch.json"))
print("largest embedding difference (first 50 texts):",
      max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)))
PY
