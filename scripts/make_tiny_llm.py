#!/usr/bin/env python3
"""Makes tiny random decoder-LLM preference classifiers (Gemma-2, Qwen2, Llama-3 RoPE), a PEFT LoRA
adapter for the Qwen2 one, and the reference outputs a Rust (candle) implementation must match.

Run from the repository root (CPU only; about 10 s once installed):

    python3 -m venv /tmp/llmvenv
    /tmp/llmvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu \
        || /tmp/llmvenv/bin/pip install torch
    /tmp/llmvenv/bin/pip install "transformers==4.57.6" "peft==0.21.2" "tokenizers==0.22.2" "safetensors==0.8.0"
    /tmp/llmvenv/bin/python scripts/make_tiny_llm.py

(PyTorch's own index was unreachable here: the fixtures were made with PyPI's torch 2.15.0+cu132,
which runs on CPU but needs its NVIDIA library wheels to import, about 5 GB in all.)

Made with torch 2.15.0, transformers 4.57.6, peft 0.21.2, tokenizers 0.22.2, safetensors 0.8.0,
Python 3.11. transformers 4.x is pinned because it writes config.json as the real checkpoints have
it (`rope_theta`, `rope_scaling`); 5.x writes a `rope_parameters` object instead, which a loader
should accept too. The script asserts what it writes: each folder reloads to the same weights,
right and left padding agree within 1e-4 (about 4e-6 in fact), each family's feature changes the
logits (`check_features`: Gemma-2's soft-capping, sliding window and query_pre_attn_scalar, Qwen2's
rope_theta, Llama-3's rope_scaling) while Gemma-2's final_logit_softcapping does not, and
PeftModel.from_pretrained reproduces the adapter's logits within 1e-5. A second run, under any
PYTHONHASHSEED, rewrites byte-identical files.

Seeds: the tokenizer is trained deterministically (no parallelism); the model weights come from
torch.manual_seed(1) (gemma2), (2) (qwen2), (3) (llama); the LoRA adapter from
torch.manual_seed(4). Every weight is redrawn at a larger scale than HF's 0.02 init so that the
logits depend visibly on each of them (Gemma-2's q/k larger still, so that the attention
soft-capping changes the logits).

Writes under tests/fixtures/:
  tiny-llm-gemma2/{config.json, model.safetensors, tokenizer.json}  Gemma2ForSequenceClassification
  tiny-llm-qwen2/{config.json, model.safetensors, tokenizer.json}   Qwen2ForSequenceClassification
  tiny-llm-llama/{config.json, model.safetensors, tokenizer.json}   LlamaForSequenceClassification,
                                                    no pad token in its config or its tokenizer.json
  tiny-llm-qwen2-lora/{adapter_config.json, adapter_model.safetensors}  PEFT LoRA (SEQ_CLS) for qwen2
  tiny-llm-expected.json   per family: the prompt template, the texts, token ids, right- and
                           left-padded batches and their logits, the same with response_a and
                           response_b swapped, RoPE inverse frequencies, the right-padded batch's
                           logits in bf16 and f16; for the adapter: its logits,
                           key names and shapes, and the loss, gradients and one AdamW step.

The tokenizer is byte-level BPE (400 tokens, <bos>=0, <eos>=1) trained on
../shared/arena-sample/train.csv; its post-processor prepends <bos>. gemma2/qwen2 add <pad>=400
(the same tokenizer.json in both); llama's tokenizer.json has no <pad>, and its expected logits
are computed with `config.pad_token_id = eos_token_id` set in memory only ("pad_token_fallback":
"eos"), as HF needs a pad id to find each row's last token in a batch.
"""
import copy
import csv
import json
import math
import os
import random
import shutil
import sys
import tempfile

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CORPUS = os.path.join(ROOT, "..", "shared", "arena-sample", "train.csv")
LORA_DIR = os.path.join(FIXTURES, "tiny-llm-qwen2-lora")

