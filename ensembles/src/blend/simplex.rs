//! Minimising a smooth convex function over the probability simplex (weights ≥ 0 summing to 1)
//! by active-set Newton steps: Newton on the face of the currently positive weights, a step cut
//! short where a weight reaches zero, and a zero weight freed again when its gradient says that
//! raising it lowers the loss. Convergence is quadratic, so the optimum is found to machine
//! precision in a few dozen evaluations.
use crate::{Error, Result};

/// A twice-differentiable convex function of the weights.
pub(crate) trait Objective {
    fn dim(&self) -> usize;
    fn value(&self, weights: &[f64]) -> f64;
    /// The value, the gradient and the Hessian (row-major, dim × dim).
    fn derivatives(&self, weights: &[f64]) -> (f64, Vec<f64>, Vec<f64>);
}

const MAX_ITERATIONS: usize = 200;
/// Stops when the loss the Newton step promises to remove falls below this (relative) amount.
const DECREMENT_TOLERANCE: f64 = 1e-14;
/// A zero weight re-enters when its gradient is this much below the positive weights' gradient.
const KKT_TOLERANCE: f64 = 1e-10;
const ARMIJO: f64 = 1e-4;

/// The minimising weights, searched from `start` (non-negative, summing to 1); fails only if
/// Newton has not converged after many iterations.
pub(crate) fn minimise(objective: &impl Objective, start: &[f64]) -> Result<Vec<f64>> {
    let dim = objective.dim();
    let mut weights = start.to_vec();
    let mut free: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
    for _ in 0..MAX_ITERATIONS {
        let (value, gradient, hessian) = objective.derivatives(&weights);
        let direction = newton_direction(&gradient, &hessian, &free);
        let promised = -dot(&gradient, &direction);
        let improved = (promised > DECREMENT_TOLERANCE * value.abs().max(1.0))
            .then(|| line_search(objective, &weights, value, &direction, promised))
            .flatten();
        if let Some((next, blocked)) = improved {
            weights = next;
            if let Some(k) = blocked {
                free[k] = false;
            }
            continue;
        }
        // Optimal on this face: free the zero weight whose gradient most undercuts the face's.
        let face: Vec<usize> = (0..dim).filter(|&k| free[k]).collect();
        let face_gradient = face.iter().map(|&k| gradient[k]).sum::<f64>() / face.len() as f64;
        let entering = (0..dim)
            .filter(|&k| !free[k] && gradient[k] < face_gradient - KKT_TOLERANCE)
            .min_by(|&a, &b| gradient[a].total_cmp(&gradient[b]));
        match entering {
            Some(k) => free[k] = true,
            None => return Ok(weights),
        }
    }
    Err(Error::Invalid(format!(
        "the weights did not converge in {MAX_ITERATIONS} Newton iterations (last {weights:?})"
    )))
}

/// Backtracks from the longest feasible step along `direction` until the loss drops enough
/// (Armijo). Returns the new weights and the weight that the step drove to zero, if it went
/// that far; `None` when no step lowers the loss (rounding noise swamps what is left).
fn line_search(
    objective: &impl Objective,
    weights: &[f64],
    value: f64,
    direction: &[f64],
    promised: f64,
) -> Option<(Vec<f64>, Option<usize>)> {
    let mut max_step = 1.0;
    let mut blocking = None;
    for (k, (&w, &d)) in weights.iter().zip(direction).enumerate() {
        if d < 0.0 && -w / d < max_step {
            max_step = -w / d;
            blocking = Some(k);
        }
    }
    let mut step = max_step;
    while step > 1e-14 {
        let mut candidate: Vec<f64> = weights
            .iter()
            .zip(direction)
            .map(|(w, d)| (w + step * d).max(0.0))
            .collect();
        let blocked = blocking.filter(|_| step == max_step);
        if let Some(k) = blocked {
            candidate[k] = 0.0;
        }
        let total: f64 = candidate.iter().sum();
        candidate.iter_mut().for_each(|w| *w /= total);
        let candidate_value = objective.value(&candidate);
        if candidate_value < value && candidate_value <= value - ARMIJO * step * promised {
            return Some((candidate, blocked));
        }
        step *= 0.5;
    }
    None
}

