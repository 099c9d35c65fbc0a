#!/usr/bin/env python3
"""PyTorch reference for the DeBERTa-v3-base-sized classifier throughput benchmark.

Measures, for a randomly initialised `transformers.DebertaV2ForSequenceClassification`
(num_labels=3, the deberta-v3-base shape: hidden 768, 12 layers, 12 heads, vocabulary 128,100):

  * inference: sequences per second of model.eval() forward passes under torch.inference_mode(),
    in batches of --eval-batch sequences;
  * training: sequences per second of full training steps (model.train() with dropout on,
    cross-entropy loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad), in batches of
    --train-batch sequences;

and the peak memory of each (CUDA: torch.cuda.max_memory_allocated(), reset before each
measurement; CPU: the process's peak RSS, which never goes down, so on CPU a later measurement's
figure includes everything before it). Every sequence is exactly --max-len random token ids with
an all-ones attention mask, so the figures line up with candle's
(`cargo run --release -p deberta --example bench_transformer`) on the same machine.

--warmup steps (default 2) run untimed first, then --batches steps are timed (default 5 on CUDA,
2 on CPU); CUDA is synchronised before the clock is read. With --mode both, inference runs
before training.

Precision:
  --dtype f32   float32 throughout; TF32 matmuls/convolutions are switched off so that f32 really
                is f32 (pass --tf32 to allow them).
  --dtype f16   as bf16 with float16, and the loss scaled by torch.amp.GradScaler (training).
  --gradient-checkpointing  transformers' per-layer activation checkpointing (training).
  --dtype bf16  mixed precision: float32 master weights, forward pass (and loss) under
                torch.autocast(device_type, dtype=torch.bfloat16) for training and inference
                alike, so weights are cast per forward and LayerNorm/softmax stay in float32, as
                on the candle side. No grad scaler (bf16 does not need one).

Output: one human-readable line per measurement and one line `JSON {...}` per measurement with
the keys framework, torch_version, transformers_version, device, dtype, mode, max_len, batch,
sequences, seconds, sequences_per_s, peak_mib (plus model, tf32, warmup, threads).

Requirements: torch and transformers (`pip install torch transformers`; numpy comes with them).

Examples (from the repository root):

    python3 scripts/bench_torch_deberta.py --device cuda --dtype bf16 --max-len 512 --train-batch 8 --eval-batch 32
    python3 scripts/bench_torch_deberta.py --device cuda --dtype f32 --max-len 512 --train-batch 8 --eval-batch 32
    python3 scripts/bench_torch_deberta.py --dry-run                      # build the base model, print its size
    python3 scripts/bench_torch_deberta.py --tiny --device cpu --dtype f32 --max-len 64 \\
        --train-batch 2 --eval-batch 2 --batches 2                        # quick smoke test
"""
import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

NUM_LABELS = 3
FIRST_TOKEN_ID = 3  # ids 0..2 are [PAD], [CLS], [SEP] in the deberta-v3 vocabulary

BASE = dict(
    vocab_size=128100,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    position_buckets=256,
    pooler_hidden_size=768,
)
TINY = dict(
    vocab_size=1000,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    position_buckets=8,
    pooler_hidden_size=32,
)


def make_config(tiny):
    shape = TINY if tiny else BASE
    return DebertaV2Config(
        hidden_act="gelu",
        max_position_embeddings=512,
        type_vocab_size=0,
        relative_attention=True,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        layer_norm_eps=1e-7,
        pooler_dropout=0,
        pooler_hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=NUM_LABELS,
        **shape,
    )


def build_model(tiny, seed):
    """Random-initialised classifier in float32; returns (model, note on attn_implementation)."""
    config = make_config(tiny)
    torch.manual_seed(seed)
    try:
        model = DebertaV2ForSequenceClassification._from_config(config, attn_implementation="eager")
        note = "attn_implementation=eager"
    except TypeError:
        # transformers too old to know attn_implementation; DeBERTa-v2 is eager-only anyway.
        torch.manual_seed(seed)
        model = DebertaV2ForSequenceClassification(config)
        note = "attn_implementation not accepted (eager by default)"
    return model.float(), note


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # KiB on Linux, bytes on macOS.
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(count, batch, max_len, vocab_size, seed, device):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(FIRST_TOKEN_ID, vocab_size, (batch, max_len), generator=gen, dtype=torch.long)
        mask = torch.ones(batch, max_len, dtype=torch.long)
        labels = torch.randint(0, NUM_LABELS, (batch,), generator=gen, dtype=torch.long)
        batches.append((ids.to(device), mask.to(device), labels.to(device)))
    return batches


