//! Helpers for tests of graph ops against composed candle ops, shared by the members' tests.
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The largest difference an op and its composed version may show, in values or gradients.
pub const TOLERANCE: f32 = 1e-5;

/// A CPU variable of `shape` with values uniform in [-1, 1) drawn from `seed`.
pub fn random(shape: &[usize], seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Σ out·w for a fixed random w: a loss whose gradient reaches every output element.
pub fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
    let dims = out.dims().to_vec();
    (out * random(&dims, seed).as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
}

/// Values and gradients (for `inputs`) of the op's loss against the composed version's.
pub fn assert_same(op: &Tensor, composed: &Tensor, inputs: &[&Var]) {
    assert!(max_difference(op, composed) < TOLERANCE, "values differ");
    let op_grads = weighted_sum(op, 99).backward().unwrap();
    let composed_grads = weighted_sum(composed, 99).backward().unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let a = op_grads.get(input.as_tensor()).expect("op gradient");
        let b = composed_grads
            .get(input.as_tensor())
            .expect("composed gradient");
        let difference = max_difference(a, b);
        assert!(
            difference < TOLERANCE,
            "input {i}: gradients differ by {difference}"
        );
        assert!(
            max_difference(b, &b.zeros_like().unwrap()) > 1e-3,
            "input {i}: no gradient"
        );
    }
}
