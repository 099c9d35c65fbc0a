//! Throughput benchmark of the transformer member: inference and training sequences per second
//! for a deberta-v3-base-sized random model (hidden 768, 12 layers, 12 heads, vocabulary
//! 128,100) or the tiny fixture, at --max-len tokens, in f32, bf16 or f16, on the CPU or a GPU.
//! `scripts/bench_torch_deberta.py` measures PyTorch the same way, with the same flags.
//!
//!     cargo run --release -p deberta --example bench_transformer -- \
//!         [--device cpu|cuda:0] [--precision f32|bf16|f16] [--mode infer|train|both] [--tiny] \
//!         [--gradient-checkpointing] [--head-only] \
//!         [--max-len 512] [--eval-batch 32] [--train-batch 8] [--warmup 2] [--batches 2]
//!
//! Batches count sequences, as PyTorch's do: a prediction row runs in both A/B orders, so an
//! --eval-batch of 32 is 16 rows. Training runs `fit_fold` (dropout, A/B swap augmentation,
//! AdamW, clipping) on --train-batch rows per step, one sequence each, and excludes its one
//! held-out evaluation from the time; --head-only trains the pooler and classifier alone (the
//! first stage of staged unfreezing). Memory is the process's peak RSS.
use std::path::Path;
use std::time::Instant;

use deberta::Error;
use deberta::{training_memory, Classifier, DebertaConfig, ModelConfig};
use ensemble_core::Outcome;
use neural::{
    fit_fold, on_compute_thread, parse_device, peak_rss_mib, reuse_freed_host_memory, Device,
    EncodedPair, FoldRows, Precision, ResponsePair, TrainingConfig,
};

/// The value after the last `--name`, or `default`.
fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn number(name: &str, default: usize) -> Result<usize, Error> {
    arg(name, &default.to_string())
        .parse()
        .map_err(|_| Error::Invalid(format!("{name} needs a whole number")))
}

fn base_config() -> Result<ModelConfig, Error> {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 512, "type_vocab_size": 0, "relative_attention": true,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pos_att_type": "p2c|c2p", "position_biased_input": false, "layer_norm_eps": 1e-7,
        "pooler_hidden_size": 768, "pooler_dropout": 0, "pooler_hidden_act": "gelu"
    }))
    .map_err(|e| Error::Invalid(e.to_string()))
}

/// Rows long enough that every sequence fills max_len.
fn rows(classifier: &Classifier, count: usize) -> Result<Vec<EncodedPair>, Error> {
    let words = "the quick brown fox jumps over the lazy dog and keeps running ".repeat(200);
    let pairs: Vec<ResponsePair> = (0..count)
        .map(|i| ResponsePair {
            prompt: format!("{i} {words}"),
            response_a: words.clone(),
            response_b: format!("{words} {i}"),
        })
        .collect();
    classifier.encode(&pairs)
}

struct Measured {
    sequences: usize,
    seconds: f64,
    /// Training only: the memory estimate `fit_fold` checks, in MiB (weights included).
    estimate_mib: Option<f64>,
}

fn infer(
    classifier: &Classifier,
    batch_rows: usize,
    warmup: usize,
    batches: usize,
) -> Result<Measured, Error> {
    let encoded = rows(classifier, batch_rows * (warmup + batches))?;
    let (warm, timed) = encoded.split_at(batch_rows * warmup);
    classifier.predict_logits(warm)?;
    let started = Instant::now();
    classifier.predict_logits(timed)?; // returns host values, so the device has finished
    Ok(Measured {
        sequences: 2 * timed.len(),
        seconds: started.elapsed().as_secs_f64(),
        estimate_mib: None,
    })
}

