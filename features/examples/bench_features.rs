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

    let start = Instant::now();
    let battles: Vec<Battle> = paths.iter().flat_map(|p| read_battles(p)).collect();
    println!(
        "read + parse_turns: {:>6.2} s  ({} battles)",
        start.elapsed().as_secs_f64(),
        battles.len()
    );

    // FEATURE_CONFIG='{"tfidf": {"char_max_features": 2000}}' overrides the defaults.
    let config: FeatureConfig = match std::env::var("FEATURE_CONFIG") {
        Ok(json) => serde_json::from_str(&json).expect("FEATURE_CONFIG is a FeatureConfig"),
        Err(_) => FeatureConfig::default(),
    };
    let start = Instant::now();
    let extractor = Extractor::fit(&battles, &config).expect("fit");
    let fit_s = start.elapsed().as_secs_f64();
    println!(
        "fit:                {fit_s:>6.2} s  ({} columns)",
        extractor.feature_names().len()
    );

    let start = Instant::now();
    let table = extractor.transform(&battles);
    let transform_s = start.elapsed().as_secs_f64();
    println!("transform:          {transform_s:>6.2} s");
    println!("fit + transform:    {:>6.2} s", fit_s + transform_s);

    let start = Instant::now();
    let rows: Vec<usize> = (0..table.n_rows()).collect();
    let given = table.csr(&rows, Orientation::AsGiven);
    let swapped = table.csr(&rows, Orientation::Swapped);
    println!(
        "csr (both):         {:>6.2} s",
        start.elapsed().as_secs_f64()
    );

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
