#!/usr/bin/env bash
# Honest against optimistic protocols: how far each variant's OOF log loss is from the log loss
# on prompts no fold has seen. Splits alpaca-pref's train.csv.gz by prompt (a fifth of the
# prompts held out, with their labels kept aside), runs `ensemble cv --group-by prompt` on the
# rest once per variant (same folds), scores each submission on the held-out prompts, and
# pairs each variant's folds with the first's (`ensemble compare`).
#   scripts/bench_oof_honesty.sh [DATA_DIR] [-- extra cv flags for every variant]
# Variants are NAME=FLAGS words in VARIANTS (default: inner-fold and held-out stopping), e.g.
#   VARIANTS="inner-fold= same-rounds=--refit_same-rounds" (an underscore stands for a space).
# PER_PROMPT=N keeps at most N training battles per prompt (the first in file order): a small
# training set on the same held-out prompts. BIN=PATH runs another build of ensemble.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/alpaca-pref}"
shift || true
[ "${1:-}" = "--" ] && shift
out="${BENCH_OUT:-/tmp/ensemble-bench-honesty}"
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
fi
bin="${BIN:-${CARGO_TARGET_DIR:-target}/release/ensemble}"
rm -rf "$out" && mkdir -p "$out"

python3 - "$data/train.csv.gz" "$out" "${PER_PROMPT:-0}" <<'PY'
import csv, gzip, hashlib, sys
from collections import Counter
csv.field_size_limit(1 << 30)
source, out, per_prompt = sys.argv[1], sys.argv[2], int(sys.argv[3])
kept = Counter()
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
        elif per_prompt == 0 or kept[row[prompt]] < per_prompt:
            kept[row[prompt]] += 1
            tr.writerow(row)
PY

variants=(${VARIANTS:-inner-fold=--early-stopping-on_inner-fold held-out=--early-stopping-on_held-out})
names=()
for variant in "${variants[@]}"; do
    name=${variant%%=*}
    flags=${variant#*=}
    names+=("$name")
    folds=()
    [ ${#names[@]} -gt 1 ] && folds=(--folds-file "$out/${names[0]}/folds.csv") || folds=(--folds 10 --group-by prompt)
    # shellcheck disable=SC2086
    "$bin" cv "${folds[@]}" ${flags//_/ } \
        --train "$out/train.csv" --test "$out/test.csv" --out "$out/$name" "$@" \
        >"$out/$name.log" 2>&1
done

python3 - "$out" "${names[@]}" <<'PY'
import csv, json, math, sys
from collections import defaultdict
csv.field_size_limit(1 << 30)
out, names = sys.argv[1], sys.argv[2:]
keys = ("winner_model_a", "winner_model_b", "winner_tie")
labels = {r["id"]: [float(r[k]) for k in keys] for r in csv.DictReader(open(f"{out}/test_labels.csv"))}
prompt = {r["id"]: r["prompt"] for r in csv.DictReader(open(f"{out}/test.csv"))}
def row_losses(mode):
    losses = {}
    for r in csv.DictReader(open(f"{out}/{mode}/submission.csv")):
        p = [float(r[k]) for k in keys]
        losses[r["id"]] = -sum(t * math.log(min(max(q, 1e-15), 1 - 1e-15)) for t, q in zip(labels[r["id"]], p))
    return losses
# Held-out rows share prompts, so the paired difference's standard error is taken over prompts
# (cluster-robust), not rows.
def paired(base, new):
    sums, sizes = defaultdict(float), defaultdict(int)
    for i in base:
        sums[prompt[i]] += new[i] - base[i]
        sizes[prompt[i]] += 1
    n, g = len(base), len(sums)
    mean = sum(sums.values()) / n
    var = g / (g - 1) * sum((sums[p] - sizes[p] * mean) ** 2 for p in sums) / n**2
    return mean, math.sqrt(var)
print(f"{'variant':<18} {'OOF log loss':>12} {'held-out prompts':>16} {'gap':>8} {'Δ held-out ± s.e.':>20} {'rounds':>9} {'CV s':>6}")
base = row_losses(names[0])
for mode in names:
    m = json.load(open(f"{out}/{mode}/metrics.json"))
    losses = row_losses(mode)
    loss = sum(losses.values()) / len(losses)
    delta, se = paired(base, losses)
    rounds = [r for f in m["folds"] for r in f.get("refit_rounds") or f["best_iterations"]]
    print(f"{mode:<18} {m['oof_log_loss']:>12.4f} {loss:>16.4f} {loss - m['oof_log_loss']:>+8.4f} "
          f"{f'{delta:+.4f} ± {se:.4f}':>20} {min(rounds):>4}-{max(rounds):<4} {m['seconds']['cv']:>6.1f}")
print(f"{m['train_rows']} training rows, {len(labels)} held-out rows on {len(set(prompt.values()))} unseen prompts")
PY
"$bin" compare "${names[@]/#/$out/}"
