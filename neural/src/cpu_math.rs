//! Element-wise math in plain arithmetic, so that the loops calling it vectorise (with
//! whatever vector width the caller is compiled for: the hot loops are `multiversion`ed).

/// e^x in f32 in plain arithmetic, so that loops over slices vectorise; no crate offers a
/// vectorisable `exp` on stable Rust, and libm's is a call per element. Cody–Waite reduction
/// by ln 2 and Cephes' `expf` polynomial; within 2 ulp of `f32::exp` where the result is a
/// normal number (`exp_is_within_two_ulp` checks it). Below −87.34, where `f32::exp` gives
/// subnormals, it gives 0 (so a softmax's masked scores get exactly 0, as they do from
/// `f32::exp`); above 88.37 it is +∞, as `f32::exp` is from 88.73.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer held in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    // The smallest x whose e^x is a normal f32.
    const LOWEST: f32 = -87.336_54;
    let clamped = x.clamp(LOWEST, 88.722_83);
    let t = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 in two parts, so that x − n·ln 2 is exact.
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ, from n in t's low bits (n + 127 is in 1..=255 for the clamped x).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let value = y * f32::from_bits(n_bits.wrapping_add(127) << 23);
    // A NaN stays NaN.
    if x < LOWEST {
        0.0
    } else {
        value
    }
}

/// Lanes of the reductions below: partial results kept apart so that the loop vectorises (a
/// float sum or maximum taken in order cannot be reordered by the compiler).
const LANES: usize = 16;

/// The reduction over i of `step(partial, aᵢ, bᵢ)` from `init`, in [`LANES`] partial results
/// then combined by `merge`; `a` and `b` of one length.
#[inline(always)]
fn reduce(
    a: &[f32],
    b: &[f32],
    init: f32,
    step: impl Fn(f32, f32, f32) -> f32,
    merge: impl Fn(f32, f32) -> f32,
) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [init; LANES];
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(a).zip(b) {
            *lane = step(*lane, x, y);
        }
    }
    let tail = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .fold(init, |partial, (&x, &y)| step(partial, x, y));
    lanes.into_iter().fold(tail, merge)
}

/// Σ xᵢ.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    reduce(xs, xs, 0.0, |s, x, _| s + x, |s, t| s + t)
}

/// Σ aᵢ·bᵢ, for `a` and `b` of one length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    reduce(a, b, 0.0, |s, x, y| s + x * y, |s, t| s + t)
}

/// The largest xᵢ (NaNs ignored, as `f32::max` does); −∞ for none.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    reduce(xs, xs, f32::NEG_INFINITY, |m, x, _| m.max(x), f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let ulp = |x: f32| f32::from_bits(x.to_bits() + 1) - x;
        let mut worst = 0f32;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let (ours, std) = (exp(x), x.exp());
            if std.is_finite() && std > f32::MIN_POSITIVE && x < 88.3 {
                worst = worst.max((ours - std).abs() / ulp(std));
            }
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(-f32::MAX), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(200.0), f32::INFINITY);
    }

    /// Over whole lanes and a tail, as the in-order reductions give them on these values.
    #[test]
    fn sums_dots_and_maxima_over_lanes_and_tail() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 0.5).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f32>());
        let twice: Vec<f32> = xs.iter().map(|x| 2.0 * x).collect();
        assert_eq!(
            dot(&xs, &twice),
            xs.iter().map(|x| 2.0 * x * x).sum::<f32>()
        );
        assert_eq!(max(&xs), 8.0);
        assert_eq!(max(&xs[..3]), -9.0);
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN, 1.0]), 1.0);
    }
}
