//! A seeded random search over the main LightGBM parameters, scored by nested CV.
//!
//! Every candidate gets a plain K-fold CV (the same folds and protocol as
//! [`crate::cv::cross_validate`]); the best one is the search's answer. That winner's CV
//! score is optimistic: it was chosen on the very rows it is scored on. The honest figure is
//! the nested one: for each outer fold k, the candidates are ranked by a CV over the other
//! folds only (fold k's rows are neither trained on, watched nor scored), and fold k is then
//! predicted by the winner of that inner ranking, trained as in the plain CV. Pooling those
//! predictions gives the nested OOF log loss.
//!
//! Cost, for N candidates and K folds: N·K fits for the plain CV plus N·K·(K−1) for the
//! inner rankings.
use crate::cv::{augmented_dataset, fit_fold, Auto, BoosterParams, CvInputs};
use crate::lgbm::Dataset;
use crate::{Error, Result};
use ensemble_core::folds::{FoldRows, Folds, StoppingRows};
use ensemble_core::{metrics, Outcome, Probs};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// The searched ranges. Rounds are not searched: early stopping picks them for each
/// learning rate.
const NUM_LEAVES: (f64, f64) = (8.0, 128.0);
const MIN_DATA_IN_LEAF: (f64, f64) = (10.0, 200.0);
const FEATURE_FRACTION: (f64, f64) = (0.3, 1.0);
const BAGGING_FRACTION: (f64, f64) = (0.4, 1.0);
const LEARNING_RATE: (f64, f64) = (0.02, 0.2);
const LAMBDA_L2: (f64, f64) = (0.01, 10.0);
const MAX_BIN: [usize; 4] = [31, 63, 127, 255];

/// `trials` candidates: `base` itself first (so the search can keep the defaults), then
/// draws from the ranges above with a generator seeded by `seed`. Parameters outside the
/// search (rounds, threads, seeds, `extra`, …) are `base`'s.
pub fn candidates(base: &BoosterParams, trials: usize, seed: u64) -> Vec<BoosterParams> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut drawn = vec![base.clone()];
    while drawn.len() < trials {
        let rng = &mut rng;
        drawn.push(BoosterParams {
            num_leaves: log_uniform(rng, NUM_LEAVES).round() as usize,
            min_data_in_leaf: log_uniform(rng, MIN_DATA_IN_LEAF).round() as usize,
            feature_fraction: round_to(uniform(rng, FEATURE_FRACTION), 3),
            bagging_fraction: round_to(uniform(rng, BAGGING_FRACTION), 3),
            bagging_freq: 1,
            learning_rate: Auto::Set(round_to(log_uniform(rng, LEARNING_RATE), 4)),
            lambda_l2: round_to(log_uniform(rng, LAMBDA_L2), 4),
            max_bin: Auto::Set(MAX_BIN[rng.random_range(0..MAX_BIN.len())]),
            ..base.clone()
        });
    }
    drawn.truncate(trials.max(1));
    drawn
}

fn uniform(rng: &mut impl Rng, (low, high): (f64, f64)) -> f64 {
    low + rng.random::<f64>() * (high - low)
}

fn log_uniform(rng: &mut impl Rng, (low, high): (f64, f64)) -> f64 {
    uniform(rng, (low.ln(), high.ln())).exp()
}

/// `value` with `digits` significant digits, so that the config written is readable.
fn round_to(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits - 1 - value.abs().log10().floor() as i32);
    (value * scale).round() / scale
}

/// What the search reports as it goes.
pub enum TuneProgress {
    /// One more model fitted (of `total` in the whole search).
    Fitted { done: usize, total: usize },
}

pub struct TuneOutput {
    pub candidates: Vec<BoosterParams>,
    /// Per candidate: the plain K-fold OOF log loss.
    pub cv_log_loss: Vec<f64>,
    /// The candidate with the lowest plain CV log loss.
    pub best: usize,
    /// Per outer fold k, per candidate: the log loss of a CV over the folds other than k.
    pub inner_log_loss: Vec<Vec<f64>>,
    /// Per outer fold: the candidate its inner CV ranked first.
    pub chosen: Vec<usize>,
    /// Every training row predicted by the candidate chosen without its fold.
    pub nested: Vec<Probs>,
    /// The log loss of `nested`.
    pub nested_log_loss: f64,
}

