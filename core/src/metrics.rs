//! The competition's metric and companions.
use crate::{Outcome, Probs};

/// Probabilities are clipped to [EPS, 1 − EPS] before the log, as Kaggle's metric does.
pub const EPS: f64 = 1e-15;

/// Multiclass log loss as scikit-learn computes it: each row clipped, then renormalised.
pub fn log_loss(labels: &[Outcome], probs: &[Probs]) -> f64 {
    assert_eq!(labels.len(), probs.len(), "one prediction per label");
    if labels.is_empty() {
        return f64::NAN;
    }
    let total: f64 = labels
        .iter()
        .zip(probs)
        .map(|(label, p)| {
            let clipped = p.map(|v| v.clamp(EPS, 1.0 - EPS));
            let sum: f64 = clipped.iter().sum();
            -(clipped[label.index()] / sum).ln()
        })
        .sum();
    total / labels.len() as f64
}

/// Share of rows whose most probable class is the label (ties go to the lower index).
pub fn accuracy(labels: &[Outcome], probs: &[Probs]) -> f64 {
    assert_eq!(labels.len(), probs.len(), "one prediction per label");
    let hits = labels
        .iter()
        .zip(probs)
        .filter(|(label, p)| argmax(p) == label.index())
        .count();
    hits as f64 / labels.len() as f64
}

pub fn argmax(p: &Probs) -> usize {
    (1..3).fold(0, |best, i| if p[i] > p[best] { i } else { best })
}

/// Class frequencies of the labels: the prediction of a model that knows only the prior.
pub fn class_prior(labels: &[Outcome]) -> Probs {
    let mut counts = [0.0; 3];
    for label in labels {
        counts[label.index()] += 1.0;
    }
    counts.map(|c| c / labels.len() as f64)
}

/// Per-fold losses of a changed model against a baseline on the same folds: how much the
/// change moves the loss, and whether that is more than fold-to-fold noise.
///
/// Fold differences are not independent: the fold models share most of their training rows,
/// so `sd / √K` understates the noise of the mean. The standard error here is Nadeau and
/// Bengio's corrected resampled one (Machine Learning 52, 2003): the variance of the mean is
/// `sd² · (1/K + n_test/n_train)` instead of `sd²/K`, a factor `1 + K·n_test/n_train`
/// (2.25 at K = 10 with K−2 training folds; 2.0 with K−1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedDifference {
    /// Mean of new − base over the folds (negative: the change is better).
    pub mean: f64,
    /// Sample standard deviation of the per-fold differences.
    pub sd: f64,
    /// `sd · √(1/K + n_test/n_train)`: the noise of `mean`, corrected for overlapping
    /// training sets.
    pub standard_error: f64,
    /// `sd / √K`, as if folds were independent: too small, shown for comparison only.
    pub naive_standard_error: f64,
    /// Folds where the new loss is lower.
    pub better: usize,
    pub folds: usize,
}

impl PairedDifference {
    /// `None` unless both have the same number of folds, at least two. `test_train_ratio` is
    /// the held-out rows per fold over the rows a fold model trained on (take the larger when
    /// the two runs differ: it gives the wider, safer error).
    pub fn new(base: &[f64], new: &[f64], test_train_ratio: f64) -> Option<PairedDifference> {
        let folds = base.len();
        if folds < 2 || new.len() != folds || test_train_ratio.is_nan() || test_train_ratio < 0.0 {
            return None;
        }
        let differences: Vec<f64> = new.iter().zip(base).map(|(n, b)| n - b).collect();
        let mean = differences.iter().sum::<f64>() / folds as f64;
        let variance =
            differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (folds - 1) as f64;
        let sd = variance.sqrt();
        Some(PairedDifference {
            mean,
            sd,
            standard_error: sd * (1.0 / folds as f64 + test_train_ratio).sqrt(),
            naive_standard_error: sd / (folds as f64).sqrt(),
            better: differences.iter().filter(|&&d| d < 0.0).count(),
            folds,
        })
    }

    /// `mean` in (corrected) standard errors (0 when the folds agree exactly, ±∞ for a
    /// difference without spread).
    pub fn standard_errors(&self) -> f64 {
        if self.mean == 0.0 {
            0.0
        } else {
            self.mean / self.standard_error
        }
    }

