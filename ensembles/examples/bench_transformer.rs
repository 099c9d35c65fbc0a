//! CPU inference benchmark of the transformer member: sequences per second and peak memory
//! for the tiny fixture model and a deberta-v3-base-sized random model (hidden 768, 12 layers,
//! 12 heads, vocabulary 128,100) at 512 tokens.
//!
//!     cargo run --release -p ensembles --example bench_transformer [-- --rows 8 --max-len 512]
use std::path::Path;
use std::time::Instant;

use ensembles::transformer::{Classifier, DebertaConfig, Device, ResponsePair, TransformerConfig};

fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench(label: &str, classifier: &Classifier, rows: usize) -> Result<(), ensembles::Error> {
    // Long texts, so that every sequence fills max_len.
    let words = "the quick brown fox jumps over the lazy dog and keeps running ".repeat(200);
    let pairs: Vec<ResponsePair> = (0..rows)
        .map(|i| ResponsePair {
            prompt: format!("{i} {words}"),
            response_a: words.clone(),
            response_b: format!("{words} {i}"),
        })
        .collect();
    let encoded = classifier.encode(&pairs)?;
    let tokens = encoded[0].as_given[0].len();
    classifier.predict_logits(&encoded[..1])?; // warm-up
    let started = Instant::now();
    classifier.predict_logits(&encoded)?;
    let seconds = started.elapsed().as_secs_f64();
    // Swap averaging runs every row in both orders.
    let sequences = 2 * rows;
    println!(
        "{label}: {sequences} sequences of {tokens} tokens in {seconds:.2} s = {:.2} sequences/s ({:.2} rows/s), peak RSS {:.0} MiB",
        sequences as f64 / seconds,
        rows as f64 / seconds,
        peak_memory_mib()
    );
    Ok(())
}

fn main() -> Result<(), ensembles::Error> {
    let rows = arg("--rows", 8);
    let config = TransformerConfig {
        max_len: arg("--max-len", 512),
        eval_batch_size: arg("--batch", 4),
        ..TransformerConfig::default()
    };
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deberta");
    println!("threads: {}", rayon::current_num_threads());
    bench(
        "tiny (hidden 32, 2 layers)",
        &Classifier::load(&tiny, &Device::Cpu, &config)?,
        rows * 8,
    )?;
    let base: DebertaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 512, "type_vocab_size": 0, "relative_attention": true,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pos_att_type": "p2c|c2p", "position_biased_input": false, "layer_norm_eps": 1e-7,
        "pooler_hidden_size": 768, "pooler_dropout": 0, "pooler_hidden_act": "gelu"
    }))
    .map_err(|e| ensembles::Error::Invalid(e.to_string()))?;
    let classifier = Classifier::random(&base, &tiny, &Device::Cpu, &config)?;
    bench("deberta-v3-base shape (random)", &classifier, rows)?;
    Ok(())
}
