#!/usr/bin/env bash
# LightGBM's OpenMP threads on an idle and on a busy machine: `ensemble cv` boosting time on a
# small and a large training set, under each OpenMP wait setting, with and without two
# CPU-bound processes beside it (the "busy" case: as many spinning hogs as cores).
#   scripts/bench_threads.sh [DATA_DIR]
# SETTINGS lists the environments to try as NAME=VAR=VALUE words (NAME= alone: none); the
# default compares the tool's own choice with libgomp's defaults and OMP_WAIT_POLICY=PASSIVE.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/alpaca-pref}"
out="${BENCH_OUT:-/tmp/ensemble-bench-threads}"
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
fi
bin="${BIN:-${CARGO_TARGET_DIR:-target}/release/ensemble}"
rm -rf "$out" && mkdir -p "$out"
# The first 2,400 and 8,000 battles of the training file.
python3 - "$data/train.csv.gz" "$out" <<'PY'
import csv, gzip, sys
csv.field_size_limit(1 << 30)
source, out = sys.argv[1], sys.argv[2]
with gzip.open(source, "rt", newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
for name, n in (("small", 2400), ("large", 8000)):
    with open(f"{out}/{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[: n + 1])
PY
settings=(${SETTINGS:-tool-choice= passive=OMP_WAIT_POLICY=PASSIVE libgomp-default=ENSEMBLE_OPENMP_AS_IS=1})
printf '%-8s %-6s %-28s %8s %8s\n' data load setting "CV s" "OOF"
for size in small large; do
    for load in idle busy; do
        pids=()
        if [ "$load" = busy ]; then
            for _ in $(seq "$(nproc)"); do
                (while :; do :; done) &
                pids+=($!)
            done
        fi
        for setting in "${settings[@]}"; do
            name=${setting%%=*}
            assignment=${setting#*=}
            run="$out/$size-$load-$name"
            # shellcheck disable=SC2086
            env $assignment "$bin" cv --folds 10 --train "$out/$size.csv" --out "$run" \
                >"$run.log" 2>&1
            python3 - "$run/metrics.json" "$size" "$load" "$name" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<8} {sys.argv[3]:<6} {sys.argv[4]:<28} {m['seconds']['cv']:8.1f} {m['oof_log_loss']:8.4f}")
PY
        done
        [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
        wait 2>/dev/null || true
    done
done