/// Refuses searches whose estimates could not be honest: held-out early stopping (fold k's
/// round count would be chosen on fold k's labels, and the nested estimate reuses that very
/// prediction), or inner-fold stopping with too few folds for the inner rankings. Commands
/// call it before any work; [`search`] calls it again.
pub fn check_protocol(candidates: &[BoosterParams], k: usize) -> Result<()> {
    if candidates
        .iter()
        .any(|c| c.early_stopping_on == StoppingRows::HeldOut)
    {
        return Err(Error::Invalid(
            "tune needs early_stopping_on = \"inner-fold\": with \"held-out\" each fold's \
             round count is chosen on that fold's own labels, so neither the trials' CV scores \
             nor the nested estimate would be honest"
                .into(),
        ));
    }
    if k < 4 {
        return Err(Error::Invalid(format!(
            "tuning with early stopping on an inner fold needs at least 4 folds, not {k}: each \
             inner ranking is a CV over the other K-1 folds, which itself holds out one fold \
             and watches another"
        )));
    }
    Ok(())
}

/// Runs the nested search over `candidates` on `folds` (see the module docs).
pub fn search(
    inputs: &CvInputs<'_>,
    folds: &Folds,
    candidates: Vec<BoosterParams>,
    mut progress: impl FnMut(TuneProgress),
) -> Result<TuneOutput> {
    let k = folds.n_folds();
    check_protocol(&candidates, k)?;
    // `auto` settings are chosen once, for all the training rows, so that the winner's
    // parameters (written to best.toml) are the ones every CV here used.
    let candidates: Vec<BoosterParams> = candidates
        .iter()
        .map(|c| c.for_rows(inputs.labels.len()))
        .collect();
    let total = candidates.len() * k * k;
    let mut done = 0;
    let mut fitted = || {
        done += 1;
        progress(TuneProgress::Fitted { done, total });
    };
    // Binning depends on the dataset parameters only (of the searched ones, max_bin): one
    // dataset per distinct set.
    let mut datasets: HashMap<String, Dataset> = HashMap::new();
    for params in &candidates {
        if let std::collections::hash_map::Entry::Vacant(entry) =
            datasets.entry(params.dataset_params()?)
        {
            entry.insert(augmented_dataset(inputs, params)?);
        }
    }

    // Plain CV of every candidate; its fold predictions also serve the nested estimate.
    let mut cv_log_loss = Vec::new();
    let mut fold_probs: Vec<Vec<Vec<Probs>>> = Vec::new();
    for params in &candidates {
        let full = &datasets[&params.dataset_params()?];
        let mut oof = vec![[f64::NAN; 3]; inputs.labels.len()];
        let mut per_fold = Vec::new();
        for fold in 0..k {
            let rows = folds.rows_for(fold, params.early_stopping_on)?;
            let fit = fit_fold(full, inputs, &rows, params, |_, _| {})?;
            fitted();
            for (&row, p) in rows.held_out.iter().zip(&fit.held_out) {
                oof[row] = *p;
            }
            per_fold.push(fit.held_out);
        }
        cv_log_loss.push(metrics::log_loss(inputs.labels, &oof));
        fold_probs.push(per_fold);
    }
    let best = argmin(&cv_log_loss);

    // Inner rankings: for outer fold k, a CV over the other folds, renumbered.
    let mut inner_log_loss = Vec::new();
    for outer in 0..k {
        let (inner_folds, original_row) = folds.excluding(outer)?;
        let labels: Vec<Outcome> = original_row.iter().map(|&r| inputs.labels[r]).collect();
        let mut scores = Vec::new();
        for params in &candidates {
            let full = &datasets[&params.dataset_params()?];
            let mut oof = vec![[f64::NAN; 3]; labels.len()];
            for fold in 0..inner_folds.n_folds() {
                let inner = inner_folds.rows_for(fold, params.early_stopping_on)?;
                let to_original = |rows: &[usize]| -> Vec<usize> {
                    rows.iter().map(|&r| original_row[r]).collect()
                };
                let rows = FoldRows {
                    train: to_original(&inner.train),
                    stopping: to_original(&inner.stopping),
                    stopping_fold: inner.stopping_fold,
                    held_out: to_original(&inner.held_out),
                };
                let fit = fit_fold(full, inputs, &rows, params, |_, _| {})?;
                fitted();
                for (&row, p) in inner.held_out.iter().zip(&fit.held_out) {
                    oof[row] = *p;
                }
            }
            scores.push(metrics::log_loss(&labels, &oof));
        }
        inner_log_loss.push(scores);
    }

    // Fold k predicted by its inner winner, trained exactly as that candidate's plain CV
    // trained fold k (on the other folds): reuse those predictions.
    let chosen: Vec<usize> = inner_log_loss.iter().map(|s| argmin(s)).collect();
    let mut nested = vec![[f64::NAN; 3]; inputs.labels.len()];
    for (outer, &candidate) in chosen.iter().enumerate() {
        let (_, held_out) = folds.split(outer);
        for (&row, p) in held_out.iter().zip(&fold_probs[candidate][outer]) {
            nested[row] = *p;
        }
    }
    let nested_log_loss = metrics::log_loss(inputs.labels, &nested);
    Ok(TuneOutput {
        candidates,
        cv_log_loss,
        best,
        inner_log_loss,
        chosen,
        nested,
        nested_log_loss,
    })
}

