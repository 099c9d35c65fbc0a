#!/usr/bin/env python3
"""PyTorch + PEFT reference for the LLM member's benchmark (`llm/examples/bench_llm.rs`).

A randomly initialised `transformers.Qwen2ForSequenceClassification` (num_labels=3) in
Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, vocabulary 151,936), or the
tiny Qwen2 fixture's shape (--shape tiny), with a PEFT LoRA adapter of rank --lora-r (alpha
2r) on q/k/v/o/gate/up/down_proj, the `score` head trained in full (task SEQ_CLS), eager
attention; sequences of --max-len token ids with an all-ones attention mask:

  * infer: logits of --eval-batch sequences per batch under torch.inference_mode();
  * train: one step per batch of --train-batch sequences: forward, cross-entropy, backward,
    torch.optim.AdamW over the trainable parameters (the adapter and the head), zero_grad.

  * predict: --rows rows whose lengths spread over --min-len..=--max-len (as the candle
    bench spreads them), each row in both answer orders (two sequences), sorted by length and
    run --eval-batch rows (2 × --eval-batch sequences) per batch, right-padded to the batch's
    longest with the attention mask (as a transformers notebook predicts); --layers sets
    num_hidden_layers (the candle side reads a folder of that many layers).

--dtype f32|bf16|f16 casts the frozen base; PEFT keeps the adapter in float32 (its
autocast_adapter_dtype default), as the candle side does. --gradient-checkpointing turns on
transformers' per-layer checkpointing. Memory is the process's peak RSS (CPU) or
torch.cuda.max_memory_allocated() (CUDA). --warmup batches run untimed first, then --batches
timed. Ends with a line `JSON {...}` per measurement (sequences_per_s, peak_mib, ...).

    python3 scripts/bench_torch_llm.py --device cpu --threads 2 --dtype f32 --mode both \\
        --shape qwen2.5-0.5b --lora-r 16 --max-len 512 --train-batch 1 --eval-batch 1 \\
        --warmup 1 --batches 2

Requirements: torch, transformers, peft.
"""
import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForSequenceClassification

SHAPES = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, pad_token_id=151643,
                         eos_token_id=151643, tie_word_embeddings=True),
    "tiny": dict(vocab_size=416, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, pad_token_id=400, eos_token_id=1),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch(count, length, vocab, salt, device):
    ids = [[1 + (row * 7919 + t * 104729 + salt * 31) % (vocab - 1) for t in range(length)]
           for row in range(count)]
    ids = torch.tensor(ids, device=device)
    return ids, torch.ones_like(ids)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--mode", default="both", choices=["infer", "train", "both", "predict"])
    p.add_argument("--layers", type=int, default=0, help="num_hidden_layers (default: the shape's)")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--min-len", type=int, default=200)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(1)
    shape = dict(SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = Qwen2Config(num_labels=3, **shape)
    model = Qwen2ForSequenceClassification(config).to(DTYPES[args.dtype])
    model.config._attn_implementation = "eager"
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r,
                      lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora).to(device)
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, "
          f"{args.shape}, {args.dtype}, LoRA r {args.lora_r}")

    def report(mode, size, sequences, seconds):
        rate = sequences / seconds
        peak = peak_mib(device)
        print(f"torch {mode} {args.dtype} {args.shape}: {sequences} sequences of {args.max_len} "
              f"tokens (batch {size}) in {seconds:.3f} s = {rate:.3f} sequences/s, "
              f"peak {peak:.0f} MiB")
        print("JSON " + json.dumps({
            "framework": "torch", "torch_version": torch.__version__, "device": str(device),
            "dtype": args.dtype, "mode": mode, "shape": args.shape, "max_len": args.max_len,
            "batch": size, "sequences": sequences, "seconds": seconds, "sequences_per_s": rate,
            "peak_mib": peak, "lora_r": args.lora_r, "threads": torch.get_num_threads(),
            "gradient_checkpointing": args.gradient_checkpointing}))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    vocab = config.vocab_size
    if args.mode == "predict":
        predict(model, args, device, sync)
        return
    if args.mode in ("infer", "both"):
        model.eval()
        size = args.eval_batch
        with torch.inference_mode():
            for step in range(args.warmup):
                model(*batch(size, args.max_len, vocab, step, device)).logits.float().cpu()
            sync()
            started = time.perf_counter()
            for step in range(args.batches):
                ids, mask = batch(size, args.max_len, vocab, args.warmup + step, device)
                model(input_ids=ids, attention_mask=mask).logits.float().cpu()
            sync()
            report("infer", size, size * args.batches, time.perf_counter() - started)
    if args.mode in ("train", "both"):
        model.train()
        size = args.train_batch
        trainable = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        labels = torch.tensor([i % 3 for i in range(size)], device=device)

        def step(salt):
            ids, mask = batch(size, args.max_len, vocab, 1000 + salt, device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for salt in range(args.warmup):
            step(salt)
        sync()
        started = time.perf_counter()
        for salt in range(args.batches):
            step(args.warmup + salt)
        sync()
        report("train", size, size * args.batches, time.perf_counter() - started)


def predict(model, args, device, sync):
    """Rows of mixed lengths, both orders each, sorted and batched by --eval-batch rows."""
    span = args.max_len - args.min_len + 1
    lengths = [args.min_len + (i * 7919) % span for i in range(args.rows)]
    pad = model.config.pad_token_id

    def sequences(i):
        return [[3 + (i * 7919 + t * 104729 + salt) % 300 for t in range(lengths[i])]
                for salt in (0, 7)]

    def run(rows):
        seqs = [s for i in rows for s in sequences(i)]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        model(input_ids=ids, attention_mask=mask).logits.float().cpu()

    model.eval()
    order = sorted(range(args.rows), key=lambda i: (lengths[i], i))
    with torch.inference_mode():
        run(order[:1])
        sync()
        started = time.perf_counter()
        for k in range(0, len(order), args.eval_batch):
            run(order[k:k + args.eval_batch])
        sync()
        seconds = time.perf_counter() - started
    count = 2 * args.rows
    tokens = 2 * sum(lengths)
    rate, peak = count / seconds, peak_mib(device)
    print(f"torch predict {args.dtype}: {count} sequences of {args.min_len}..={args.max_len} tokens "
          f"({tokens} in all) in {seconds:.3f} s = {rate:.3f} sequences/s, peak {peak:.0f} MiB")
    print("JSON " + json.dumps({
        "framework": "torch", "torch_version": torch.__version__, "device": str(device),
        "dtype": args.dtype, "mode": "predict", "layers": model.config.num_hidden_layers,
        "rows": args.rows, "min_len": args.min_len, "max_len": args.max_len,
        "eval_batch": args.eval_batch, "sequences": count, "tokens": tokens, "seconds": seconds,
        "sequences_per_s": rate, "peak_mib": peak, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
