#!/usr/bin/env bash
# Runs examples/kaggle/ensemble-submission.ipynb as a Kaggle notebook would run it, on the CPU,
# with no package index, and checks the submission it writes. Exits 0 only then.
#
#   scripts/try_kaggle_notebook.sh            # the newest CPU wheel in dist/ (scripts/package.sh)
#   WHEEL=dist/arena_ensemble-….whl scripts/try_kaggle_notebook.sh
#
# It lays out Kaggle's folders under target/try-kaggle/ (kept for a look afterwards):
#   kaggle/input/ensemble-wheels/                  the wheel
#   kaggle/input/llm-classification-finetuning/    ../shared/arena-sample's train.csv, test.csv
#   kaggle/input/ensemble-runs/                    lgbm/, deberta/, llm/, blend/blend.json,
#                                                  trained "elsewhere": by the same wheel in
#                                                  another virtualenv, with the tiny DeBERTa
#                                                  and Qwen2 fixtures
#   kaggle/input/gemma-2-9b-it/                    the tiny Qwen2 fixture, standing in for the
#                                                  LLM's base model under the notebook's name
#   kaggle/working/                                what the notebook writes
# then executes the notebook with nbclient in a fresh virtualenv (Jupyter's kernel from PyPI,
# as Kaggle's image has it), the notebook installs the wheel itself with --no-index, and
# scripts/check_submission.py checks kaggle/working/submission.csv: every test id once, rows
# summing to 1. Twice: on this machine as it is (no GPU, or the CPU wheel on one), and with a
# GPU present but unusable, `nvidia-smi` stubbed by a script on PATH that describes a P100
# (compute capability 6.0): the notebook must say so, fall back to the CPU and still write the
# submission. Each executed notebook is kept as target/try-kaggle/executed-*.ipynb. Prints the
# seconds of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
say() { echo "try_kaggle_notebook: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}
wheel=${WHEEL:-$(ls -t dist/arena_ensemble-*-py3-none-manylinux_*_x86_64.whl 2>/dev/null | head -n1 || true)}
[ -n "$wheel" ] && [ -f "$wheel" ] || fail "no CPU wheel in dist/: run scripts/package.sh first"
sample=../shared/arena-sample
[ -f "$sample/train.csv" ] || fail "needs $sample (the Kaggle sample rows next to the checkout)"
PYTHON=${PYTHON:-python3}

work="$repo/target/try-kaggle"
rm -rf "$work"
input="$work/kaggle/input"
working="$work/kaggle/working"
data="$input/llm-classification-finetuning"
runs="$input/ensemble-runs"
mkdir -p "$input/ensemble-wheels" "$data" "$runs" "$working"
cp "$wheel" "$input/ensemble-wheels/"
cp "$sample/train.csv" "$sample/test.csv" "$data/"

step() { # name, command...
    local start=$SECONDS
    "${@:2}" || fail "$1 failed"
    say "$1: $((SECONDS - start)) s"
}
# The runs a competitor trains elsewhere and uploads: the same wheel in its own virtualenv.
step "install the wheel elsewhere" bash -c "'$PYTHON' -m venv '$work/elsewhere' &&
    '$work/elsewhere/bin/pip' install -q --no-index '$wheel'"
E="$work/elsewhere/bin/ensemble"
step "cv elsewhere" "$E" cv --folds 5 --threads 2 --train "$data/train.csv" --test "$data/test.csv" \
    --out "$runs/lgbm"
step "transformer elsewhere" "$E" transformer --model tests/fixtures/tiny-deberta \
    --train "$data/train.csv" --test "$data/test.csv" --folds-file "$runs/lgbm/folds.csv" \
    --out "$runs/deberta" --max-len 128 --epochs 1 --save-models
cp -r tests/fixtures/tiny-llm-qwen2 "$input/gemma-2-9b-it"
step "LLM member elsewhere" "$E" transformer --model "$input/gemma-2-9b-it" \
    --train "$data/train.csv" --test "$data/test.csv" --folds-file "$runs/lgbm/folds.csv" \
    --out "$runs/llm" --max-len 128 --epochs 1
step "blend elsewhere" "$E" blend --members "$runs/lgbm" "$runs/deberta" "$runs/llm" \
    --train "$data/train.csv" --out "$runs/blend/submission.csv"

# The notebook's kernel: a fresh virtualenv with Jupyter's kernel, and no ensemble in it.
step "make the kernel's virtualenv" bash -c "'$PYTHON' -m venv '$work/kernel' &&
    '$work/kernel/bin/pip' install -q nbclient nbformat ipykernel"
# Runs the notebook in an empty kaggle/working with PATH $1 (before the kernel's and the
# system's) and writes the executed notebook to $work/executed-$2.ipynb.
run_notebook() {
    rm -rf "$working"
    mkdir -p "$working"
    env -u LD_LIBRARY_PATH KAGGLE_INPUT="$input" KAGGLE_WORKING="$working" \
        PATH="$1$work/kernel/bin:/usr/bin:/bin" "$work/kernel/bin/python" - "$repo" "$working" \
        "$work/executed-$2.ipynb" <<'EOF'
import sys
import nbclient
import nbformat

repo, working, executed = sys.argv[1], sys.argv[2], sys.argv[3]
notebook = nbformat.read(f"{repo}/examples/kaggle/ensemble-submission.ipynb", as_version=4)
try:
    nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": working}}).execute()
finally:
    nbformat.write(notebook, executed)
EOF
}
# The device line the executed notebook $1 printed.
device_line() {
    "$PYTHON" - "$1" <<'EOF'
import json, sys
for cell in json.load(open(sys.argv[1]))["cells"]:
    for output in cell.get("outputs", []):
        for line in "".join(output.get("text", "")).splitlines():
            if line.startswith("transformer device:"):
                print(line)
EOF
}

step "run the notebook" run_notebook "" as-is
step "check the submission" "$PYTHON" scripts/check_submission.py "$data/test.csv" \
    "$working/submission.csv"
say "as is: $(device_line "$work/executed-as-is.ipynb")"

# A GPU that nvidia-smi lists but the kernels cannot use (Kaggle's P100).
stub="$work/stub-bin"
mkdir -p "$stub"
cat >"$stub/nvidia-smi" <<'EOF'
#!/bin/sh
# nvidia-smi on a machine with a Tesla P100 (compute capability 6.0).
case "$*" in
*--query-gpu=name,compute_cap*) echo "Tesla P100-PCIE-16GB, 6.0" ;;
*) echo "GPU 0: Tesla P100-PCIE-16GB (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
esac
EOF
chmod +x "$stub/nvidia-smi"
step "run the notebook with a P100's nvidia-smi" run_notebook "$stub:" p100
step "check the submission (P100)" "$PYTHON" scripts/check_submission.py "$data/test.csv" \
    "$working/submission.csv"
line=$(device_line "$work/executed-p100.ipynb")
[[ $line == "transformer device: cpu ("*"Tesla P100-PCIE-16GB has compute capability 6.0"* ]] ||
    fail "with a P100's nvidia-smi the notebook printed: ${line:-no device line}"
say "P100: $line"
say "ok: both runs wrote a valid submission (executed notebooks: $work/executed-*.ipynb)"