    /// The change lowers the loss by more than twice its corrected standard error.
    pub fn clearly_better(&self) -> bool {
        self.standard_errors() < -2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn log_loss_matches_hand_computed_values() {
        let labels = [Outcome::A, Outcome::B, Outcome::Tie];
        let probs = [[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.25, 0.25, 0.5]];
        let expected = -(0.7f64.ln() + 0.5f64.ln() + 0.5f64.ln()) / 3.0;
        assert_abs_diff_eq!(log_loss(&labels, &probs), expected, epsilon = 1e-12);
        assert_abs_diff_eq!(expected, 0.580_989_8, epsilon = 1e-6);
    }

    #[test]
    fn log_loss_clips_zero_probabilities() {
        let loss = log_loss(&[Outcome::A], &[[0.0, 1.0, 0.0]]);
        assert_abs_diff_eq!(loss, -(1e-15f64 / (1.0 + 2e-15)).ln(), epsilon = 1e-9);
        assert!(loss.is_finite());
    }

    #[test]
    fn uniform_prediction_scores_ln3() {
        let labels = [Outcome::A, Outcome::Tie];
        let loss = log_loss(&labels, &[[1.0 / 3.0; 3]; 2]);
        assert_abs_diff_eq!(loss, 3f64.ln(), epsilon = 1e-12);
    }

    #[test]
    fn paired_difference_of_fold_losses() {
        let base = [0.50, 0.40, 0.60, 0.45];
        let new = [0.48, 0.41, 0.57, 0.44];
        // Differences -0.02, 0.01, -0.03, -0.01: mean -0.0125, squared deviations
        // 0.0075², 0.0225², 0.0175², 0.0025² sum to 0.000875, sd = √(0.000875 / 3).
        // Four folds, each model trained on two of them (inner-fold stopping): n_test/n_train
        // = 1/2, so the variance of the mean is sd² (1/4 + 1/2), three times the naive sd²/4.
        let d = PairedDifference::new(&base, &new, 0.5).unwrap();
        assert_abs_diff_eq!(d.mean, -0.0125, epsilon = 1e-12);
        let sd = (0.000875f64 / 3.0).sqrt();
        assert_abs_diff_eq!(d.sd, sd, epsilon = 1e-12);
        assert_abs_diff_eq!(d.naive_standard_error, sd / 2.0, epsilon = 1e-12);
        assert_abs_diff_eq!(d.standard_error, sd * 0.75f64.sqrt(), epsilon = 1e-12);
        assert_abs_diff_eq!(d.standard_error, 0.014_79, epsilon = 1e-5);
        assert_eq!((d.better, d.folds), (3, 4));
        assert_abs_diff_eq!(d.standard_errors(), -0.0125 / 0.014_79, epsilon = 1e-3);
        assert!(!d.clearly_better());
        // Ten folds trained on eight: the variance factor is 1 + 10/8 = 2.25.
        let ten: Vec<f64> = (0..10).map(|i| 0.5 + 0.01 * (i % 3) as f64).collect();
        let moved: Vec<f64> = ten
            .iter()
            .enumerate()
            .map(|(i, b)| b - 0.001 * i as f64)
            .collect();
        let d = PairedDifference::new(&ten, &moved, 1.0 / 8.0).unwrap();
        assert_abs_diff_eq!(
            (d.standard_error / d.naive_standard_error).powi(2),
            2.25,
            epsilon = 1e-12
        );
        let shifted: Vec<f64> = base.iter().map(|b| b - 0.01).collect();
        let d = PairedDifference::new(&base, &shifted, 0.5).unwrap();
        assert!(d.clearly_better() && d.sd < 1e-12);
        assert_eq!(
            PairedDifference::new(&base, &base, 0.5)
                .unwrap()
                .standard_errors(),
            0.0
        );
        assert_eq!(PairedDifference::new(&base, &base[..3], 0.5), None);
        assert_eq!(PairedDifference::new(&base[..1], &new[..1], 0.5), None);
        assert_eq!(PairedDifference::new(&base, &new, f64::NAN), None);
    }

    #[test]
    fn accuracy_and_prior() {
        let labels = [Outcome::A, Outcome::B, Outcome::B, Outcome::Tie];
        let probs = [[0.5, 0.3, 0.2]; 4];
        assert_eq!(accuracy(&labels, &probs), 0.25);
        assert_eq!(class_prior(&labels), [0.25, 0.5, 0.25]);
    }
}
