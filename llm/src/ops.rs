//! RMSNorm, RoPE and the gated MLP's product as single graph nodes with hand-written backward passes, as the DeBERTa
//! member's ops are (`neural::Precomputed`): the value comes from candle's fused kernels on
//! detached inputs, and the node keeps only its input. Composed, RMSNorm keeps x², the
//! normalised x and the scaled result, and RoPE the negated half, the concatenation and both
//! products: about 0.5 GB over Qwen2.5-0.5B's 24 layers at 512 tokens (BENCHMARKS.md). candle's
//! fused `rms_norm` and `rope` have no backward pass of their own. Each backward pass works on
//! detached inputs, as `neural::ops` says why.
use candle_core::{CustomOp1, CustomOp2, DType, Tensor, D};
use neural::Precomputed;

use crate::gated_cpu;

type CandleResult<T> = candle_core::Result<T>;

/// `x / √(mean(x²) + eps) · scale` over the last dimension, computed in f32 and returned in
/// x's dtype (as Hugging Face's RMSNorm). `scale` (f32) is frozen: only x gets a gradient.
pub(crate) fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> CandleResult<Tensor> {
    let value = candle_nn::ops::rms_norm(
        &x.detach().to_dtype(DType::F32)?.contiguous()?,
        scale,
        eps as f32,
    )?
    .to_dtype(x.dtype())?;
    if !x.track_op() {
        return Ok(value);
    }
    x.apply_op1(RmsNorm {
        value: Precomputed::new(value)?,
        scale: scale.detach(),
        eps,
    })
}

struct RmsNorm {
    value: Precomputed,
    scale: Tensor,
    eps: f64,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    neural::precomputed_forward!(storage layout);

    /// With r = 1/√(mean(x²) + eps) and h = dy·scale: dx = r·h − x·r³·mean(h·x).
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        let x = &x.detach();
        let x32 = x.to_dtype(DType::F32)?;
        let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let h = grad.to_dtype(DType::F32)?.broadcast_mul(&self.scale)?;
        let projection = (&h * &x32)?.mean_keepdim(D::Minus1)?;
        let dx = (h.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * projection)?)?)?;
        Ok(Some(dx.to_dtype(x.dtype())?))
    }
}

/// Rotary position embedding, Hugging Face's `rotate_half` layout, of `x`
/// (`[batch, heads, len, head_dim]`, contiguous) by angles whose cosines and sines are
/// `[len, head_dim / 2]`. A rotation: its backward pass is the rotation by the opposite angles.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CandleResult<Tensor> {
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let value = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, &cos, &sin)?;
    if !x.track_op() {
        return Ok(value);
    }
    x.apply_op1(Rope {
        value: Precomputed::new(value)?,
        cos,
        sin,
    })
}

struct Rope {
    value: Precomputed,
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    neural::precomputed_forward!(storage layout);

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(candle_nn::rotary_emb::rope(
            &grad,
            &self.cos,
            &self.sin.neg()?,
        )?))
    }
}

/// The gated MLP's activation: SiLU (Qwen2, Llama) or GELU's tanh approximation (Gemma-2's
/// `gelu_pytorch_tanh`, which is candle's `gelu`).
#[derive(Clone, Copy)]
pub(crate) enum Activation {
    Silu,
    GeluTanh,
}

impl Activation {
    fn apply(self, x: &Tensor) -> CandleResult<Tensor> {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu(),
        }
    }

    /// The derivative at x, with candle's own formulas (its backward pass of `silu` and `gelu`).
    fn derivative(self, x: &Tensor) -> CandleResult<Tensor> {
        match self {
            // σ(x)·(1 + x·(1 − σ(x)))
            Activation::Silu => {
                let sigmoid = (x.neg()?.exp()? + 1.0)?.recip()?;
                &sigmoid * ((x * (1.0 - &sigmoid)?)? + 1.0)?
            }
            // With t = tanh(√(2/π)·(x + 0.044715·x³)):
            // 0.5·(1 + t) + √(2/π)·(0.5·x + 0.134145·x³)·(1 − t²)
            Activation::GeluTanh => {
                let cube = x.powf(3.0)?;
                let tanh = ((0.0356774 * &cube)? + (0.797885 * x)?)?.tanh()?;
                ((0.5 * &tanh)?
                    + ((0.0535161 * cube)? + (0.398942 * x)?)? * (1.0 - tanh.sqr()?)?)?
                    + 0.5
            }
        }
    }
}

