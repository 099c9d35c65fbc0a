#!/usr/bin/env bash
# Honest against peeking early stopping: how far each protocol's OOF log loss is from the log
# loss on prompts no fold has seen. Splits alpaca-pref's train.csv.gz by prompt (a fifth of
# the prompts held out, with their labels kept aside), runs `ensemble cv --group-by prompt`
# on the rest with --early-stopping-on inner-fold and held-out, and scores both submissions.
#   scripts/bench_oof_honesty.sh [DATA_DIR] [-- extra cv flags]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/alpaca-pref}"
shift || true
[ "${1:-}" = "--" ] && shift
out="${BENCH_OUT:-/tmp/ensemble-bench-honesty}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/ensemble"
rm -rf "$out" && mkdir -p "$out"

python3 - "$data/train.csv.gz" "$out" <<'PY'
import csv, gzip, hashlib, sys
csv.field_size_limit(1 << 30)
source, out = sys.argv[1], sys.argv[2]
with gzip.open(source, "rt", newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = list(reader)
prompt = header.index("prompt")
held = lambda row: int(hashlib.sha256(row[prompt].encode()).hexdigest(), 16) % 5 == 0
test_columns = [header.index(c) for c in ("id", "prompt", "response_a", "response_b")]
label_columns = [header.index(c) for c in ("id", "winner_model_a", "winner_model_b", "winner_tie")]
with open(f"{out}/train.csv", "w", newline="") as tr, open(f"{out}/test.csv", "w", newline="") as te, \
        open(f"{out}/test_labels.csv", "w", newline="") as la:
    tr, te, la = csv.writer(tr), csv.writer(te), csv.writer(la)
    tr.writerow(header)
    te.writerow([header[c] for c in test_columns])
    la.writerow([header[c] for c in label_columns])
    for row in rows:
        if held(row):
            te.writerow([row[c] for c in test_columns])
            la.writerow([row[c] for c in label_columns])
        else:
            tr.writerow(row)
PY

for mode in inner-fold held-out; do
    "$bin" cv --folds 10 --group-by prompt --early-stopping-on "$mode" \
        --train "$out/train.csv" --test "$out/test.csv" --out "$out/$mode" "$@" \
        >"$out/$mode.log" 2>&1
done

python3 - "$out" <<'PY'
import csv, json, math, sys
out = sys.argv[1]
labels = {r["id"]: [float(r[k]) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
          for r in csv.DictReader(open(f"{out}/test_labels.csv"))}
print(f"{'early stopping on':<18} {'OOF log loss':>12} {'held-out prompts':>16} {'gap':>8} {'rounds':>9} {'CV s':>6}")
for mode in ("inner-fold", "held-out"):
    m = json.load(open(f"{out}/{mode}/metrics.json"))
    loss = 0.0
    for r in csv.DictReader(open(f"{out}/{mode}/submission.csv")):
        p = [float(r[k]) for k in ("winner_model_a", "winner_model_b", "winner_tie")]
        y = labels[r["id"]]
        loss -= sum(t * math.log(min(max(q, 1e-15), 1 - 1e-15)) for t, q in zip(y, p))
    loss /= len(labels)
    rounds = [f["best_iteration"] for f in m["folds"]]
    print(f"{mode:<18} {m['oof_log_loss']:>12.4f} {loss:>16.4f} {loss - m['oof_log_loss']:>+8.4f} "
          f"{min(rounds):>4}-{max(rounds):<4} {m['seconds']['cv']:>6.1f}")
print(f"{m['train_rows']} training rows, {len(labels)} held-out rows on unseen prompts")
PY