LABELS = {0: "winner_model_a", 1: "winner_model_b", 2: "winner_tie"}
BPE_VOCAB = 400  # <bos>, <eos>, 256 bytes and 142 merges; <pad> is added after at id 400
MODEL_VOCAB = 416  # embedding rows: more than the tokenizer has, as in real checkpoints
BOS, EOS, PAD = 0, 1, 400
SLIDING_WINDOW = 8

TEMPLATE = "Prompt: {prompt}\nA: {response_a}\nB: {response_b}"
CASES = [
    {"prompt": "What is 2+2?", "response_a": "4", "response_b": "The answer is four."},
    {
        "prompt": "Tell me a joke.",
        "response_a": "Why did the cat sit on the computer? To watch the mouse!",
        "response_b": "No.",
    },
    {
        "prompt": "Summarize: the quick brown fox jumps over the lazy dog.",
        "response_a": "A quick brown fox jumps over a lazy dog; the sentence uses every letter.",
        "response_b": "A fox and a dog.",
    },
]
LORA_LABELS = [0, 1, 2]


def corpus_lines():
    lines = []
    with open(CORPUS, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for column in ("prompt", "response_a", "response_b"):
                for turn in json.loads(row[column]):
                    if turn:
                        lines.extend(t for t in turn.split("\n") if t.strip())
    return lines


def train_tokenizer(with_pad):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    assert tokenizer.get_vocab_size() == BPE_VOCAB, tokenizer.get_vocab_size()
    assert tokenizer.token_to_id("<bos>") == BOS and tokenizer.token_to_id("<eos>") == EOS
    if with_pad:
        tokenizer.add_special_tokens(["<pad>"])
        assert tokenizer.token_to_id("<pad>") == PAD
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)]
    )
    return tokenizer


def randomize(model, family):
    """Redraws every parameter (HF's 0.02 init gives logits that barely depend on the weights)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                # Gemma-2's RMSNorm multiplies by (1 + weight), the others by weight.
                centre = 0.0 if family == "gemma2" else 1.0
                param.copy_(centre + 0.1 * torch.randn_like(param))
            elif family == "gemma2" and ("q_proj" in name or "k_proj" in name):
                # Large attention scores, so that attn_logit_softcapping (tanh) matters.
                param.copy_(1.0 * torch.randn_like(param))
            else:
                param.copy_(0.3 * torch.randn_like(param))


def gemma2_config(**overrides):
    args = dict(
        vocab_size=MODEL_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,  # sliding, full, sliding: the pattern goes by layer index parity
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        query_pre_attn_scalar=16,
        sliding_window=SLIDING_WINDOW,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        attn_implementation="eager",
    )
    args.update(overrides)
    return Gemma2Config(**args)


def qwen2_config(**overrides):
    args = dict(
        vocab_size=MODEL_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        use_sliding_window=False,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        attn_implementation="eager",
    )
    args.update(overrides)
    return Qwen2Config(**args)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # With head_dim 8 and theta 500000 the wavelengths are 6.3, 167, 4443 and 118600 positions:
    # 256 leaves the first as it is (< 256/4), smooths the second and divides the others by 8.
    "original_max_position_embeddings": 256,
}


def llama_config(**overrides):
    args = dict(
        vocab_size=MODEL_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=BOS,
        eos_token_id=EOS,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        attn_implementation="eager",
    )
    args.update(overrides)
    return LlamaConfig(**args)


FAMILIES = [
    # name, folder, config maker, model class, seed
    ("gemma2", "tiny-llm-gemma2", gemma2_config, Gemma2ForSequenceClassification, 1),
    ("qwen2", "tiny-llm-qwen2", qwen2_config, Qwen2ForSequenceClassification, 2),
    ("llama", "tiny-llm-llama", llama_config, LlamaForSequenceClassification, 3),
]


def texts(swapped):
    out = []
    for case in CASES:
        a, b = (case["response_b"], case["response_a"]) if swapped else (case["response_a"], case["response_b"])
        out.append(TEMPLATE.format(prompt=case["prompt"], response_a=a, response_b=b))
    return out


def pad_batch(sequences, pad_id, side):
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for s in sequences:
        fill = width - len(s)
        if side == "right":
            ids.append(s + [pad_id] * fill)
            mask.append([1] * len(s) + [0] * fill)
        else:
            ids.append([pad_id] * fill + s)
            mask.append([0] * fill + [1] * len(s))
    return ids, mask


def hf_last_token(input_ids, pad_id):
    """HF's rule (GenericForSequenceClassification): the rightmost position whose id is not pad."""
    return [max(i for i, t in enumerate(row) if t != pad_id) for row in input_ids]


