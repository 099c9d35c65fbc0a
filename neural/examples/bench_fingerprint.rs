//! How long a model folder's fingerprint takes: every file given (or every file of a folder)
//! hashed whole, as a fold records its base's.
//!
//!     cargo run --release -p neural --example bench_fingerprint -- /tmp/gemma2-2b-8l
//!
//! Run it twice: the first pass may read from disk, the second from the page cache, which is
//! where a base just loaded for training sits.
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for arg in std::env::args().skip(1) {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.retain(|p| p.is_file());
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err("give model folders or files".into());
    }
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<Result<u64, _>>()?;
    for pass in 1..=2 {
        let started = Instant::now();
        let fingerprint = neural::fingerprint_files(&files)?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "pass {pass}: {} files, {:.0} MiB in {seconds:.2} s ({:.2} GB/s), {} threads: {fingerprint}",
            files.len(),
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / seconds / 1e9,
            rayon::current_num_threads(),
        );
    }
    Ok(())
}
