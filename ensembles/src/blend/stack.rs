//! Stacking: a multinomial logistic regression (linfa) on the members' log-probabilities.
use super::members::MemberMatrix;
use crate::{Error, Outcome, Probs, Result};
use linfa::prelude::*;
use linfa_logistic::{MultiFittedLogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, Array2};

/// L2 penalty on the coefficients, against the loss summed (not averaged) over rows: it only
/// keeps the fit finite when a member separates the classes.
const L2_PENALTY: f64 = 1.0;
const MAX_ITERATIONS: u64 = 500;
/// Stops when the mean (per-row) gradient is this small.
const GRADIENT_TOLERANCE_PER_ROW: f64 = 1e-7;

#[derive(Clone, Debug)]
pub struct StackModel {
    model: MultiFittedLogisticRegression<f64, usize>,
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
        Ok(StackModel { model })
    }

    pub fn predict(&self, members: &MemberMatrix) -> Vec<Probs> {
        self.model
            .predict_probabilities(&features(members))
            .rows()
            .into_iter()
            .map(|row| [row[0], row[1], row[2]])
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
