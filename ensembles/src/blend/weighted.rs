//! Weighted blends: a convex combination of the members' probabilities or log-probabilities,
//! optionally sharpened or softened by a fitted temperature.
use super::members::MemberMatrix;
use super::simplex::{self, Objective};
use crate::{Error, Result};
use ensemble_core::{Outcome, Probs};

/// What the weights average.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The weighted mean of the probabilities.
    Probability,
    /// The weighted mean of the log-probabilities, softmax-renormalised (a geometric mean).
    Logit,
}

/// How the weights are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightChoice {
    /// Non-negative weights summing to 1 that minimise the OOF log loss.
    Auto,
    /// Given weights, one per member, non-negative; rescaled to sum to 1.
    Fixed(Vec<f64>),
}

/// How far from 1 the weights of a saved blend may sum: the fit renormalises them, so only
/// rounding separates them from 1; a hand edit that breaks the sum is refused.
const WEIGHT_SUM_TOLERANCE: f64 = 1e-9;

/// A fitted weighted blend.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBlend {
    pub space: Space,
    pub weights: Vec<f64>,
    /// 1 / temperature: the blended log-probabilities are multiplied by it before the softmax.
    pub inverse_temperature: f64,
}

impl WeightedBlend {
    /// The optimiser starts from equal weights: nothing else, so that a refit inside the
    /// folds depends on its own rows only.
    pub fn fit(
        space: Space,
        choice: &WeightChoice,
        calibrate: bool,
        oof: &MemberMatrix,
        labels: &[Outcome],
    ) -> Result<WeightedBlend> {
        let uniform = vec![1.0 / oof.n_members() as f64; oof.n_members()];
        let weights = match choice {
            WeightChoice::Fixed(weights) => normalised_fixed(weights, oof.n_members())?,
            WeightChoice::Auto if oof.n_members() == 1 => vec![1.0],
            WeightChoice::Auto => match space {
                Space::Probability => {
                    simplex::minimise(&ProbabilityLoss::new(oof, labels), &uniform)?
                }
                Space::Logit => simplex::minimise(&LogitLoss::new(oof, labels), &uniform)?,
            },
        };
        let mut blend = WeightedBlend {
            space,
            weights,
            inverse_temperature: 1.0,
        };
        if calibrate {
            let scores: Vec<Probs> = (0..oof.n_rows())
                .map(|r| blend.log_scores(oof.row(r)))
                .collect();
            blend.inverse_temperature = fit_inverse_temperature(&scores, labels);
        }
        Ok(blend)
    }

    /// What [`super::FittedBlend::check`] checks: one weight per member, each finite and
    /// non-negative, summing to 1 (as the fit leaves them, up to rounding), and a finite
    /// positive temperature; otherwise `predict` gives NaN or silently other probabilities.
    pub(super) fn check(&self, n_members: usize) -> std::result::Result<(), String> {
        if self.weights.len() != n_members {
            return Err(format!(
                "model.weights has {} entries for {n_members} members",
                self.weights.len()
            ));
        }
        if let Some(k) = bad_weight(&self.weights) {
            return Err(format!(
                "model.weights[{k}] = {}: a weight must be finite and non-negative",
                self.weights[k]
            ));
        }
        let total: f64 = self.weights.iter().sum();
        if (total - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
            return Err(format!("model.weights sum to {total}, not 1"));
        }
        let beta = self.inverse_temperature;
        if !(beta.is_finite() && beta > 0.0) {
            return Err(format!(
                "model.inverse_temperature = {beta}: it must be finite and positive"
            ));
        }
        Ok(())
    }

    /// Unnormalised log-probabilities of one row before the temperature.
    fn log_scores(&self, members: &[Probs]) -> Probs {
        let mut scores = [0.0; 3];
        for (w, p) in self.weights.iter().zip(members) {
            for c in 0..3 {
                scores[c] += w * match self.space {
                    Space::Probability => p[c],
                    Space::Logit => p[c].ln(),
                };
            }
        }
        match self.space {
            Space::Probability => scores.map(f64::ln),
            Space::Logit => scores,
        }
    }

