#!/usr/bin/env python3
"""PyTorch's CPU matmuls at the shapes of `neural/examples/bench_matmul.rs` (the LLM member's
projections at Qwen2.5-0.5B's shape, 512 tokens, and attention's batched products), timed the
same way: 3 untimed runs, then --reps timed.

    python3 scripts/bench_torch_matmul.py --threads 2 --reps 20

Requirements: torch.
"""
import argparse
import time

import torch

SHAPES = [  # (name, batch, m, k, n, right operand a stored [n, k] weight read as Wᵀ)
    ("q_proj/o_proj x·Wᵀ", 1, 512, 896, 896, True),
    ("k_proj/v_proj x·Wᵀ", 1, 512, 896, 128, True),
    ("gate/up_proj x·Wᵀ", 1, 512, 896, 4864, True),
    ("down_proj x·Wᵀ", 1, 512, 4864, 896, True),
    ("gate/up_proj dy·W", 1, 512, 4864, 896, False),
    ("down_proj dy·W", 1, 512, 896, 4864, False),
    ("attention q·kᵀ", 14, 512, 64, 512, True),
    ("attention p·v", 14, 512, 512, 64, False),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = max(args.reps, 1)
    for name, batch, m, k, n, transposed in SHAPES:
        lhs = torch.randn(batch, m, k)
        rhs = torch.randn(batch, n, k).transpose(1, 2) if transposed else torch.randn(batch, k, n)
        for _ in range(3):
            torch.matmul(lhs, rhs)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(lhs, rhs)
        seconds = (time.perf_counter() - start) / reps
        gflops = 2 * batch * m * k * n / seconds / 1e9
        print(f"torch  {name:20} {batch:>2}×{m}×{k}×{n}: {seconds * 1e3:7.2f} ms {gflops:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