def run_batch(model, sequences, pad_id):
    """Right- and left-padded forward passes; position_ids left to HF's default 0..L-1."""
    out = {}
    for side in ("right", "left"):
        ids, mask = pad_batch(sequences, pad_id, side)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
        out[side] = {
            "input_ids": ids,
            "attention_mask": mask,
            "last_token_index": hf_last_token(ids, pad_id),
            "logits": logits.tolist(),
        }
    diff = (torch.tensor(out["right"]["logits"]) - torch.tensor(out["left"]["logits"])).abs().max().item()
    out["max_abs_diff_right_vs_left"] = diff
    return out


def max_diff(a, b):
    return (torch.tensor(a) - torch.tensor(b)).abs().max().item()


def variant_logits(make_config, model_class, state, sequences, pad_id, **overrides):
    config = make_config(**overrides)
    if config.pad_token_id is None:
        config.pad_token_id = pad_id
    model = model_class(config)
    model.load_state_dict(state)
    model.eval()
    return run_batch(model, sequences, pad_id)["right"]["logits"]


def check_features(name, make_config, model_class, model, sequences, pad_id, logits):
    """Asserts that each family-specific feature changes the logits (so a test on them catches its omission)."""
    state = model.state_dict()
    checks = {}

    def changed(label, minimum=1e-3, **overrides):
        d = max_diff(variant_logits(make_config, model_class, state, sequences, pad_id, **overrides), logits)
        checks[label] = d
        assert d > minimum, (name, label, d)

    if name == "gemma2":
        changed("without_attn_logit_softcapping", attn_logit_softcapping=None)
        changed("without_sliding_window", sliding_window=4096)
        changed("query_pre_attn_scalar_as_head_dim", query_pre_attn_scalar=8)
        d = max_diff(
            variant_logits(make_config, model_class, state, sequences, pad_id, final_logit_softcapping=None), logits
        )
        checks["without_final_logit_softcapping"] = d
        assert d == 0.0, ("final_logit_softcapping must not touch the score head", d)
    elif name == "qwen2":
        changed("rope_theta_10000", rope_theta=10000.0)
    elif name == "llama":
        changed("without_rope_scaling", rope_scaling=None)
    return checks


