//! candle's CPU matmuls at the LLM member's shapes (Qwen2.5-0.5B at 512 tokens, batch 1): the
//! frozen projections `x · Wᵀ` (W as stored, `[out, in]`), their input gradients `dy · W`,
//! and attention's batched products. `scripts/bench_torch_matmul.py` times PyTorch's on the
//! same shapes; run the two one after the other.
//!
//!     cargo run --release -p neural --example bench_matmul -- [--threads 2] [--reps 20]
//!
//! The matmuls run on a rayon pool thread (`neural::on_compute_thread`), as the fold loop's do.
use candle_core::{Device, Tensor};
use std::time::Instant;

/// (name, batch, m, k, n, whether the right operand is a stored `[n, k]` weight read as `Wᵀ`).
const SHAPES: [(&str, usize, usize, usize, usize, bool); 8] = [
    ("q_proj/o_proj x·Wᵀ", 1, 512, 896, 896, true),
    ("k_proj/v_proj x·Wᵀ", 1, 512, 896, 128, true),
    ("gate/up_proj x·Wᵀ", 1, 512, 896, 4864, true),
    ("down_proj x·Wᵀ", 1, 512, 4864, 896, true),
    ("gate/up_proj dy·W", 1, 512, 4864, 896, false),
    ("down_proj dy·W", 1, 512, 896, 4864, false),
    ("attention q·kᵀ", 14, 512, 64, 512, true),
    ("attention p·v", 14, 512, 512, 64, false),
];

fn value(name: &str, default: usize) -> Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().rposition(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a whole number")),
        None => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let threads = value("--threads", 0)?;
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let reps = value("--reps", 20)?.max(1);
    neural::on_compute_thread("cpu", || {
        for (name, batch, m, k, n, transposed) in SHAPES {
            let device = Device::Cpu;
            let lhs = Tensor::randn(0f32, 1., (batch, m, k), &device)?;
            let rhs = match transposed {
                true => Tensor::randn(0f32, 1., (batch, n, k), &device)?.transpose(1, 2)?,
                false => Tensor::randn(0f32, 1., (batch, k, n), &device)?,
            };
            for _ in 0..3 {
                lhs.matmul(&rhs)?;
            }
            let start = Instant::now();
            for _ in 0..reps {
                lhs.matmul(&rhs)?;
            }
            let seconds = start.elapsed().as_secs_f64() / reps as f64;
            let gflops = 2.0 * (batch * m * k * n) as f64 / seconds / 1e9;
            println!(
                "candle {name:20} {batch:>2}×{m}×{k}×{n}: {:7.2} ms {gflops:6.1} GFLOP/s",
                seconds * 1e3
            );
        }
        Ok(())
    })
}
