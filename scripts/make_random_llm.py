#!/usr/bin/env python3
"""Makes a Hugging Face model folder of a real decoder LLM's shape with random bf16 weights.

For measuring the LLM member's memory and speed on a real model's shape without downloading the
model: the folder has the real config.json (vocabulary, widths, heads, head_dim, RoPE, Gemma-2's
sliding window and soft-capping, ...) with as many layers as asked, the tensor names and shapes
that transformers saves for the family's *ForCausalLM, and the tokenizer of the matching tiny test
fixture (tests/fixtures/tiny-llm-<family>/), whose few hundred tokens fit in any real vocabulary.
The weights are random, so predictions and losses mean nothing; time and memory do.

Usage (from the repository root; Python 3.9+, standard library, numpy used when importable):

    python3 scripts/make_random_llm.py --shape gemma-2-2b --layers 8 --out /tmp/gemma2-2b-8l

    --shape     gemma-2-2b, gemma-2-9b, gemma-2-27b, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b,
                llama-3-8b, llama-3.1-8b (config.json values of the Hugging Face checkpoints)
    --layers N  num_hidden_layers (default: the real model's); the vocabulary stays full
    --seed S    the random weights' seed (default 0)
    --shard-mib M  shards of at most M MiB (default 2000), named model-0000K-of-0000N.safetensors
                with model.safetensors.index.json, as transformers shards; one model.safetensors
                when everything fits in one
    --with-score   a *ForSequenceClassification save instead: a random score.weight [3, hidden],
                id2label/label2id of the fixture's 3 classes, and no lm_head.weight
    --pure-python  draw without numpy even when it is importable (see "Weights" below)
    --force     write into a non-empty folder (its model*.safetensors files are replaced)

Weights: matrices Normal(0, 0.02) (transformers' initializer_range), biases zeros (as transformers
initialises them), RMSNorm weights ones for Qwen2/Llama and zeros for Gemma-2 (Gemma's norm
multiplies by 1 + w). float32 draws become bf16 by rounding to nearest, ties to even, on the upper
16 bits. With numpy every value is an independent draw (numpy.random.default_rng(seed)). Without
numpy, drawing 10^9 values one by one in Python would take an hour, so a pool of 2^20 independent
Normal(0, 0.02) values is drawn once (random.Random(seed).gauss) and each block of 2^16 values is
a window of the pool at a random offset, each value's sign flipped at random: the right marginal
distribution, but not independent draws, which is fine for measuring memory and speed. The two
ways give different (each deterministic) bytes for one seed.

Memory: the safetensors header is written first (offsets computed from the shapes), then each
tensor's bytes are streamed in blocks of at most 2^20 values; nothing larger is ever held.
"""
import argparse
import array
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

try:
    import numpy
except ImportError:  # the standard-library way below
    numpy = None

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
STD = 0.02

