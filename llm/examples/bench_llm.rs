//! Throughput and memory of the LLM member: a decoder with random weights in Qwen2.5-0.5B's
//! shape (or the tiny Qwen2 fixture's), a LoRA adapter of rank --lora-r on all seven
//! projections, sequences of --max-len random tokens. `scripts/bench_torch_llm.py` measures
//! PyTorch + PEFT the same way, with the same flags.
//!
//!     cargo run --release -p llm --example bench_llm -- [--device cpu|cuda:0] [--threads N] \
//!         [--shape qwen2.5-0.5b|tiny] [--precision f32|bf16|f16] [--mode infer|train|both|predict] \
//!         [--lora-r 16] [--max-len 512] [--train-batch 1] [--eval-batch 1] \
//!         [--warmup 1] [--batches 2] [--eight-bit] [--gradient-checkpointing]
//!
//! predict: the member's own prediction path (`LlmMember::predict_logits`) over --rows rows
//! of a model folder (`--model`, e.g. from `scripts/make_random_llm.py`), their lengths spread
//! over --min-len..=--max-len, each row in both answer orders, batched by tokens
//! (--eval-batch rows of --max-len per batch, sorted by length):
//!
//!     cargo run --release -p llm --example bench_llm -- --mode predict --model /tmp/qwen05-4l \
//!         --rows 8 --min-len 200 --max-len 2000 --eval-batch 4
//!
//! infer: logits of --eval-batch sequences per batch, no gradients. train: one optimizer step
//! per batch of --train-batch sequences: forward, cross-entropy, backward to the adapter and
//! the head only, AdamW (the shared loop's, `neural::AdamW`). --eight-bit: Q8_0 base weights (inference
//! only). Memory is the process's peak RSS. Ends with a line `JSON {...}` per measurement.
//! `--gradient-checkpointing` (train): each layer keeps its input only and runs again in the
//! backward pass, as transformers' non-reentrant checkpointing does.
use candle_core::{DType, Device, Tensor};
use llm::{DecoderClassifier, DecoderConfig, LoraSpec, TARGETABLE};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Qwen2.5-0.5B's config.json, less what the forward pass does not read.
const QWEN25_05B: &str = r#"{
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "hidden_act": "silu", "pad_token_id": 151643, "eos_token_id": 151643
}"#;