/// The Newton step restricted to the free weights and to directions that keep the sum at 1:
/// solves [H 1; 1ᵀ 0] [d; ν] = [−g; 0] on the free coordinates. A tiny ridge keeps the system
/// solvable when members are (nearly) identical.
fn newton_direction(gradient: &[f64], hessian: &[f64], free: &[bool]) -> Vec<f64> {
    let dim = gradient.len();
    let face: Vec<usize> = (0..dim).filter(|&k| free[k]).collect();
    let mut direction = vec![0.0; dim];
    if face.len() < 2 {
        return direction;
    }
    let size = face.len() + 1;
    let mean_diagonal = face.iter().map(|&k| hessian[k * dim + k]).sum::<f64>() / face.len() as f64;
    let ridge = 1e-10 * mean_diagonal + 1e-300;
    let mut system = vec![0.0; size * (size + 1)];
    let width = size + 1;
    for (i, &a) in face.iter().enumerate() {
        for (j, &b) in face.iter().enumerate() {
            system[i * width + j] = hessian[a * dim + b] + if i == j { ridge } else { 0.0 };
        }
        system[i * width + face.len()] = 1.0;
        system[face.len() * width + i] = 1.0;
        system[i * width + size] = -gradient[a];
    }
    if let Some(solution) = solve(&mut system, size) {
        for (i, &k) in face.iter().enumerate() {
            direction[k] = solution[i];
        }
    }
    direction
}

/// Gaussian elimination with partial pivoting on an augmented `size × (size + 1)` matrix.
fn solve(augmented: &mut [f64], size: usize) -> Option<Vec<f64>> {
    let width = size + 1;
    for column in 0..size {
        let pivot = (column..size).max_by(|&a, &b| {
            augmented[a * width + column]
                .abs()
                .total_cmp(&augmented[b * width + column].abs())
        })?;
        if augmented[pivot * width + column].abs() < 1e-300 {
            return None;
        }
        for j in 0..width {
            augmented.swap(column * width + j, pivot * width + j);
        }
        for row in column + 1..size {
            let factor = augmented[row * width + column] / augmented[column * width + column];
            for j in column..width {
                augmented[row * width + j] -= factor * augmented[column * width + j];
            }
        }
    }
    let mut solution = vec![0.0; size];
    for row in (0..size).rev() {
        let known: f64 = (row + 1..size)
            .map(|j| augmented[row * width + j] * solution[j])
            .sum();
        solution[row] = (augmented[row * width + size] - known) / augmented[row * width + row];
    }
    solution.iter().all(|v| v.is_finite()).then_some(solution)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ½‖w − target‖²_A: its simplex minimiser is known when the target lies on the simplex.
    struct Quadratic {
        target: Vec<f64>,
        scale: Vec<f64>,
    }

    impl Objective for Quadratic {
        fn dim(&self) -> usize {
            self.target.len()
        }
        fn value(&self, w: &[f64]) -> f64 {
            (0..w.len())
                .map(|k| 0.5 * self.scale[k] * (w[k] - self.target[k]).powi(2))
                .sum()
        }
        fn derivatives(&self, w: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
            let n = w.len();
            let gradient = (0..n)
                .map(|k| self.scale[k] * (w[k] - self.target[k]))
                .collect();
            let mut hessian = vec![0.0; n * n];
            for k in 0..n {
                hessian[k * n + k] = self.scale[k];
            }
            (self.value(w), gradient, hessian)
        }
    }

    #[test]
    fn finds_interior_and_boundary_minimisers() {
        let interior = Quadratic {
            target: vec![0.5, 0.3, 0.2],
            scale: vec![1.0, 5.0, 0.1],
        };
        let weights = minimise(&interior, &[1.0 / 3.0; 3]).unwrap();
        for (w, t) in weights.iter().zip(&interior.target) {
            assert!((w - t).abs() < 1e-9, "{weights:?}");
        }
        // Target off the simplex with equal scales: the minimiser is its Euclidean projection,
        // (0.8, 0.2, 0, 0) for (1, 0.4, −0.3, −1).
        let boundary = Quadratic {
            target: vec![1.0, 0.4, -0.3, -1.0],
            scale: vec![1.0; 4],
        };
        let weights = minimise(&boundary, &[0.0, 0.0, 0.5, 0.5]).unwrap();
        let expected = [0.8, 0.2, 0.0, 0.0];
        for (w, e) in weights.iter().zip(expected) {
            assert!((w - e).abs() < 1e-9, "{weights:?}");
        }
        assert!(weights[2] == 0.0 && weights[3] == 0.0);
    }
}
