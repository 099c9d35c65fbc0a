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
    fn accuracy_and_prior() {
        let labels = [Outcome::A, Outcome::B, Outcome::B, Outcome::Tie];
        let probs = [[0.5, 0.3, 0.2]; 4];
        assert_eq!(accuracy(&labels, &probs), 0.25);
        assert_eq!(class_prior(&labels), [0.25, 0.5, 0.25]);
    }
}
