//! Throughput of the sentence encoder on a list of texts, for `scripts/bench_encoder.sh`
//! (which runs PyTorch on the same texts beside it):
//!   cargo run --release -p encoder --example bench_encoder -- MODEL_DIR TEXTS.json \
//!       [MAX_TOKENS] [BATCH] [EMBEDDINGS_OUT.json]
//! TEXTS.json is a JSON list of strings. Prints texts/s; writes the first 50 embeddings.
use encoder::SentenceEncoder;
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_encoder MODEL_DIR TEXTS.json [MAX_TOKENS] [BATCH] [OUT.json]");
        std::process::exit(2);
    }
    let max_tokens = args.get(3).map_or(Ok(128), |a| a.parse())?;
    let batch = args.get(4).map_or(Ok(32), |a| a.parse())?;
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&args[2])?)?;
    let encoder = SentenceEncoder::load(Path::new(&args[1]), max_tokens, batch)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let embeddings = encoder.embed(&refs, |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "candle: {} texts in {seconds:.2} s: {:.1} texts/s (max_tokens {max_tokens}, batch {batch})",
        texts.len(),
        texts.len() as f64 / seconds
    );
    if let Some(out) = args.get(5) {
        let first: Vec<&Vec<f32>> = embeddings.iter().take(50).collect();
        std::fs::write(out, serde_json::to_string(&first)?)?;
    }
    Ok(())
}