/// Index of the smallest value (the first on a tie; NaN never wins).
fn argmin(values: &[f64]) -> usize {
    (1..values.len()).fold(0, |best, i| {
        if values[i] < values[best] || values[best].is_nan() {
            i
        } else {
            best
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lgbm::CsrOwned;

    #[test]
    fn candidates_are_seeded_start_with_the_base_and_stay_in_range() {
        let base = BoosterParams::default();
        let a = candidates(&base, 12, 7);
        assert_eq!(a, candidates(&base, 12, 7), "same seed, same candidates");
        assert_ne!(a, candidates(&base, 12, 8));
        assert_eq!(a.len(), 12);
        assert_eq!(a[0], base);
        for c in &a[1..] {
            assert!((8..=128).contains(&c.num_leaves));
            assert!((10..=200).contains(&c.min_data_in_leaf));
            assert!((0.3..=1.0).contains(&c.feature_fraction));
            assert!((0.4..=1.0).contains(&c.bagging_fraction));
            assert!((0.02..=0.2).contains(&c.learning_rate.or(f64::NAN)));
            assert!((0.01..=10.0).contains(&c.lambda_l2));
            assert!(MAX_BIN.contains(&c.max_bin.or(0)));
            assert_eq!((c.max_rounds, c.seed), (base.max_rounds, base.seed));
        }
        assert_eq!(candidates(&base, 0, 7).len(), 1);
    }

    #[test]
    fn rounds_to_significant_digits() {
        assert_eq!(round_to(0.123456, 3), 0.123);
        assert_eq!(round_to(12.3456, 3), 12.3);
        assert_eq!(round_to(0.0004567, 2), 0.00046);
    }

    #[test]
    fn argmin_takes_the_first_smallest() {
        assert_eq!(argmin(&[0.5, 0.3, 0.3, 0.4]), 1);
        assert_eq!(argmin(&[f64::NAN, 0.9]), 1);
    }

    /// Rows [a, b, a − b] and labels from the sign of a − b, plus noise; both orientations.
    fn data(n: usize) -> (CsrOwned, Vec<Outcome>) {
        let mut csr = CsrOwned {
            indptr: vec![0],
            n_cols: 3,
            ..Default::default()
        };
        let mut labels = Vec::new();
        let values: Vec<(f32, f32)> = (0..n)
            .map(|i| (((i * 7919) % 97) as f32, ((i * 104_729) % 89) as f32))
            .collect();
        for (i, &(a, b)) in values.iter().enumerate() {
            labels.push(match (a - b, i % 7) {
                (_, 0) => Outcome::Tie,
                (d, _) if d > 4.0 => Outcome::A,
                (d, _) if d < -4.0 => Outcome::B,
                _ => Outcome::Tie,
            });
        }
        for swapped in [false, true] {
            for &(a, b) in &values {
                let (a, b) = if swapped { (b, a) } else { (a, b) };
                for (col, value) in [a, b, a - b].into_iter().enumerate() {
                    csr.indices.push(col as i32);
                    csr.values.push(value);
                }
                csr.indptr.push(csr.indices.len() as i64);
            }
        }
        (csr, labels)
    }

    /// `search` on these training rows, with no test rows.
    fn search_rows(
        labels: &[Outcome],
        csr: &CsrOwned,
        folds: &Folds,
        candidates: Vec<BoosterParams>,
    ) -> Result<TuneOutput> {
        let none = CsrOwned {
            indptr: vec![0],
            n_cols: 3,
            ..Default::default()
        };
        let inputs = CvInputs {
            train: csr.view(),
            labels,
            test_as_given: none.view(),
            test_swapped: none.view(),
        };
        search(&inputs, folds, candidates, |_| {})
    }

    fn run(labels: &[Outcome], csr: &CsrOwned, folds: &Folds) -> TuneOutput {
        let base = BoosterParams {
            num_threads: 1,
            max_rounds: 60,
            early_stopping_rounds: Auto::Set(10),
            ..Default::default()
        };
        search_rows(labels, csr, folds, candidates(&base, 3, 11)).unwrap()
    }

    #[test]
    fn nested_scores_never_use_the_outer_folds_labels() {
        let (csr, labels) = data(400);
        let folds = Folds::stratified(&labels, 4, 3).unwrap();
        let out = run(&labels, &csr, &folds);
        assert_eq!(out.inner_log_loss.len(), 4);
        assert!(out.nested_log_loss.is_finite());
        assert_eq!(out.best, argmin(&out.cv_log_loss));

        // Relabel fold 2's rows: the ranking made for outer fold 2 must not move at all
        // (bit for bit), while the rankings of the other outer folds, which train or score
        // on fold 2, do.
        let mut relabelled = labels.clone();
        for row in folds.split(2).1 {
            relabelled[row] = relabelled[row].swapped();
        }
        let again = run(&relabelled, &csr, &folds);
        assert_eq!(again.inner_log_loss[2], out.inner_log_loss[2]);
        assert_eq!(again.chosen[2], out.chosen[2]);
        for outer in [0, 1, 3] {
            assert_ne!(again.inner_log_loss[outer], out.inner_log_loss[outer]);
        }
        // The nested predictions of fold 2 come from models that neither trained on nor
        // watched fold 2: bit for bit the same. Fold 1's models watched fold 2 for early
        // stopping, so theirs move.
        let held_out = |fold: usize, out: &TuneOutput| -> Vec<Probs> {
            folds.split(fold).1.iter().map(|&r| out.nested[r]).collect()
        };
        assert_eq!(held_out(2, &again), held_out(2, &out));
        assert_ne!(held_out(1, &again), held_out(1, &out));
        assert!(out.nested.iter().flatten().all(|p| p.is_finite()));
    }

    #[test]
    fn held_out_stopping_is_refused() {
        let (csr, labels) = data(100);
        let folds = Folds::stratified(&labels, 4, 3).unwrap();
        let peeking = BoosterParams {
            early_stopping_on: StoppingRows::HeldOut,
            ..Default::default()
        };
        let Err(error) = search_rows(&labels, &csr, &folds, vec![peeking]) else {
            panic!("a search with held-out stopping ran");
        };
        assert!(error.to_string().contains("early_stopping_on"), "{error}");
    }

    #[test]
    fn the_search_is_reproducible() {
        let (csr, labels) = data(300);
        let folds = Folds::stratified(&labels, 4, 1).unwrap();
        let (a, b) = (run(&labels, &csr, &folds), run(&labels, &csr, &folds));
        assert_eq!(a.cv_log_loss, b.cv_log_loss);
        assert_eq!(a.inner_log_loss, b.inner_log_loss);
        assert_eq!(a.nested_log_loss, b.nested_log_loss);
    }
}