# The checkpoints' config.json values (Hugging Face hub, transformers 4.x keys). Token ids are
# replaced by the tiny fixture tokenizer's (see token_ids).
GEMMA2_COMMON = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "cache_implementation": "hybrid",
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 256000,
}
QWEN2_COMMON = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "qwen2",
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
LLAMA3_COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}
SHAPES = {
    "gemma-2-2b": dict(GEMMA2_COMMON, hidden_size=2304, intermediate_size=9216,
                       num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4),
    "gemma-2-9b": dict(GEMMA2_COMMON, hidden_size=3584, intermediate_size=14336,
                       num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8),
    "gemma-2-27b": dict(GEMMA2_COMMON, hidden_size=4608, intermediate_size=36864,
                        num_hidden_layers=46, num_attention_heads=32, num_key_value_heads=16,
                        head_dim=128, query_pre_attn_scalar=144),
    "qwen2.5-0.5b": dict(QWEN2_COMMON, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, max_window_layers=24,
                         sliding_window=32768, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(QWEN2_COMMON, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=131072, max_window_layers=28,
                         sliding_window=131072, tie_word_embeddings=True),
    "qwen2.5-7b": dict(QWEN2_COMMON, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=131072, max_window_layers=28,
                       sliding_window=131072, tie_word_embeddings=False, vocab_size=152064),
    "llama-3-8b": dict(LLAMA3_COMMON, max_position_embeddings=8192, rope_scaling=None),
    "llama-3.1-8b": dict(LLAMA3_COMMON, max_position_embeddings=131072, rope_scaling={
        "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
}
FIXTURE_OF = {"gemma2": "tiny-llm-gemma2", "qwen2": "tiny-llm-qwen2", "llama": "tiny-llm-llama"}
CLASS_NAMES = {
    "gemma2": "Gemma2ForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "llama": "LlamaForSequenceClassification",
}

BLOCK = 1 << 20  # values drawn at once (numpy)
POOL = 1 << 20  # the standard-library way's pool of draws
WINDOW = 1 << 16  # and its windows


def tensors_of(config, with_score):
    """(name, shape, kind) in the order they are written; kind is normal, zeros or ones."""
    family = config["model_type"]
    hidden = config["hidden_size"]
    inter = config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim", hidden // heads)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    norm = "zeros" if family == "gemma2" else "ones"
    qkv_bias = family == "qwen2" or config.get("attention_bias", False)
    o_bias = family != "qwen2" and config.get("attention_bias", False)
    out = [("model.embed_tokens.weight", [config["vocab_size"], hidden], "normal")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", [hidden], norm))
        for name, dim in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            out.append((p + f"self_attn.{name}.weight", [dim, hidden], "normal"))
            if qkv_bias:
                out.append((p + f"self_attn.{name}.bias", [dim], "zeros"))
        out.append((p + "self_attn.o_proj.weight", [hidden, q_dim], "normal"))
        if o_bias:
            out.append((p + "self_attn.o_proj.bias", [hidden], "zeros"))
        out.append((p + "post_attention_layernorm.weight", [hidden], norm))
        if family == "gemma2":
            out.append((p + "pre_feedforward_layernorm.weight", [hidden], norm))
        out.append((p + "mlp.gate_proj.weight", [inter, hidden], "normal"))
        out.append((p + "mlp.up_proj.weight", [inter, hidden], "normal"))
        out.append((p + "mlp.down_proj.weight", [hidden, inter], "normal"))
        if family == "gemma2":
            out.append((p + "post_feedforward_layernorm.weight", [hidden], norm))
    out.append(("model.norm.weight", [hidden], norm))
    if with_score:
        out.append(("score.weight", [3, hidden], "normal"))
    elif not config.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [config["vocab_size"], hidden], "normal"))
    return out


def count(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def bf16_of_u32(u):
    """bf16 bits of float32 bits `u`: round to nearest, ties to even (values are finite)."""
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


class NumpyDraws:
    """Independent Normal(0, 0.02) draws, as little-endian bf16 bytes."""

    def __init__(self, seed):
        self.rng = numpy.random.default_rng(seed)

    def blocks(self, n):
        while n > 0:
            k = min(n, BLOCK)
            u = (self.rng.standard_normal(k, dtype=numpy.float32) * numpy.float32(STD)).view(numpy.uint32)
            u = bf16_of_u32(u).astype("<u2")
            yield u.tobytes()
            n -= k


class PoolDraws:
    """Normal(0, 0.02) values as little-endian bf16 bytes without numpy: windows of a pool of
    independent draws at random offsets, each sign flipped at random (see the module's doc)."""

    SIGN = bytes((b & 0x80) for b in range(256))

    def __init__(self, seed):
        self.rng = random.Random(seed)
        values = array.array("f", (self.rng.gauss(0.0, STD) for _ in range(POOL)))
        u32 = array.array("I")
        assert u32.itemsize == 4
        u32.frombytes(values.tobytes())
        bits = array.array("H", (bf16_of_u32(u) for u in u32))
        if sys.byteorder != "little":
            bits.byteswap()
        pool = bits.tobytes()
        self.pool = pool + pool[: 2 * WINDOW]  # a window may start anywhere

    def blocks(self, n):
        mask = bytearray(2 * WINDOW)
        while n > 0:
            k = min(n, WINDOW)
            start = 2 * self.rng.randrange(POOL)
            window = self.pool[start : start + 2 * k]
            mask[1 : 2 * k : 2] = self.rng.randbytes(k).translate(self.SIGN)
            flipped = int.from_bytes(window, "little") ^ int.from_bytes(mask[: 2 * k], "little")
            yield flipped.to_bytes(2 * k, "little")
            n -= k


def constant_blocks(n, value_bits):
    one = value_bits.to_bytes(2, "little")
    while n > 0:
        k = min(n, BLOCK)
        yield one * k
        n -= k


def plan_shards(tensors, shard_bytes):
    """Greedy as transformers shards: a new shard when the next tensor would overflow this one."""
    shards, size = [[]], 0
    for t in tensors:
        nbytes = 2 * count(t[1])
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def write_safetensors(path, tensors, draws):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in tensors:
        nbytes = 2 * count(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # as the safetensors library pads it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, shape, kind in tensors:
            n = count(shape)
            if kind == "normal":
                blocks = draws.blocks(n)
            else:
                blocks = constant_blocks(n, 0x3F80 if kind == "ones" else 0)
            for block in blocks:
                f.write(block)
        written = f.tell()
    assert written == 8 + len(text) + offset, (path, written)
    return offset


def fixture_config(family):
    return json.loads((FIXTURES / FIXTURE_OF[family] / "config.json").read_text())


def token_ids(config, fixture):
    """bos/eos/pad as the tiny tokenizer has them; a pad id only where the fixture has one."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config.pop(key, None)
        if fixture.get(key) is not None:
            config[key] = fixture[key]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, help="num_hidden_layers (default: the model's)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-mib", type=float, default=2000.0)
    parser.add_argument("--with-score", action="store_true")
    parser.add_argument("--pure-python", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()

    config = dict(SHAPES[args.shape])
    if args.layers is not None:
        if args.layers < 1:
            parser.error("--layers must be at least 1")
        config["num_hidden_layers"] = args.layers
    family = config["model_type"]
    fixture = fixture_config(family)
    token_ids(config, fixture)
    if args.with_score:
        config["architectures"] = [CLASS_NAMES[family]]
        config["id2label"] = fixture["id2label"]
        config["label2id"] = fixture["label2id"]
        assert len(config["id2label"]) == 3

    out = args.out
    if out.exists() and any(out.iterdir()):
        if not args.force:
            sys.exit(f"{out} is not empty (--force writes into it)")
        for old in out.glob("model*.safetensors*"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)

    tensors = tensors_of(config, args.with_score)
    shards = plan_shards(tensors, int(args.shard_mib * (1 << 20)))
    use_numpy = numpy is not None and not args.pure_python
    draws = NumpyDraws(args.seed) if use_numpy else PoolDraws(args.seed)
    total, weight_map = 0, {}
    for k, shard in enumerate(shards, 1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(out / name, shard, draws)
        weight_map.update((t[0], name) for t in shard)
        print(f"  wrote {name}: {len(shard)} tensors, {time.monotonic() - started:.1f} s", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        source = FIXTURES / FIXTURE_OF[family] / name
        if source.is_file():
            shutil.copyfile(source, out / name)

    params = sum(count(t[1]) for t in tensors)
    print(f"folder: {out}")
    print(f"shape: {args.shape}, {config['num_hidden_layers']} layers, "
          f"{'numpy' if use_numpy else 'standard-library pool'} draws, seed {args.seed}")
    print(f"parameters: {params:,}")
    print(f"bf16 weights: {total / (1 << 20):,.1f} MiB in {len(shards)} file(s)")
    print(f"seconds: {time.monotonic() - started:.1f}")


if __name__ == "__main__":
    main()
