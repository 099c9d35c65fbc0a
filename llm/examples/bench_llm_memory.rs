//! The LLM member's training-memory estimate beside the memory a fold really takes: loads a
//! model folder (e.g. a random one of a real shape, `scripts/make_random_llm.py`), then trains
//! one optimizer step on `--batch` rows of `--max-len` tokens and evaluates max(`--batch`,
//! `--eval-batch`) rows in both answer orders through `neural::fit_fold`, as a fold does.
//! Measured two ways, each above what was held after loading, against the estimate's
//! `to_allocate` (what must be free): the peak of the bytes allocated and not yet freed (a
//! counting allocator: what a device must hold, the estimate's own measure) and the peak
//! resident memory (reset first through /proc/self/clear_refs), which adds what glibc keeps of
//! freed blocks.
//!
//!     cargo run --release -p llm --example bench_llm_memory -- --model /tmp/qwen-4l \
//!         [--max-len 1024] [--batch 2] [--eval-batch 2] [--precision f32|bf16] \
//!         [--gradient-checkpointing] [--phases] [--estimate-only]
//!
//! `--estimate-only` prints the estimate and stops. `--phases` first prints what one training
//! step holds after its forward pass and at its peak in the backward pass, and the peak of
//! predicting the held-out rows (2 × max(--batch, --eval-batch), each in both orders); the
//! fold's peak RSS is then that step's too (the allocated peak is reset before the fold and
//! stays the fold's own).
//!
//! Ends with a line `JSON {...}`.
use candle_core::Device;
use ensemble_core::Outcome;
use llm::{LlmConfig, LlmMember};
use neural::testing::{synthetic_pair, CountingAllocator};
use neural::{fit_fold, EncodedPair, FoldModel, FoldRows};
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<()> {
    neural::reuse_freed_host_memory(); // as `ensemble transformer` does
    let model = PathBuf::from(arg("--model", ""));
    let len: usize = arg("--max-len", "1024").parse()?;
    let batch: usize = arg("--batch", "2").parse()?;
    let eval_batch: usize = arg("--eval-batch", &batch.to_string()).parse()?;
    let mut config = LlmConfig::default();
    let training = &mut config.training;
    training.max_len = len;
    training.batch_size = batch;
    training.eval_batch_size = eval_batch;
    training.grad_accumulation = 1;
    training.epochs = 1;
    training.precision = arg("--precision", "f32").parse()?;
    training.gradient_checkpointing = std::env::args().any(|a| a == "--gradient-checkpointing");
    training.memory_check = false;
    let (mut member, _) = LlmMember::load(&model, &Device::Cpu, &config)?;
    member.start_adapter(1)?;
    let row = |salt: usize| synthetic_pair(len, salt);
    let train: Vec<EncodedPair> = (0..batch).map(row).collect();
    let valid: Vec<EncodedPair> = (batch..2 * batch.max(eval_batch)).map(row).collect();
    let labels = |n: usize| (0..n).map(|i| Outcome::ALL[i % 3]).collect::<Vec<_>>();
    let estimate = member.training_memory(FoldRows::of(&train, &valid));
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    if std::env::args().any(|a| a == "--estimate-only") {
        println!(
            "estimate {:.0} MiB to allocate",
            mib(estimate.to_allocate())
        );
        return Ok(());
    }
    if std::env::args().any(|a| a == "--phases") {
        // Where the fold's peak comes from: a training forward pass alone, then its backward.
        let start = CountingAllocator::reset_peak();
        let views: Vec<&[Vec<u32>]> = train.iter().map(|r| r.view(false)).collect();
        let rng = neural::DropoutRng::replay(1, &Device::Cpu)?;
        let logits = member.training_logits(&views, 0, &rng)?;
        let forward = CountingAllocator::live() - start;
        let forward_peak = CountingAllocator::peak() - start;
        let loss = candle_nn::loss::cross_entropy(
            &logits,
            &candle_core::Tensor::new(
                (0..batch as u32).map(|i| i % 3).collect::<Vec<_>>(),
                &Device::Cpu,
            )?,
        )?;
        let grads = loss.backward()?;
        let backward_peak = CountingAllocator::peak() - start;
        drop((grads, loss, logits));
        let start = CountingAllocator::reset_peak();
        member.predict_logits(&valid)?;
        let prediction_peak = CountingAllocator::peak() - start;
        println!(
            "phases: after forward {:.0} MiB held (peak {:.0}), peak in backward {:.0} MiB, \
             peak in prediction {:.0} MiB",
            mib(forward as u64),
            mib(forward_peak as u64),
            mib(backward_peak as u64),
            mib(prediction_peak as u64)
        );
    }
    let before = neural::rss_mib();
    let live_before = CountingAllocator::reset_peak();
    // Resets VmHWM to the current RSS (Linux ≥ 4.0), so the peak read after is the fold's.
    std::fs::write("/proc/self/clear_refs", "5")?;
    fit_fold(
        &mut member,
        &train,
        &labels(batch),
        &valid,
        &labels(valid.len()),
        0,
    )?;
    let rss = neural::peak_rss_mib() - before;
    let live = mib((CountingAllocator::peak() - live_before) as u64);
    let estimated = mib(estimate.to_allocate());
    println!(
        "{}: {len} tokens, batch {batch}, {:?}{}: estimate {estimated:.0} MiB to allocate \
         (activations {:.0}); peak allocated {live:.0} MiB (estimate/allocated {:.2}), peak \
         RSS {rss:.0} MiB above the {before:.0} MiB after loading",
        model.display(),
        config.training.precision,
        if config.training.gradient_checkpointing {
            ", checkpointed"
        } else {
            ""
        },
        mib(estimate.activations),
        estimated / live,
    );
    let record = serde_json::json!({
        "model": model, "max_len": len, "batch": batch, "eval_batch": eval_batch,
        "precision": config.training.precision,
        "gradient_checkpointing": config.training.gradient_checkpointing,
        "estimate_mib": estimated, "activations_mib": mib(estimate.activations),
        "allocated_mib": live, "rss_mib": rss, "after_load_mib": before,
        "ratio": estimated / live,
    });
    println!("JSON {record}");
    Ok(())
}
