#!/usr/bin/env bash
# Benchmark of `ensemble cv` on a real preference set: wall time of reading + features and of
# the K-fold CV, peak memory (max RSS) and OOF log loss. Extra arguments go to `ensemble cv`.
#   scripts/bench_cv.sh [DATA_DIR] [-- extra cv flags]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/alpaca-pref}"
shift || true
[ "${1:-}" = "--" ] && shift
out="${BENCH_OUT:-/tmp/ensemble-bench-cv}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/ensemble"
rm -rf "$out" && mkdir -p "$out"
# The run folder is OUT/run: a run replaces its folder whole, so the log lives beside it.
/usr/bin/time -v "$bin" cv --folds 10 \
  --train "$data/train.csv.gz" --test "$data/test.csv.gz" --out "$out/run" "$@" \
  2> "$out/stderr.log" | tail -n 20
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
m = json.load(open(f"{out}/run/metrics.json"))
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/stderr.log").read())
s = m["seconds"]
print(f"rows: {m['train_rows']} train, {m['test_rows']} test; features: {m['features']}")
print(f"read: {s['read']:.1f} s   features: {s['features']:.1f} s   read+features: {s['read'] + s['features']:.1f} s")
c = s["cv_stages"]
print(f"cv ({len(m['folds'])} folds): {s['cv']:.1f} s (binning {c['binning']:.1f}, folds {c['folds']:.1f}, "
      f"test prediction {c['test_prediction']:.1f})   total: {s['total']:.1f} s")
print(f"writing and the rest: {s['total'] - s['read'] - s['features'] - s['cv']:.1f} s")
print("chosen: " + ", ".join(f"{k} = {m['config']['lgbm'][k]}" for k in ("learning_rate", "early_stopping_rounds", "max_bin"))
      + f" (auto: {', '.join(m['auto_keys']) or 'none'}); rounds per fold: "
      + " ".join("/".join(map(str, f["best_iterations"])) for f in m["folds"]))
print(f"peak memory: {int(rss.group(1)) / 1024:.0f} MiB")
print(f"OOF log loss: {m['oof_log_loss']:.4f}   accuracy: {m['oof_accuracy']:.4f}   prior: {m['prior_log_loss']:.4f}")
PY