/// The value after the last `--name`, or `default`.
fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn number(name: &str, default: usize) -> Result<usize> {
    Ok(arg(name, &default.to_string())
        .parse()
        .map_err(|_| format!("{name} needs a whole number"))?)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// `count` rows of `len` token ids in 1..vocab, and all-ones masks.
fn batch(count: usize, len: usize, vocab: usize, salt: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let ids = (0..count)
        .map(|row| {
            (0..len)
                .map(|t| (1 + (row * 7919 + t * 104_729 + salt * 31) % (vocab - 1)) as u32)
                .collect()
        })
        .collect();
    (ids, vec![vec![1; len]; count])
}

/// Row `i`'s length in `min..=max`, spread as `scripts/bench_torch_llm.py` spreads them.
fn row_length(i: usize, min: usize, max: usize) -> usize {
    min + (i * 7919) % (max - min + 1)
}

/// `--mode predict`: the member's prediction of rows of mixed lengths, timed after one
/// warm-up pass over the first row.
fn predict(model_dir: &str, device: &Device, precision: &str) -> Result<()> {
    let (rows, min, max) = (
        number("--rows", 8)?,
        number("--min-len", 200)?,
        number("--max-len", 2000)?,
    );
    if min == 0 || min > max {
        return Err("--min-len must be positive and at most --max-len".into());
    }
    let mut config = llm::LlmConfig::default();
    config.training.max_len = max;
    config.training.eval_batch_size = number("--eval-batch", 4)?;
    config.training.precision = precision.parse()?;
    let (mut member, _) = llm::LlmMember::load(std::path::Path::new(model_dir), device, &config)?;
    member.start_adapter(2)?;
    let pairs: Vec<neural::EncodedPair> = (0..rows)
        .map(|i| {
            let ids = |salt: usize| {
                (0..row_length(i, min, max))
                    .map(|t| (3 + (i * 7919 + t * 104_729 + salt) % 300) as u32)
                    .collect()
            };
            neural::EncodedPair {
                as_given: vec![ids(0)],
                swapped: vec![ids(7)],
            }
        })
        .collect();
    member.predict_logits(&pairs[..1])?;
    let started = Instant::now();
    member.predict_logits(&pairs)?;
    let seconds = started.elapsed().as_secs_f64();
    let sequences = 2 * rows;
    let tokens: usize = pairs.iter().map(|p| 2 * p.longest()).sum();
    let (rate, peak) = (sequences as f64 / seconds, neural::peak_rss_mib());
    println!(
        "candle predict {precision} {model_dir}: {sequences} sequences of {min}..={max} tokens \
         ({tokens} in all) in {seconds:.3} s = {rate:.3} sequences/s, peak RSS {peak:.0} MiB"
    );
    let record = serde_json::json!({
        "framework": "candle", "device": format!("{device:?}"), "dtype": precision,
        "mode": "predict", "model": model_dir, "rows": rows, "min_len": min, "max_len": max,
        "eval_batch": config.training.eval_batch_size, "sequences": sequences,
        "tokens": tokens, "seconds": seconds, "sequences_per_s": rate, "peak_mib": peak,
        "threads": rayon::current_num_threads(),
    });
    println!("JSON {record}");
    Ok(())
}

fn main() -> Result<()> {
    neural::reuse_freed_host_memory(); // as `ensemble transformer` does
    let threads = number("--threads", 0)?;
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    // On the thread the fold loop runs its folds on (`neural::run`).
    neural::on_compute_thread(&arg("--device", "cpu"), measure)
}

fn measure() -> Result<()> {
    let device = match arg("--device", "cpu").as_str() {
        "cpu" => Device::Cpu,
        other => neural::parse_device(other)?,
    };
    if arg("--mode", "both") == "predict" {
        let model_dir = arg("--model", "");
        if model_dir.is_empty() {
            return Err("--mode predict needs --model DIR".into());
        }
        return predict(&model_dir, &device, &arg("--precision", "f32"));
    }
    let precision = arg("--precision", "f32");
    let dtype = match precision.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(format!("--precision {other}: f32, bf16 or f16").into()),
    };
    let shape = arg("--shape", "qwen2.5-0.5b");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llm-qwen2");
    let config = match shape.as_str() {
        "qwen2.5-0.5b" => DecoderConfig::from_json(QWEN25_05B)?,
        "tiny" => DecoderConfig::from_file(&fixture.join("config.json"))?,
        other => return Err(format!("--shape {other}: qwen2.5-0.5b or tiny").into()),
    };
    let vocab = config.vocab_size;
    let mut model = DecoderClassifier::random(config, &device, dtype, 1)?;
    let r = number("--lora-r", 16)?;
    model.add_lora(
        LoraSpec {
            r,
            alpha: 2.0 * r as f64,
            target_modules: TARGETABLE.iter().map(|(m, _)| m.to_string()).collect(),
            use_rslora: false,
            dropout: 0.0,
        },
        2,
    )?;
    let eight_bit = flag("--eight-bit");
    let checkpoint = flag("--gradient-checkpointing");
    if eight_bit {
        model.quantize_base()?;
    }
    let (len, warmup, batches) = (
        number("--max-len", 512)?,
        number("--warmup", 1)?,
        number("--batches", 2)?,
    );
    let mode = arg("--mode", "both");
    println!(
        "candle on {device:?}, {} threads, {shape}, {precision}{}, LoRA r {r}, projection weights {:.0} MiB",
        rayon::current_num_threads(),
        if eight_bit { " with 8-bit base weights" } else { "" },
        model.projection_bytes() as f64 / (1u64 << 20) as f64
    );
    let report = |name: &str, batch_size: usize, sequences: usize, seconds: f64| {
        let rate = sequences as f64 / seconds;
        let peak = neural::peak_rss_mib();
        println!(
            "candle {name} {precision} {shape}: {sequences} sequences of {len} tokens (batch {batch_size}) in {seconds:.3} s = {rate:.3} sequences/s, peak RSS {peak:.0} MiB"
        );
        let record = serde_json::json!({
            "framework": "candle", "device": format!("{device:?}"), "dtype": precision,
            "mode": name, "shape": shape, "max_len": len, "batch": batch_size,
            "sequences": sequences, "seconds": seconds, "sequences_per_s": rate,
            "peak_mib": peak, "lora_r": r, "threads": rayon::current_num_threads(),
            "eight_bit": eight_bit, "gradient_checkpointing": checkpoint,
            "projection_mib": model.projection_bytes() as f64 / (1u64 << 20) as f64,
        });
        println!("JSON {record}");
    };
    if mode == "infer" || mode == "both" {
        let size = number("--eval-batch", 1)?;
        for step in 0..warmup {
            let (ids, mask) = batch(size, len, vocab, step);
            model.logits(&ids, &mask)?.to_vec2::<f32>()?;
        }
        let started = Instant::now();
        for step in 0..batches {
            let (ids, mask) = batch(size, len, vocab, warmup + step);
            // to_vec2 brings the values to the host, so the device has finished.
            model.logits(&ids, &mask)?.to_vec2::<f32>()?;
        }
        report(
            "infer",
            size,
            size * batches,
            started.elapsed().as_secs_f64(),
        );
    }
    if mode == "train" || mode == "both" {
        let size = number("--train-batch", 1)?;
        let mut optimizer = neural::AdamW::new(&neural::TrainingConfig::default());
        let mut step = |salt: usize| -> Result<()> {
            let (ids, mask) = batch(size, len, vocab, 1000 + salt);
            let labels: Vec<u32> = (0..size as u32).map(|i| i % 3).collect();
            let labels = Tensor::new(labels.as_slice(), &device)?;
            let logits = model.training_logits(&ids, &mask, None, checkpoint)?;
            let grads = candle_nn::loss::cross_entropy(&logits, &labels)?.backward()?;
            // With checkpointing the adapters' gradients come from the recomputed layers.
            let mut checkpointed = model.take_checkpoint_grads();
            for (name, var) in model.trainable() {
                let grad = grads
                    .get(var.as_tensor())
                    .cloned()
                    .or_else(|| checkpointed.remove(&var.id()));
                if let Some(grad) = grad {
                    optimizer.step(&name, var, &grad, (1.0, 1e-4), true)?;
                }
            }
            Ok(())
        };
        for salt in 0..warmup {
            step(salt)?;
        }
        let started = Instant::now();
        for salt in 0..batches {
            step(warmup + salt)?;
        }
        // AdamW's in-place updates have run by the time the last step returns on the CPU;
        // on a GPU the next host read would wait for them.
        report(
            "train",
            size,
            size * batches,
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}