fn train(classifier: &mut Classifier, warmup: usize, batches: usize) -> Result<Measured, Error> {
    let batch = classifier.config().training.batch_size;
    let encoded = rows(classifier, batch * (warmup + batches) + 1)?;
    let labels: Vec<Outcome> = (0..encoded.len())
        .map(|i| [Outcome::A, Outcome::B, Outcome::Tie][i % 3])
        .collect();
    let held_out = encoded.len() - 1;
    let split = batch * warmup;
    let mut fit = |from: usize, to: usize| {
        fit_fold(
            classifier,
            &encoded[from..to],
            &labels[from..to],
            &encoded[held_out..],
            &labels[held_out..],
            0,
        )
    };
    if warmup > 0 {
        fit(0, split)?;
    }
    let result = fit(split, held_out)?;
    let rows = FoldRows::of(&encoded[split..held_out], &encoded[held_out..]);
    let estimate = training_memory(classifier, rows);
    Ok(Measured {
        sequences: held_out - split,
        seconds: result.train_seconds - result.eval_seconds,
        estimate_mib: Some(estimate.total() as f64 / (1u64 << 20) as f64),
    })
}

fn main() -> Result<(), Error> {
    // As `ensemble transformer` does: its allocator settings, and the thread the fold loop
    // runs its folds on (`neural::run`).
    reuse_freed_host_memory();
    on_compute_thread(&arg("--device", "cpu"), measure)
}

fn measure() -> Result<(), Error> {
    let device: Device = parse_device(&arg("--device", "cpu"))?;
    let precision: Precision = arg("--precision", "f32").parse().map_err(Error::Invalid)?;
    let mode = arg("--mode", "both");
    let tiny = std::env::args().any(|a| a == "--tiny");
    let (warmup, batches) = (number("--warmup", 2)?, number("--batches", 2)?);
    let eval_sequences = number("--eval-batch", 32)?;
    let mut config = DebertaConfig {
        training: TrainingConfig {
            precision,
            max_len: number("--max-len", 512)?,
            eval_batch_size: (eval_sequences / 2).max(1),
            batch_size: number("--train-batch", 8)?,
            grad_accumulation: 1,
            epochs: 1,
            warmup_ratio: 0.0,
            gradient_checkpointing: std::env::args().any(|a| a == "--gradient-checkpointing"),
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let head_only = std::env::args().any(|a| a == "--head-only");
    if head_only {
        config.unfreeze.head_only_steps = usize::MAX;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deberta");
    let mut classifier = if tiny {
        Classifier::load(&fixture, &device, &config)?
    } else {
        Classifier::random(&base_config()?, &fixture, &device, &config)?
    };
    let model = if tiny { "tiny" } else { "base" };
    println!(
        "candle on {device:?}, {} CPU threads, model {model}, {precision:?}",
        rayon::current_num_threads()
    );
    let run = |name: &str, batch: usize, measured: Measured| {
        let rate = measured.sequences as f64 / measured.seconds;
        let peak = peak_rss_mib();
        println!(
            "candle {name} {precision:?} {model}: {} sequences of {} tokens (batch {batch}) in {:.3} s = {rate:.2} sequences/s, peak RSS {peak:.0} MiB{}",
            measured.sequences, config.training.max_len, measured.seconds,
            measured.estimate_mib.map_or(String::new(), |e| format!(", estimate {e:.0} MiB"))
        );
        let record = serde_json::json!({
            "framework": "candle", "device": format!("{device:?}"),
            "dtype": arg("--precision", "f32"), "mode": name, "max_len": config.training.max_len,
            "batch": batch, "sequences": measured.sequences, "seconds": measured.seconds,
            "sequences_per_s": rate, "peak_mib": peak, "model": model,
            "threads": rayon::current_num_threads(), "gradient_checkpointing": config.training.gradient_checkpointing,
            "head_only": head_only, "estimate_mib": measured.estimate_mib,
        });
        println!("JSON {record}");
    };
    if mode == "infer" || mode == "both" {
        let measured = infer(
            &classifier,
            config.training.eval_batch_size,
            warmup,
            batches,
        )?;
        run("infer", 2 * config.training.eval_batch_size, measured);
    }
    if mode == "train" || mode == "both" {
        let measured = train(&mut classifier, warmup, batches)?;
        run("train", config.training.batch_size, measured);
    }
    Ok(())
}
