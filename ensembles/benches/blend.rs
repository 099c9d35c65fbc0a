//! `--weights auto` on 10 members × 60,000 rows: the full fit (all rows) plus the nested
//! estimate (10 refits), timed with `Instant`.
//! Run: `cargo bench -p ensembles --bench blend` (the bench profile is the release one).
use ensemble_core::metrics::log_loss;
use ensemble_core::{Folds, Outcome, Probs};
use ensembles::blend::{fit_blend, MemberMatrix, Method, Space, WeightChoice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

const N_MEMBERS: usize = 10;
const N_ROWS: usize = 60_000;

fn softmax(z: Probs) -> Probs {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|v| (v - max).exp());
    let total: f64 = e.iter().sum();
    e.map(|v| v / total)
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    let truth: Vec<Probs> = (0..N_ROWS)
        .map(|_| softmax([(); 3].map(|_| 3.0 * (rng.random::<f64>() - 0.5))))
        .collect();
    let labels: Vec<Outcome> = truth
        .iter()
        .map(|p| {
            let u: f64 = rng.random();
            let class = if u < p[0] {
                0
            } else if u < p[0] + p[1] {
                1
            } else {
                2
            };
            Outcome::from_index(class).unwrap()
        })
        .collect();
    // Members: the truth's logits plus noise of growing size.
    let members: Vec<Vec<Probs>> = (0..N_MEMBERS)
        .map(|k| {
            let noise = 0.2 + 0.2 * k as f64;
            truth
                .iter()
                .map(|p| softmax(p.map(|v| v.ln() + noise * (rng.random::<f64>() - 0.5))))
                .collect()
        })
        .collect();
    let oof = MemberMatrix::from_members(&members).unwrap();
    let folds = Folds::stratified(&labels, 10, 42).unwrap();
    for space in [Space::Probability, Space::Logit] {
        let method = Method::Weighted {
            space,
            weights: WeightChoice::Auto,
            calibrate: false,
        };
        let start = Instant::now();
        let fit = fit_blend(&oof, &oof, &labels, &folds, &method).unwrap();
        let elapsed = start.elapsed();
        println!(
            "{space:?} space, {N_MEMBERS} members x {N_ROWS} rows, fit + 10-fold nested: {:.3} s \
             (in-sample {:.5}, nested {:.5})",
            elapsed.as_secs_f64(),
            log_loss(&labels, &fit.in_sample),
            log_loss(&labels, &fit.nested)
        );
    }
}