def autocast_ctx(device, dtype):
    if dtype in ("bf16", "f16"):
        half = torch.bfloat16 if dtype == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=half)
    return torch.autocast(device_type=device.type, enabled=False)


def time_steps(step, batches, warmup, device):
    """Runs step on each batch; the first `warmup` untimed. Returns seconds for the rest."""
    for b in batches[:warmup]:
        step(*b)
    sync(device)
    started = time.perf_counter()
    for b in batches[warmup:]:
        step(*b)
    sync(device)
    return time.perf_counter() - started


def bench_infer(model, args, device):
    model.eval()

    def step(ids, mask, _labels):
        with torch.inference_mode(), autocast_ctx(device, args.dtype):
            model(input_ids=ids, attention_mask=mask).logits

    batches = make_batches(args.warmup + args.batches, args.eval_batch, args.max_len,
                           model.config.vocab_size, args.seed, device)
    return time_steps(step, batches, args.warmup, device), args.eval_batch


def bench_train(model, args, device):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, eps=1e-6)
    # f16 scales the loss as candle does (GradScaler: init 2**16, growth interval 2000).
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "f16")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def step(ids, mask, labels):
        with autocast_ctx(device, args.dtype):
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    batches = make_batches(args.warmup + args.batches, args.train_batch, args.max_len,
                           model.config.vocab_size, args.seed + 1, device)
    seconds = time_steps(step, batches, args.warmup, device)
    del optimizer
    return seconds, args.train_batch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer in the backward pass (transformers' checkpointing)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions for f32")
    p.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    p.add_argument("--batches", type=int, default=None, help="timed steps (default 5 on cuda, 2 on cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true",
                   help="hidden 32, 2 layers, 2 heads, intermediate 64, vocab 1000, position_buckets 8")
    p.add_argument("--dry-run", action="store_true", help="build the model, print its parameter count, exit")
    args = p.parse_args()

    device = torch.device(args.device)
    if args.batches is None:
        args.batches = 5 if device.type == "cuda" else 2
    if args.max_len > 512:
        p.error("--max-len must be at most 512 (max_position_embeddings)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    model, attn_note = build_model(args.tiny, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    model_name = "tiny" if args.tiny else "deberta-v3-base shape"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device_name}, "
          f"threads {torch.get_num_threads()}, {attn_note}")
    print(f"model: {model_name}, {n_params:,} parameters ({n_params / 1e6:.1f} M), "
          f"dtype {next(model.parameters()).dtype}")
    if args.dry_run:
        return

    model.to(device)
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds, batch = (bench_infer if mode == "infer" else bench_train)(model, args, device)
        sequences = batch * args.batches
        rate = sequences / seconds
        peak = peak_mib(device)
        label = "peak allocated" if device.type == "cuda" else "peak RSS"
        precision = args.dtype + (" (tf32 allowed)" if args.tf32 and args.dtype == "f32" else "")
        print(f"pytorch {mode} {precision} {model_name} on {device_name}: {sequences} sequences of "
              f"{args.max_len} tokens (batch {batch}) in {seconds:.3f} s = {rate:.2f} sequences/s, "
              f"{label} {peak:.0f} MiB")
        record = {
            "framework": "pytorch",
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "device": device_name,
            "dtype": args.dtype,
            "gradient_checkpointing": args.gradient_checkpointing,
            "mode": mode,
            "max_len": args.max_len,
            "batch": batch,
            "sequences": sequences,
            "seconds": seconds,
            "sequences_per_s": rate,
            "peak_mib": peak,
            "model": "tiny" if args.tiny else "base",
            "tf32": args.tf32,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
        }
        print("JSON " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
