#!/usr/bin/env python3
"""Makes the tiny DeBERTa-v3-like fixture model and the reference outputs the Rust tests check.

Run from the repository root:

    python3 -m venv /tmp/tinyvenv
    /tmp/tinyvenv/bin/pip install torch "transformers<5" sentencepiece protobuf
    /tmp/tinyvenv/bin/python scripts/make_tiny_deberta.py

transformers 4.x is pinned because its DebertaV2TokenizerFast converts `spm.model` with
`convert_slow_tokenizer.DebertaV2Converter`, which the Rust tokenizer mirrors.

Writes under tests/fixtures/:
  tiny-deberta/{config.json, model.safetensors, spm.model}   the model folder (no tokenizer.json,
                                                               so Rust must build it from spm.model)
  tiny-deberta-tokenizer.json                                  HF's converted fast tokenizer
  tiny-deberta-pytorch_model.bin                               the same weights as a PyTorch file
  tiny-deberta-expected.json                                   token ids and logits to match
"""
import csv
import json
import os
import random
import shutil
import sys
import tempfile

import sentencepiece as spm
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MODEL_DIR = os.path.join(FIXTURES, "tiny-deberta")
CORPUS = os.path.join(ROOT, "..", "shared", "arena-sample", "train.csv")

TOKEN_CASES = [
    "Hello world!",
    "  Leading and   several    spaces, trailing  ",
    "Tabs\tand\nnew\r\nlines\n\nhere",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and café naïve résumé",
    "Emoji 🙂 and CJK 你好 and symbols ∑ ≠ ≤",
    "What is the capital of France? Paris is the capital.",
    "",
    "[CLS] literal specials [SEP] inside [MASK] text",
    "def f(x):\n    return x ** 2  # square",
]
PAIR_CASES = [("Is it right?", "Yes, it is."), ("One", "Two  three")]
# (prompt, response a, response b): the cross-encoder layout [CLS] p [SEP] a [SEP] b [SEP].
LOGIT_CASES = [
    ("What is 2+2?", "4", "The answer is four."),
    ("Tell me a joke.", "Why did the chicken cross the road?", "No."),
    ("Summarize the text.", " ".join(["long response words"] * 40), "Short one."),
]


def corpus_lines():
    lines = []
    with open(CORPUS, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for column in ("prompt", "response_a", "response_b"):
                for turn in json.loads(row[column]):
                    if turn:
                        lines.extend(t for t in turn.split("\n") if t.strip())
    return lines + TOKEN_CASES


def train_spm(workdir):
    text = os.path.join(workdir, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines()))
    # Special pieces at the ids deberta-v3's spm.model uses; [MASK] is added by the tokenizer.
    spm.SentencePieceTrainer.train(
        input=text,
        model_prefix=os.path.join(workdir, "spm"),
        vocab_size=500,
        model_type="unigram",
        character_coverage=0.9995,
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        normalization_rule_name="nmt_nfkc",
        seed_sentencepiece_size=20000,
        num_threads=1,
    )
    return os.path.join(workdir, "spm.model")


def main():
    torch.manual_seed(0)
    random.seed(0)
    os.makedirs(MODEL_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        shutil.copy(train_spm(workdir), os.path.join(MODEL_DIR, "spm.model"))

    tokenizer = DebertaV2TokenizerFast.from_pretrained(MODEL_DIR)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer.save_pretrained(workdir)
        shutil.copy(os.path.join(workdir, "tokenizer.json"), os.path.join(FIXTURES, "tiny-deberta-tokenizer.json"))
    # from_pretrained may leave converter outputs behind; the folder must hold spm.model only.
    for name in os.listdir(MODEL_DIR):
        if name not in ("spm.model",):
            os.remove(os.path.join(MODEL_DIR, name))

    config = DebertaV2Config(
        vocab_size=512,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=0,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        layer_norm_eps=1e-7,
        pooler_hidden_size=32,
        pooler_dropout=0,
        pooler_hidden_act="gelu",
        num_labels=3,
        pad_token_id=0,
    )
    model = DebertaV2ForSequenceClassification(config)
    # Larger than the default 0.02 init so that the logits depend visibly on every weight.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.3 * torch.randn_like(param))
    model.eval()
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    torch.save(model.state_dict(), os.path.join(FIXTURES, "tiny-deberta-pytorch_model.bin"))

    expected = {"tokens": [], "pairs": [], "logits": []}
    for text in TOKEN_CASES:
        expected["tokens"].append({"text": text, "ids": tokenizer(text)["input_ids"]})
    for first, second in PAIR_CASES:
        expected["pairs"].append({"first": first, "second": second, "ids": tokenizer(first, second)["input_ids"]})

    def plain(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    sequences = [[cls] + plain(p) + [sep] + plain(a) + [sep] + plain(b) + [sep] for p, a, b in LOGIT_CASES]
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    for (p, a, b), sequence, row in zip(LOGIT_CASES, sequences, logits.tolist()):
        expected["logits"].append({"prompt": p, "response_a": a, "response_b": b, "ids": sequence, "logits": row})

    with open(os.path.join(FIXTURES, "tiny-deberta-expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    print("wrote", sorted(os.listdir(MODEL_DIR)), file=sys.stderr)


if __name__ == "__main__":
    main()