/// The gated MLP's `act(gate) · up` as one node that keeps gate and up. Composed, candle keeps
/// the activation's output beside them, and its backward pass records the derivative's four to
/// eight gate-sized steps on the tracked gate, which the pending gradient then holds until the
/// gate's node is reached: with Gemma-2's GELU that was the largest part of the backward pass's
/// working memory (BENCHMARKS.md).
pub(crate) fn gated_product(
    gate: &Tensor,
    up: &Tensor,
    activation: Activation,
) -> CandleResult<Tensor> {
    let value = match gated_cpu::value(gate, up, activation) {
        Some(value) => Precomputed::from_cpu(value),
        None => Precomputed::new((activation.apply(&gate.detach())? * up.detach())?)?,
    };
    if !(gate.track_op() || up.track_op()) {
        return value.tensor();
    }
    gate.apply_op2(up, GatedProduct { value, activation })
}

struct GatedProduct {
    value: Precomputed,
    activation: Activation,
}

impl CustomOp2 for GatedProduct {
    fn name(&self) -> &'static str {
        "gated-product"
    }

    neural::precomputed_forward!(s1 l1, s2 l2);

    /// d_up = dy·act(gate), d_gate = dy·up·act'(gate).
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>)> {
        let (gate, up) = (&gate.detach(), &up.detach());
        if let Some((d_gate, d_up)) = gated_cpu::gradients(gate, up, grad, self.activation) {
            return Ok((Some(d_gate.into_tensor()?), Some(d_up.into_tensor()?)));
        }
        let d_up = (grad * self.activation.apply(gate)?)?;
        let d_gate = ((grad * up)? * self.activation.derivative(gate)?)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use neural::testing::{max_difference, random};

    /// The value and x's gradient of an op against the composed ops, for an upstream gradient.
    fn check(op: &Tensor, composed: &Tensor, x: &Var, upstream: &Tensor) {
        assert!(max_difference(op, composed) < 1e-5, "values differ");
        let grad = |y: &Tensor| {
            (y * upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .clone()
        };
        let difference = max_difference(&grad(op), &grad(composed));
        assert!(difference < 1e-5, "gradients differ by {difference}");
    }

    #[test]
    fn rms_norm_matches_the_composed_ops() {
        let (x, scale) = (random(&[2, 3, 8], 1), random(&[8], 2).as_tensor().detach());
        let upstream = random(&[2, 3, 8], 3).as_tensor().detach();
        let x_ = x.as_tensor();
        let composed = x_
            .broadcast_div(
                &(x_.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6)
                    .unwrap()
                    .sqrt()
                    .unwrap(),
            )
            .unwrap()
            .broadcast_mul(&scale)
            .unwrap();
        check(
            &rms_norm(x_, &scale, 1e-6).unwrap(),
            &composed,
            &x,
            &upstream,
        );
    }

    /// The value and both inputs' gradients against candle's composed activation and product.
    #[test]
    fn gated_product_matches_the_composed_ops() {
        // Gates over [-6, 6), where the activations bend.
        let gate = Var::from_tensor(&(random(&[2, 3, 8], 7).as_tensor() * 6.0).unwrap()).unwrap();
        let up = random(&[2, 3, 8], 8);
        let upstream = random(&[2, 3, 8], 9).as_tensor().detach();
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let (g, u) = (gate.as_tensor(), up.as_tensor());
            let composed = match activation {
                Activation::Silu => g.silu().unwrap(),
                Activation::GeluTanh => g.gelu().unwrap(),
            }
            .mul(u)
            .unwrap();
            let fused = gated_product(g, u, activation).unwrap();
            assert!(max_difference(&fused, &composed) < 1e-6, "values differ");
            let grads = |y: &Tensor| {
                let store = (y * &upstream)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                [g, u].map(|x| store.get(x).unwrap().clone())
            };
            for (ours, theirs) in grads(&fused).iter().zip(grads(&composed).iter()) {
                let difference = max_difference(ours, theirs);
                assert!(difference < 1e-5, "gradients differ by {difference}");
            }
        }
    }

    #[test]
    fn rope_matches_rotate_half() {
        let x = random(&[2, 3, 5, 8], 4);
        let upstream = random(&[2, 3, 5, 8], 5).as_tensor().detach();
        let angles = random(&[5, 4], 6).as_tensor().detach();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let x_ = x.as_tensor();
        let (first, second) = (x_.narrow(3, 0, 4).unwrap(), x_.narrow(3, 4, 4).unwrap());
        let rotated = Tensor::cat(&[&second.neg().unwrap(), &first], 3).unwrap();
        let full = |t: &Tensor| Tensor::cat(&[t, t], 1).unwrap();
        let composed = (x_.broadcast_mul(&full(&cos)).unwrap()
            + rotated.broadcast_mul(&full(&sin)).unwrap())
        .unwrap();
        check(&rope(x_, &cos, &sin).unwrap(), &composed, &x, &upstream);
    }
}