    pub fn predict(&self, members: &MemberMatrix) -> Vec<Probs> {
        (0..members.n_rows())
            .map(|r| {
                let row = members.row(r);
                if self.space == Space::Probability && self.inverse_temperature == 1.0 {
                    // The plain mixture, without a round trip through logarithms.
                    let mut mixed = [0.0; 3];
                    for (w, p) in self.weights.iter().zip(row) {
                        for c in 0..3 {
                            mixed[c] += w * p[c];
                        }
                    }
                    let total: f64 = mixed.iter().sum();
                    mixed.map(|v| v / total)
                } else {
                    softmax(self.log_scores(row).map(|s| s * self.inverse_temperature))
                }
            })
            .collect()
    }
}

fn normalised_fixed(weights: &[f64], n_members: usize) -> Result<Vec<f64>> {
    if weights.len() != n_members {
        return Err(Error::Invalid(format!(
            "{} weights given for {n_members} members",
            weights.len()
        )));
    }
    if bad_weight(weights).is_some() {
        return Err(Error::Invalid(format!(
            "weights must be finite and non-negative, got {weights:?}"
        )));
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(Error::Invalid("the weights sum to 0".into()));
    }
    Ok(weights.iter().map(|w| w / total).collect())
}

/// The first weight that is not a finite non-negative number.
fn bad_weight(weights: &[f64]) -> Option<usize> {
    weights.iter().position(|w| !w.is_finite() || *w < 0.0)
}

pub(super) fn softmax(scores: Probs) -> Probs {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp = scores.map(|s| (s - max).exp());
    let total: f64 = exp.iter().sum();
    exp.map(|e| e / total)
}

/// −mean ln Σₖ wₖ qᵢₖ, with qᵢₖ member k's probability of row i's label.
struct ProbabilityLoss {
    n_members: usize,
    label_probs: Vec<f64>,
}

impl ProbabilityLoss {
    fn new(oof: &MemberMatrix, labels: &[Outcome]) -> ProbabilityLoss {
        let label_probs = labels
            .iter()
            .enumerate()
            .flat_map(|(r, label)| oof.row(r).iter().map(|p| p[label.index()]))
            .collect();
        ProbabilityLoss {
            n_members: oof.n_members(),
            label_probs,
        }
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.label_probs.chunks_exact(self.n_members)
    }
}

impl Objective for ProbabilityLoss {
    fn dim(&self) -> usize {
        self.n_members
    }

    fn value(&self, weights: &[f64]) -> f64 {
        let total: f64 = self.rows().map(|q| -dot(weights, q).ln()).sum();
        total / (self.label_probs.len() / self.n_members) as f64
    }

    fn derivatives(&self, weights: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
        let m = self.n_members;
        let (mut value, mut gradient, mut hessian) = (0.0, vec![0.0; m], vec![0.0; m * m]);
        let mut ratio = vec![0.0; m];
        for q in self.rows() {
            let mixed = dot(weights, q);
            value -= mixed.ln();
            for k in 0..m {
                ratio[k] = q[k] / mixed;
                gradient[k] -= ratio[k];
            }
            for k in 0..m {
                let rk = ratio[k];
                for (h, rj) in hessian[k * m + k..(k + 1) * m].iter_mut().zip(&ratio[k..]) {
                    *h += rk * rj;
                }
            }
        }
        finish(value, gradient, hessian, self.label_probs.len() / m)
    }
}

/// mean [logsumexp(zᵢ) − zᵢ,label], with zᵢ = Σₖ wₖ ln pᵢₖ.
struct LogitLoss {
    n_members: usize,
    /// ln p for each row, member and class.
    log_probs: Vec<Probs>,
    labels: Vec<usize>,
}

impl LogitLoss {
    fn new(oof: &MemberMatrix, labels: &[Outcome]) -> LogitLoss {
        LogitLoss {
            n_members: oof.n_members(),
            log_probs: (0..oof.n_rows())
                .flat_map(|r| oof.row(r).iter().map(|p| p.map(f64::ln)))
                .collect(),
            labels: labels.iter().map(|l| l.index()).collect(),
        }
    }

    fn blended(weights: &[f64], logs: &[Probs]) -> Probs {
        let mut z = [0.0; 3];
        for (w, l) in weights.iter().zip(logs) {
            for c in 0..3 {
                z[c] += w * l[c];
            }
        }
        z
    }
}

