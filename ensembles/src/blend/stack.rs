//! Stacking: a multinomial logistic regression (linfa) on the members' log-probabilities.
use super::members::MemberMatrix;
use super::weighted::softmax;
use crate::{Error, Result};
use ensemble_core::{Outcome, Probs};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};

/// L2 penalty on the coefficients, against the loss summed (not averaged) over rows: it only
/// keeps the fit finite when a member separates the classes.
const L2_PENALTY: f64 = 1.0;
const MAX_ITERATIONS: u64 = 500;
/// Stops when the mean (per-row) gradient is this small.
const GRADIENT_TOLERANCE_PER_ROW: f64 = 1e-7;

/// A fitted stacking model: softmax(x·W + b) over x, the members' log-probabilities. Kept as
/// plain coefficients (not linfa's fitted type) so that `blend.json` can carry it and
/// `ensemble blend --apply` predicts with exactly the numbers the fit made.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackModel {
    /// One row per member and outcome (member-major, as the features), one column per class.
    coefficients: Vec<Probs>,
    intercept: Probs,
}

impl StackModel {
    pub fn fit(oof: &MemberMatrix, labels: &[Outcome]) -> Result<StackModel> {
        let targets: Array1<usize> = labels.iter().map(|l| l.index()).collect();
        let dataset = Dataset::new(features(oof), targets);
        let model = MultiLogisticRegression::default()
            .alpha(L2_PENALTY)
            .max_iterations(MAX_ITERATIONS)
            .gradient_tolerance(GRADIENT_TOLERANCE_PER_ROW * labels.len() as f64)
            .fit(&dataset)
            .map_err(|e| Error::Stacking(e.to_string()))?;
        if model.classes() != [0, 1, 2] {
            return Err(Error::Stacking(format!(
                "the rows it is fitted on hold only the outcomes {:?}; all three are needed",
                model.classes()
            )));
        }
        let (params, intercept) = (model.params(), model.intercept());
        Ok(StackModel {
            coefficients: params
                .rows()
                .into_iter()
                .map(|row| [row[0], row[1], row[2]])
                .collect(),
            intercept: [intercept[0], intercept[1], intercept[2]],
        })
    }

    /// What [`super::FittedBlend::check`] checks: one coefficient row per member and outcome,
    /// without which `predict` would index past the members.
    pub(super) fn check(&self, n_members: usize) -> std::result::Result<(), String> {
        if self.coefficients.len() == 3 * n_members {
            return Ok(());
        }
        Err(format!(
            "model.coefficients has {} rows; {n_members} members need {} (one per member and \
             outcome)",
            self.coefficients.len(),
            3 * n_members
        ))
    }

    pub fn predict(&self, members: &MemberMatrix) -> Vec<Probs> {
        (0..members.n_rows())
            .map(|r| {
                let mut scores = self.intercept;
                for (j, w) in self.coefficients.iter().enumerate() {
                    let x = members.row(r)[j / 3][j % 3].ln();
                    for c in 0..3 {
                        scores[c] += x * w[c];
                    }
                }
                softmax(scores)
            })
            .collect()
    }
}

/// One row per battle: each member's log-probability of each outcome.
fn features(members: &MemberMatrix) -> Array2<f64> {
    let width = 3 * members.n_members();
    Array2::from_shape_fn((members.n_rows(), width), |(r, j)| {
        members.row(r)[j / 3][j % 3].ln()
    })
}
