//! Times fit + transform on the alpaca preference data (or any CSV(.gz) in the arena format).
//!
//! cargo run --release -p features --example bench_features -- [TRAIN.csv[.gz] [TEST.csv[.gz]]]
//! The environment variable FEATURE_CONFIG may hold a JSON `FeatureConfig`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::time::Instant;

use features::{parse_turns, Battle, Extractor, FeatureConfig, Orientation};

fn read_battles(path: &str) -> Vec<Battle> {
    let file = BufReader::new(File::open(path).unwrap_or_else(|e| panic!("{path}: {e}")));
    let input: Box<dyn Read> = if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers().expect("CSV header").clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{path}: no column {name}"))
    };
    let (prompt, a, b) = (column("prompt"), column("response_a"), column("response_b"));
    reader
        .records()
        .map(|record| {
            let record = record.expect("CSV record");
            Battle {
                prompt: parse_turns(&record[prompt]).turns,
                response_a: parse_turns(&record[a]).turns,
                response_b: parse_turns(&record[b]).turns,
            }
        })
        .collect()
}

/// CPU seconds (user + system) used by this process so far, from /proc (Linux); the machine
/// may be shared, so CPU time is the steadier measure next to wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `stage`, printing its wall and CPU time.
fn timed<T>(label: &str, stage: impl FnOnce() -> T) -> (T, f64) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let result = stage();
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "{label:<20} {wall:>6.2} s wall  {:>6.2} s cpu",
        cpu_seconds() - cpu
    );
    (result, wall)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths = if args.is_empty() {
        vec![
            "/work/shared/alpaca-pref/train.csv.gz".to_string(),
            "/work/shared/alpaca-pref/test.csv.gz".to_string(),
        ]
    } else {
        args
    };

    println!("rayon threads: {}", rayon::current_num_threads());
    let (battles, _) = timed("read + parse_turns", || {
        paths
            .iter()
            .flat_map(|p| read_battles(p))
            .collect::<Vec<Battle>>()
    });
    println!("battles: {}", battles.len());

    // FEATURE_CONFIG='{"tfidf": {"char_max_features": 2000}}' overrides the defaults.
    let config: FeatureConfig = match std::env::var("FEATURE_CONFIG") {
        Ok(json) => serde_json::from_str(&json).expect("FEATURE_CONFIG is a FeatureConfig"),
        Err(_) => FeatureConfig::default(),
    };
    let (extractor, fit_s) = timed("fit", || Extractor::fit(&battles, &config).expect("fit"));
    let (table, transform_s) = timed("transform", || {
        extractor
            .transform(&battles, &[])
            .expect("no semantic features")
    });
    println!("fit + transform:     {:>6.2} s wall", fit_s + transform_s);
    let rows: Vec<usize> = (0..table.n_rows()).collect();
    let ((given, swapped), _) = timed("csr (both)", || {
        (
            table.csr(&rows, Orientation::AsGiven),
            table.csr(&rows, Orientation::Swapped),
        )
    });

    let nnz_per_row: Vec<usize> = given
        .indptr
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .collect();
    let mut sorted = nnz_per_row.clone();
    sorted.sort_unstable();
    let n_dense = extractor
        .feature_names()
        .iter()
        .take_while(|n| !n.starts_with("tfidf_"))
        .count();
    println!(
        "rows {}  cols {} ({} dense)  nnz/row mean {:.1}  median {}  p99 {}  max {}",
        table.n_rows(),
        table.n_cols(),
        n_dense,
        given.values.len() as f64 / table.n_rows().max(1) as f64,
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
        sorted[sorted.len() - 1],
    );
    let names = extractor.feature_names();
    let char_start = names
        .iter()
        .take_while(|n| !n.starts_with("tfidf_c:"))
        .count() as i32;
    let word_nnz = given
        .indices
        .iter()
        .filter(|&&c| c >= n_dense as i32 && c < char_start)
        .count();
    let char_nnz = given.indices.iter().filter(|&&c| c >= char_start).count();
    let per_row = |nnz: usize| nnz as f64 / table.n_rows().max(1) as f64;
    println!(
        "nnz/row: dense {:.1}  tfidf word {:.1}  tfidf char {:.1}",
        per_row(given.values.len() - word_nnz - char_nnz),
        per_row(word_nnz),
        per_row(char_nnz)
    );
    let csr_mb = |m: &features::CsrMatrix| (m.values.len() * 8 + m.indptr.len() * 8) as f64 / 1e6;
    println!(
        "csr size: {:.0} MB per orientation ({:.0} MB both)",
        csr_mb(&given),
        csr_mb(&given) + csr_mb(&swapped)
    );
}
