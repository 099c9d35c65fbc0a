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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedDifference {
    /// Mean of new − base over the folds (negative: the change is better).
    pub mean: f64,
    /// Sample standard deviation of the per-fold differences.
    pub sd: f64,
    /// `sd / √folds`: the noise of `mean`.
    pub standard_error: f64,
    /// Folds where the new loss is lower.
    pub better: usize,
    pub folds: usize,
}

impl PairedDifference {
    /// `None` unless both have the same number of folds, at least two.
    pub fn new(base: &[f64], new: &[f64]) -> Option<PairedDifference> {
        let folds = base.len();
        if folds < 2 || new.len() != folds {
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
            standard_error: sd / (folds as f64).sqrt(),
            better: differences.iter().filter(|&&d| d < 0.0).count(),
            folds,
        })
    }

    /// `mean` in standard errors (0 when the folds agree exactly, ±∞ for a difference
    /// without spread).
    pub fn standard_errors(&self) -> f64 {
        if self.mean == 0.0 {
            0.0
        } else {
            self.mean / self.standard_error
        }
    }

    /// The change lowers the loss by more than twice its standard error.
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
        let d = PairedDifference::new(&base, &new).unwrap();
        assert_abs_diff_eq!(d.mean, -0.0125, epsilon = 1e-12);
        assert_abs_diff_eq!(d.sd, (0.000875f64 / 3.0).sqrt(), epsilon = 1e-12);
        assert_abs_diff_eq!(d.standard_error, d.sd / 2.0, epsilon = 1e-12);
        assert_eq!((d.better, d.folds), (3, 4));
        // -0.0125 against 2 × 0.00427: not clearly better.
        assert_abs_diff_eq!(
            d.standard_errors(),
            -0.0125 / d.standard_error,
            epsilon = 1e-12
        );
        assert!(!d.clearly_better());
        let shifted: Vec<f64> = base.iter().map(|b| b - 0.01).collect();
        let d = PairedDifference::new(&base, &shifted).unwrap();
        assert!(d.clearly_better() && d.sd < 1e-12);
        assert_eq!(
            PairedDifference::new(&base, &base)
                .unwrap()
                .standard_errors(),
            0.0
        );
        assert_eq!(PairedDifference::new(&base, &base[..3]), None);
        assert_eq!(PairedDifference::new(&base[..1], &new[..1]), None);
    }

    #[test]
    fn accuracy_and_prior() {
        let labels = [Outcome::A, Outcome::B, Outcome::B, Outcome::Tie];
        let probs = [[0.5, 0.3, 0.2]; 4];
        assert_eq!(accuracy(&labels, &probs), 0.25);
        assert_eq!(class_prior(&labels), [0.25, 0.5, 0.25]);
    }
}