impl Objective for LogitLoss {
    fn dim(&self) -> usize {
        self.n_members
    }

    fn value(&self, weights: &[f64]) -> f64 {
        let total: f64 = self
            .log_probs
            .chunks_exact(self.n_members)
            .zip(&self.labels)
            .map(|(logs, &y)| {
                let z = LogitLoss::blended(weights, logs);
                log_sum_exp(z) - z[y]
            })
            .sum();
        total / self.labels.len() as f64
    }

    fn derivatives(&self, weights: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
        let m = self.n_members;
        let (mut value, mut gradient, mut hessian) = (0.0, vec![0.0; m], vec![0.0; m * m]);
        let mut expected = vec![0.0; m];
        // √s_c (ln p_kc − E_s[ln p_k]) for each class c, members contiguous: the Hessian is the
        // sum of their outer products (the covariance of the log-probabilities under s).
        let mut centred = vec![0.0; 3 * m];
        for (logs, &y) in self.log_probs.chunks_exact(m).zip(&self.labels) {
            let z = LogitLoss::blended(weights, logs);
            let lse = log_sum_exp(z);
            value += lse - z[y];
            let s = z.map(|v| (v - lse).exp());
            for k in 0..m {
                expected[k] = s[0] * logs[k][0] + s[1] * logs[k][1] + s[2] * logs[k][2];
                gradient[k] += expected[k] - logs[k][y];
            }
            for c in 0..3 {
                let root = s[c].sqrt();
                for k in 0..m {
                    centred[c * m + k] = root * (logs[k][c] - expected[k]);
                }
            }
            for u in centred.chunks_exact(m) {
                for k in 0..m {
                    let uk = u[k];
                    for (h, uj) in hessian[k * m + k..(k + 1) * m].iter_mut().zip(&u[k..]) {
                        *h += uk * uj;
                    }
                }
            }
        }
        finish(value, gradient, hessian, self.labels.len())
    }
}

/// Divides the sums by the row count and fills the Hessian's lower triangle.
fn finish(
    value: f64,
    gradient: Vec<f64>,
    mut hessian: Vec<f64>,
    n_rows: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let n = n_rows as f64;
    let m = gradient.len();
    for k in 0..m {
        for j in k..m {
            hessian[k * m + j] /= n;
            hessian[j * m + k] = hessian[k * m + j];
        }
    }
    (
        value / n,
        gradient.into_iter().map(|g| g / n).collect(),
        hessian,
    )
}

fn log_sum_exp(z: Probs) -> f64 {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The β > 0 minimising mean [logsumexp(β zᵢ) − β zᵢ,label]: a convex problem in one variable,
/// solved by safeguarded Newton steps.
pub(crate) fn fit_inverse_temperature(scores: &[Probs], labels: &[Outcome]) -> f64 {
    let loss_and_derivatives = |beta: f64| {
        let (mut loss, mut first, mut second) = (0.0, 0.0, 0.0);
        for (z, label) in scores.iter().zip(labels) {
            let scaled = z.map(|v| v * beta);
            let lse = log_sum_exp(scaled);
            let s = scaled.map(|v| (v - lse).exp());
            let mean = s[0] * z[0] + s[1] * z[1] + s[2] * z[2];
            let square = s[0] * z[0] * z[0] + s[1] * z[1] * z[1] + s[2] * z[2] * z[2];
            loss += lse - beta * z[label.index()];
            first += mean - z[label.index()];
            second += square - mean * mean;
        }
        let n = scores.len() as f64;
        (loss / n, first / n, second / n)
    };
    let mut beta = 1.0;
    for _ in 0..100 {
        let (loss, first, second) = loss_and_derivatives(beta);
        if first.abs() < 1e-12 || second <= 0.0 {
            break;
        }
        let newton = -first / second;
        // Halve the step until it stays positive and lowers the loss.
        let mut step = newton;
        while beta + step <= 0.0 || loss_and_derivatives(beta + step).0 > loss {
            step *= 0.5;
            if step.abs() < 1e-15 {
                return beta;
            }
        }
        beta += step;
        if step.abs() < 1e-12 * beta {
            break;
        }
    }
    beta
}