def build_family(name, folder, make_config, model_class, seed, tokenizer, tokenizer_file):
    model_dir = os.path.join(FIXTURES, folder)
    os.makedirs(model_dir, exist_ok=True)
    torch.manual_seed(seed)
    config = make_config()
    model = model_class(config)
    randomize(model, name)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    shutil.copy(tokenizer_file, os.path.join(model_dir, "tokenizer.json"))
    for entry in os.listdir(model_dir):
        if entry not in ("config.json", "model.safetensors", "tokenizer.json"):
            path = os.path.join(model_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    # The folder as saved reproduces the model (config round trip: layer_types, rope_scaling, ...).
    reloaded = model_class.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key

    fallback = None
    pad_id = config.pad_token_id
    if pad_id is None:
        # In memory only: HF's ForSequenceClassification needs it to find the last token of each row.
        fallback = "eos"
        pad_id = config.eos_token_id
        model.config.pad_token_id = pad_id

    family = {
        "model_dir": folder,
        "architecture": model_class.__name__,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id if fallback is None else None,
        "pad_token_fallback": fallback,
        "padding_id_used": pad_id,
        "rope_inv_freq": model.model.rotary_emb.inv_freq.tolist(),
    }
    if name == "llama":
        theta, dim = config.rope_theta, config.head_dim
        plain = [1.0 / theta ** (i / dim) for i in range(0, dim, 2)]
        family["rope_inv_freq_unscaled"] = plain
        wavelen = [2 * math.pi / f for f in plain]
        old = LLAMA3_ROPE["original_max_position_embeddings"]
        kinds = [
            "kept" if w < old / LLAMA3_ROPE["high_freq_factor"]
            else "divided" if w > old / LLAMA3_ROPE["low_freq_factor"] else "smoothed"
            for w in wavelen
        ]
        family["rope_llama3_branches"] = kinds
        assert set(kinds) == {"kept", "smoothed", "divided"}, kinds

    for swapped in (False, True):
        batch_texts = texts(swapped)
        sequences = [e.ids for e in tokenizer.encode_batch(batch_texts)]
        lengths = [len(s) for s in sequences]
        assert all(s[0] == BOS for s in sequences)
        assert min(lengths) >= 20 and max(lengths) > SLIDING_WINDOW and len(set(lengths)) == 3, lengths
        result = run_batch(model, sequences, pad_id)
        assert result["max_abs_diff_right_vs_left"] < 1e-4, (name, result["max_abs_diff_right_vs_left"])
        entry = {"texts": batch_texts, "ids": sequences, **result}
        if swapped:
            family["swapped"] = entry
        else:
            family.update(entry)
            family["feature_checks"] = check_features(
                name, make_config, model_class, model, sequences, pad_id, result["right"]["logits"]
            )
    assert max_diff(family["right"]["logits"], family["swapped"]["right"]["logits"]) > 1e-3
    # Half precision as a GPU runs it: the same weights cast to bf16 and to f16, the
    # right-padded batch (the Rust side checks its bf16/f16 logits against these within 2e-2).
    ids = torch.tensor(family["right"]["input_ids"])
    mask = torch.tensor(family["right"]["attention_mask"])
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        half = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            family[f"logits_{dtype_name}"] = half(input_ids=ids, attention_mask=mask).logits.float().tolist()
    return model, family


def to_json(value, indent=0):
    """json.dumps(indent=1), except that a list of numbers stays on one line."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
        items = [pad + to_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def tensor_figures(t):
    return {"shape": list(t.shape), "values": t.detach().flatten().tolist()}


def build_lora(base_model, qwen_family):
    """A LoRA adapter on the qwen2 model, with lora_B (and the saved score copy) made non-zero."""
    torch.manual_seed(4)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(base_model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn_like(param))
            elif "modules_to_save" in name:
                # The trainable copy of `score`; moved off the base's so that loading it matters.
                param.add_(0.1 * torch.randn_like(param))
    peft_model.eval()
    peft_model.peft_config["default"].base_model_name_or_path = "tests/fixtures/tiny-llm-qwen2"

    if os.path.isdir(LORA_DIR):
        shutil.rmtree(LORA_DIR)
    peft_model.save_pretrained(LORA_DIR, safe_serialization=True)
    for entry in os.listdir(LORA_DIR):
        if entry not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(LORA_DIR, entry))
    # PEFT writes target_modules from a set, in an order that changes with PYTHONHASHSEED: sort it
    # (written as PEFT writes the file) so that reruns give the same bytes.
    config_path = os.path.join(LORA_DIR, "adapter_config.json")
    with open(config_path, encoding="utf-8") as f:
        adapter_config = json.load(f)
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    adapter_config["modules_to_save"] = sorted(adapter_config["modules_to_save"])
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(adapter_config, indent=2, sort_keys=True))

    sequences = qwen_family["ids"]
    pad_id = qwen_family["padding_id_used"]
    result = run_batch(peft_model, sequences, pad_id)
    assert result["max_abs_diff_right_vs_left"] < 1e-4
    assert max_diff(result["right"]["logits"], qwen_family["right"]["logits"]) > 1e-2
    swapped = run_batch(peft_model, qwen_family["swapped"]["ids"], pad_id)

    # Reloading: a fresh base plus PeftModel.from_pretrained gives the same logits.
    fresh = Qwen2ForSequenceClassification.from_pretrained(
        os.path.join(FIXTURES, "tiny-llm-qwen2"), attn_implementation="eager", dtype=torch.float32
    )
    reloaded = PeftModel.from_pretrained(fresh, LORA_DIR)
    reloaded.eval()
    again = run_batch(reloaded, sequences, pad_id)
    for side in ("right", "left"):
        d = max_diff(again[side]["logits"], result[side]["logits"])
        assert d < 1e-5, ("PeftModel.from_pretrained", side, d)

    keys = []
    with safetensors.safe_open(os.path.join(LORA_DIR, "adapter_model.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            keys.append({"name": key, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")})
    names = {k["name"] for k in keys}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in names, sorted(names)
    assert "base_model.model.score.weight" in names, sorted(names)

    # Gradient reference: right-padded batch, mean cross-entropy, then one AdamW step over the
    # trainable parameters (all lora_A/lora_B and the score copy).
    tracked = {
        "layer0_q_proj_lora_A": "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "layer0_q_proj_lora_B": "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight",
        "score": "base_model.model.score.modules_to_save.default.weight",
    }
    params = dict(peft_model.named_parameters())
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert all(params[n].requires_grad for n in tracked.values())
    before = {k: params[n].detach().clone() for k, n in tracked.items()}
    peft_model.train()
    ids = torch.tensor(result["right"]["input_ids"])
    mask = torch.tensor(result["right"]["attention_mask"])
    labels = torch.tensor(LORA_LABELS)
    # Mixed precision: the same loss and gradients under torch.autocast (f32 parameters, the
    # linear layers in bf16 or f16), from the same parameters, before the f32 step below.
    autocast = {}
    for name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        peft_model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            half_logits = peft_model(input_ids=ids, attention_mask=mask).logits
        half_loss = torch.nn.functional.cross_entropy(half_logits.float(), labels)
        half_loss.backward()
        autocast[name] = {
            "loss": half_loss.item(),
            "grads": {k: tensor_figures(params[n].grad) for k, n in tracked.items()},
        }
        print(f"lora loss under autocast {name} {half_loss.item():.9e}", file=sys.stderr)
    peft_model.zero_grad(set_to_none=True)
    out = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    loss = torch.nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.0)
    assert abs(loss.item() - out.loss.item()) < 1e-6
    assert max_diff(out.logits.tolist(), result["right"]["logits"]) < 1e-5
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    optimizer.zero_grad()
    loss.backward()
    grads = {k: params[n].grad.detach().clone() for k, n in tracked.items()}
    optimizer.step()
    after = {k: params[n].detach().clone() for k, n in tracked.items()}
    peft_model.eval()
    print(f"lora loss {loss.item():.9e}", file=sys.stderr)

    return {
        "adapter_dir": "tiny-llm-qwen2-lora",
        "base_model_dir": "tiny-llm-qwen2",
        "r": adapter_config["r"],
        "lora_alpha": adapter_config["lora_alpha"],
        "scaling": adapter_config["lora_alpha"] / adapter_config["r"],
        "target_modules": adapter_config["target_modules"],
        "modules_to_save": adapter_config["modules_to_save"],
        "safetensors_keys": keys,
        "ids": sequences,
        "base": {"right": qwen_family["right"]["logits"], "left": qwen_family["left"]["logits"]},
        **result,
        "swapped": {"ids": qwen_family["swapped"]["ids"], **swapped},
        "training": {
            "batch": "the right-padded batch above",
            "labels": LORA_LABELS,
            "loss_function": "torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.0), mean",
            "optimizer": "torch.optim.AdamW over all trainable parameters (every lora_A/lora_B and the score "
            "copy), lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01, one step from fresh state",
            "parameter_names": tracked,
            "loss": loss.item(),
            "params_before": {k: tensor_figures(v) for k, v in before.items()},
            "grads": {k: tensor_figures(v) for k, v in grads.items()},
            "params_after": {k: tensor_figures(v) for k, v in after.items()},
            "autocast": {
                "how": "the same batch, labels and parameters under torch.autocast('cpu', dtype) (PEFT's "
                "lora_A/lora_B and every nn.Linear in that dtype, RMSNorm and the eager softmax in float32 as "
                "transformers writes them), logits cast to float32 for the mean cross-entropy",
                **autocast,
            },
        },
    }


NOTES = [
    "Logits are float32 from *ForSequenceClassification with attn_implementation='eager' and HF's default "
    "position_ids 0..L-1 over the padded length, so in a left-padded row the first real token is at position "
    "(number of pads); RoPE being relative, that only moves the logits by rounding.",
    "The row's logits are the score head at HF's last token: the rightmost position whose id != pad id "
    "(last_token_index), not the attention mask; with right padding that is len-1, with left padding L-1.",
    "Gemma-2: embeddings * sqrt(hidden_size) (the normalizer tensor is in the model dtype); RMSNorm multiplies "
    "by (1 + weight); four norms per layer (input, post_attention, pre_feedforward, post_feedforward) with the "
    "post-norms applied to the sublayer output before the residual add; gelu_pytorch_tanh MLP; scores scaled "
    "by query_pre_attn_scalar**-0.5, then soft-capped (tanh(s/50)*50), then masked; layers with even index "
    "(0, 2) are sliding-window (a query at i sees keys j with i-8 < j <= i), odd ones full; "
    "final_logit_softcapping belongs to the LM head only and does not touch the score head.",
    "Qwen2: q/k/v projections have biases, o_proj none; RMSNorm multiplies by weight; rope_theta 1e6.",
    "Llama: rope_scaling llama3 changes inv_freq (rope_inv_freq vs rope_inv_freq_unscaled); rms_norm_eps 1e-5; "
    "no pad token: pad with eos and take the last token as HF does with pad_token_id = eos_token_id.",
    "All three: RoPE rotate_half (non-interleaved) layout, inv_freq computed in float32; GQA with 2 KV heads "
    "for 4 query heads (key/value head h//2 serves query head h); padded keys masked with a large finite "
    "negative (HF adds finfo.min): a fully masked query row (a left pad) must stay finite, or NaN reaches real "
    "rows through 0 * NaN in the attention-weighted sum.",
]


def main():
    torch.set_num_threads(1)
    random.seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        paths = {}
        tokenizers_made = {}
        for with_pad in (True, False):
            tokenizer = train_tokenizer(with_pad)
            path = os.path.join(workdir, f"tokenizer-{'pad' if with_pad else 'nopad'}.json")
            tokenizer.save(path)
            paths[with_pad] = path
            tokenizers_made[with_pad] = tokenizer
        with_pad_vocab = {k: v for k, v in tokenizers_made[True].get_vocab().items() if k != "<pad>"}
        assert with_pad_vocab == tokenizers_made[False].get_vocab()

        expected = {
            "versions": {
                "torch": torch.__version__.split("+")[0],
                "transformers": __import__("transformers").__version__,
                "peft": __import__("peft").__version__,
                "tokenizers": __import__("tokenizers").__version__,
            },
            "template": TEMPLATE,
            "cases": CASES,
            "labels": [LABELS[i] for i in range(3)],
            "dtype": "float32",
            "notes": NOTES,
            "families": {},
        }
        models_made = {}
        for name, folder, make_config, model_class, seed in FAMILIES:
            with_pad = make_config().pad_token_id is not None
            model, family = build_family(
                name, folder, make_config, model_class, seed, tokenizers_made[with_pad], paths[with_pad]
            )
            expected["families"][name] = family
            models_made[name] = model
            print(name, "right-vs-left", family["max_abs_diff_right_vs_left"], family["feature_checks"],
                  file=sys.stderr)

    expected["lora"] = build_lora(models_made["qwen2"], expected["families"]["qwen2"])
    with open(os.path.join(FIXTURES, "tiny-llm-expected.json"), "w", encoding="utf-8") as f:
        f.write(to_json(expected) + "\n")
    for folder in ("tiny-llm-gemma2", "tiny-llm-qwen2", "tiny-llm-llama", "tiny-llm-qwen2-lora"):
        print(folder, sorted(os.listdir(os.path.join(FIXTURES, folder))), file=sys.stderr)


if __name__ == "__main__":
    main()
