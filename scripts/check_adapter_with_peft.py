#!/usr/bin/env python3
"""Checks an LLM run's fold adapters with Python's peft: each `OUT/fold-K/adapter/` is loaded
by `PeftModel.from_pretrained` on the base model, the test rows are put in the run's template
(fields short enough not to be cut: the check refuses rows that the token budget would cut)
and tokenized with the base's tokenizer.json, the model run in f32 with eager attention (SDPA
drops Gemma-2's soft-capping),
both answer orders are predicted, mirrored and averaged as `ensemble` does, and the result is
compared with `OUT/fold-K/test_logits.csv`. Prints the largest difference per fold and exits
1 if any is above --tolerance.

    python3 scripts/check_adapter_with_peft.py --base tests/fixtures/tiny-llm-qwen2 \\
        --run runs/llm --test short_test.csv

Requirements: torch, transformers, peft (the versions of scripts/make_tiny_llm.py).
"""
import argparse
import csv
import json
import math
import os
import sys

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification


def fields(row):
    """A Kaggle field (a JSON list of turns) joined turn by turn, as `ensemble` joins them."""
    return "\n".join("" if t is None else t for t in json.loads(row))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()
    fold0 = json.load(open(os.path.join(args.run, "fold-0", "fold.json")))
    config = fold0["config"]
    if config.get("padding", "right") != "right":
        sys.exit("the check pads on the right; this run pads on the left")
    template, max_len = config["template"], config["max_len"]
    # The folder's tokenizer.json as ensemble reads it (AutoTokenizer may pick a class that
    # rebuilds the special tokens, as LlamaTokenizerFast does without a tokenizer_config.json).
    tokenizer = Tokenizer.from_file(os.path.join(args.base, "tokenizer.json"))
    with open(args.test, newline="") as f:
        rows = [(r["id"], fields(r["prompt"]), fields(r["response_a"]), fields(r["response_b"]))
                for r in csv.DictReader(f)]

    def ids(prompt, a, b):
        text = template.replace("{prompt}", prompt).replace("{response_a}", a)
        text = text.replace("{response_b}", b)
        encoded = tokenizer.encode(text).ids
        if len(encoded) > max_len // 2:
            sys.exit(f"a row of {len(encoded)} tokens may be cut (max_len {max_len}): use "
                     "shorter rows")
        return encoded

    worst = 0.0
    folds = sorted(d for d in os.listdir(args.run) if d.startswith("fold-"))
    for fold in folds:
        base = AutoModelForSequenceClassification.from_pretrained(
            args.base, num_labels=3, dtype=torch.float32, attn_implementation="eager")
        if base.config.pad_token_id is None:
            base.config.pad_token_id = base.config.eos_token_id
        model = PeftModel.from_pretrained(base, os.path.join(args.run, fold, "adapter")).eval()
        theirs = {}
        with torch.no_grad():
            for id_, prompt, a, b in rows:
                probs = [torch.softmax(model(torch.tensor([ids(prompt, x, y)])).logits[0]
                                       .double(), -1) for x, y in ((a, b), (b, a))]
                given, swapped = probs
                mean = [(given[0] + swapped[1]) / 2, (given[1] + swapped[0]) / 2,
                        (given[2] + swapped[2]) / 2]
                theirs[id_] = [math.log(float(v)) for v in mean]
        with open(os.path.join(args.run, fold, "test_logits.csv"), newline="") as f:
            ours = {r["id"]: [float(r[k]) for k in ("logit_a", "logit_b", "logit_tie")]
                    for r in csv.DictReader(f)}
        difference = max(abs(x - y) for id_ in theirs for x, y in zip(theirs[id_], ours[id_]))
        print(f"{fold}: peft against ensemble's test logits: largest difference {difference:.2e}")
        worst = max(worst, difference)
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
