//! The gated MLP's `act(gate)·up` and its backward pass on the CPU in f32, each one parallel
//! pass over the elements.
//!
//! As candle ops the backward pass took twelve gate-sized passes (the activation, eight steps
//! of its derivative, three products), each writing a fresh buffer, and every exponential was
//! a call to libm's scalar `expf`. For Qwen2.5-0.5B's MLP at 512 tokens each pass covers
//! `[512, 4864]`. Anything but contiguous f32 CPU tensors of one shape is `None`, and the
//! caller takes candle's ops.
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Storage, Tensor};
use neural::CpuValue;
use rayon::prelude::*;

use crate::ops::Activation;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// e^x in f32 in plain arithmetic, so that loops over slices vectorise; no crate offers a
/// vectorisable `exp` on stable Rust, and libm's is a call per element. Cody–Waite reduction
/// by ln 2 and Cephes' `expf` polynomial; within 2 ulp of `f32::exp` where the result is a
/// normal number (`exp_is_within_two_ulp` checks it). Inputs are clamped to [−87.3, 88.7]:
/// below, the result stays at the smallest normal (about 1.2e-38) instead of reaching 0;
/// above 88.37 it is +∞, as `f32::exp` is from 88.73. The activations below only add it to 1.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer held in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.722_83);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 in two parts, so that x − n·ln 2 is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ, from n in t's low bits (n + 127 is in 1..=255 for the clamped x).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// SiLU's value and derivative at x.
#[inline(always)]
fn silu(x: f32) -> (f32, f32) {
    let sigmoid = 1.0 / (1.0 + exp(-x));
    (x * sigmoid, sigmoid * (1.0 + x * (1.0 - sigmoid)))
}

/// GELU's tanh approximation and its derivative at x, as `ops::Activation::derivative` writes
/// them, with tanh(u) = 1 − 2/(e^{2u} + 1).
#[inline(always)]
fn gelu_tanh(x: f32) -> (f32, f32) {
    let cube = x * x * x;
    let u = 0.035_677_4 * cube + 0.797_885 * x;
    let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    let value = 0.5 * x * (1.0 + tanh);
    let derivative = 0.5 * tanh + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - tanh * tanh) + 0.5;
    (value, derivative)
}

/// The elements of each tensor, if all are contiguous f32 CPU tensors of one shape; the
/// storages' read guards are held for `work`.
fn with_values<const N: usize, R>(
    tensors: [&Tensor; N],
    work: impl FnOnce([&[f32]; N]) -> R,
) -> Option<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[f32]; N] = [&[]; N];
    for ((slice, tensor), (storage, layout)) in slices.iter_mut().zip(&tensors).zip(&guards) {
        let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&**storage, layout.contiguous_offsets())
        else {
            return None;
        };
        if tensor.shape() != tensors[0].shape() {
            return None;
        }
        *slice = &data[start..end];
    }
    Some(work(slices))
}

/// `N` buffers of `len` values written together, a chunk of [`CHUNK`] of each at a time, by
/// `fill` (given the chunk's index), with no zeroing first.
fn filled<const N: usize>(
    len: usize,
    fill: impl Fn(usize, [&mut [MaybeUninit<f32>]; N]) + Sync,
) -> [Vec<f32>; N] {
    let mut outs: [Vec<f32>; N] = std::array::from_fn(|_| Vec::with_capacity(len));
    let mut chunks = outs
        .each_mut()
        .map(|out| out.spare_capacity_mut()[..len].chunks_mut(CHUNK));
    let work: Vec<[&mut [MaybeUninit<f32>]; N]> = (0..len.div_ceil(CHUNK))
        .map(|_| {
            chunks
                .each_mut()
                .map(|c| c.next().expect("one chunk per index"))
        })
        .collect();
    work.into_par_iter()
        .enumerate()
        .for_each(|(i, chunk)| fill(i, chunk));
    for out in &mut outs {
        // SAFETY: the chunks cover all len slots and each `fill` writes every slot of its
        // chunks (its loops zip them with input chunks of the same length).
        unsafe { out.set_len(len) };
    }
    outs
}

/// `act(gate)·up`.
pub(crate) fn value(gate: &Tensor, up: &Tensor, activation: Activation) -> Option<CpuValue> {
    fn run(gate: &[f32], up: &[f32], act: impl Fn(f32) -> (f32, f32) + Sync) -> Vec<f32> {
        let [out] = filled(gate.len(), |i, [out]| {
            let range = i * CHUNK..(i * CHUNK + out.len());
            for ((o, &g), &u) in out.iter_mut().zip(&gate[range.clone()]).zip(&up[range]) {
                o.write(act(g).0 * u);
            }
        });
        out
    }
    let data = with_values([gate, up], |[gate, up]| match activation {
        Activation::Silu => run(gate, up, silu),
        Activation::GeluTanh => run(gate, up, gelu_tanh),
    })?;
    let shape = gate.shape().clone();
    Some(CpuValue { data, shape })
}

/// The gradients (d_gate, d_up) = (dy·up·act'(gate), dy·act(gate)), in one pass.
pub(crate) fn gradients(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
    activation: Activation,
) -> Option<(CpuValue, CpuValue)> {
    fn run([gate, up, grad]: [&[f32]; 3], act: impl Fn(f32) -> (f32, f32) + Sync) -> [Vec<f32>; 2] {
        filled(gate.len(), |i, [d_gate, d_up]| {
            let start = i * CHUNK;
            for (j, (d_gate, d_up)) in d_gate.iter_mut().zip(d_up.iter_mut()).enumerate() {
                let (g, u, dy) = (gate[start + j], up[start + j], grad[start + j]);
                let (value, derivative) = act(g);
                d_up.write(dy * value);
                d_gate.write(dy * u * derivative);
            }
        })
    }
    let [d_gate, d_up] = with_values([gate, up, grad], |inputs| match activation {
        Activation::Silu => run(inputs, silu),
        Activation::GeluTanh => run(inputs, gelu_tanh),
    })?;
    let value = |data| CpuValue {
        data,
        shape: gate.shape().clone(),
    };
    Some((value(d_gate), value(d_up)))
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
        assert!(exp(-200.0) < 1.2e-38 && exp(-200.0) >= 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
    }
}
