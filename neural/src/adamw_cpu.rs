//! AdamW's step on the CPU in f32 as two passes over the weights, in place.
//!
//! As candle tensor ops, a step is about fifteen element-wise ops per block of a weight, each
//! writing a fresh buffer, and three copies back: for DeBERTa-v3-base's 184 million weights
//! that was 5.5% of a CPU training step (BENCHMARKS.md). candle has no fused optimizer kernel;
//! its in-place custom ops give one mutable storage each, so the moments (kept together as
//! `[2, ..]`, first then second) take one pass and the weights another. Each element's
//! arithmetic is the candle ops' own, in the same order and in f32, so the two paths give equal
//! values (candle's scalar ops also add 0.0, which can change only a zero's sign).
use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 15;

/// One step's scalars.
pub(crate) struct Hyper {
    pub grad_factor: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub first_correction: f64,
    pub second_correction: f64,
    pub eps: f64,
    pub lr: f64,
    pub decay: f64,
}

/// Steps `weights` and `moments` (`[2, ..weights' shape]`) with `grad`; `None` (nothing done)
/// unless all three are contiguous f32 CPU tensors.
pub(crate) fn step(
    weights: &Tensor,
    moments: &Tensor,
    grad: &Tensor,
    hyper: &Hyper,
) -> Option<candle_core::Result<()>> {
    let eligible = |t: &Tensor| {
        t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
    };
    if !(eligible(weights) && eligible(moments) && eligible(grad)) {
        return None;
    }
    Some(
        moments
            .inplace_op2(grad, &MomentsUpdate(hyper))
            .and_then(|()| weights.inplace_op2(moments, &WeightsUpdate(hyper))),
    )
}

/// A contiguous f32 storage's elements under `layout`.
fn values<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => bail!("AdamW's CPU step needs contiguous f32 tensors"),
    }
}

fn values_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => bail!("AdamW's CPU step needs contiguous f32 tensors"),
    }
}

/// m ← β₁·m + (1−β₁)·g and v ← β₂·v + (1−β₂)·g², with g the gradient times its factor.
struct MomentsUpdate<'a>(&'a Hyper);

impl InplaceOp2 for MomentsUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(
        &self,
        moments: &mut CpuStorage,
        moments_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let h = self.0;
        let grad = values(grad, grad_layout)?;
        let moments = values_mut(moments, moments_layout)?;
        if moments.len() != 2 * grad.len() {
            bail!("AdamW's moments do not match the gradient's size");
        }
        let (first, second) = moments.split_at_mut(grad.len());
        let factor = h.grad_factor as f32;
        let (beta1, rest1) = (h.beta1 as f32, (1.0 - h.beta1) as f32);
        let (beta2, rest2) = (h.beta2 as f32, (1.0 - h.beta2) as f32);
        first
            .par_chunks_mut(CHUNK)
            .zip(second.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|((first, second), grad)| {
                for ((m, v), &g) in first.iter_mut().zip(second.iter_mut()).zip(grad) {
                    let g = g * factor;
                    *m = *m * beta1 + g * rest1;
                    *v = *v * beta2 + (g * g) * rest2;
                }
            });
        Ok(())
    }
}

/// w ← w·(1 − lr·λ) − lr·(m/c₁)/(√(v/c₂) + ε).
struct WeightsUpdate<'a>(&'a Hyper);

impl InplaceOp2 for WeightsUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-weights"
    }

    fn cpu_fwd(
        &self,
        weights: &mut CpuStorage,
        weights_layout: &Layout,
        moments: &CpuStorage,
        moments_layout: &Layout,
    ) -> candle_core::Result<()> {
        let h = self.0;
        let weights = values_mut(weights, weights_layout)?;
        let moments = values(moments, moments_layout)?;
        if moments.len() != 2 * weights.len() {
            bail!("AdamW's moments do not match the weights' size");
        }
        let (first, second) = moments.split_at(weights.len());
        // As candle's `t / c` (a multiplication by 1/c) and `t * c` compute them.
        let (inv_c1, inv_c2) = (
            (1.0 / h.first_correction) as f32,
            (1.0 / h.second_correction) as f32,
        );
        let (eps, lr, keep) = (h.eps as f32, h.lr as f32, (1.0 - h.lr * h.decay) as f32);
        weights
            .par_chunks_mut(CHUNK)
            .zip(first.par_chunks(CHUNK))
            .zip(second.par_chunks(CHUNK))
            .for_each(|((weights, first), second)| {
                for ((w, &m), &v) in weights.iter_mut().zip(first).zip(second) {
                    let update = (m * inv_c1) / ((v * inv_c2).sqrt() + eps);
                    *w = *w * keep - update * lr;
                }
            });
        Ok(())
    }
}
