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
use multiversion::multiversion;
use neural::cpu_math::exp;
use neural::CpuValue;
use rayon::prelude::*;

use crate::ops::Activation;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

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

/// One chunk of `act(gate)·up`, compiled for each SIMD level (the release build targets
/// baseline x86-64, whose SSE2 is 4 lanes) and run at the CPU's.
#[multiversion(targets = "simd")]
fn value_chunk(
    out: &mut [MaybeUninit<f32>],
    gate: &[f32],
    up: &[f32],
    act: impl Fn(f32) -> (f32, f32),
) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(act(g).0 * u);
    }
}

/// One chunk of the gradients (d_gate, d_up), as [`value_chunk`] is compiled.
#[multiversion(targets = "simd")]
fn gradients_chunk(
    [d_gate, d_up]: [&mut [MaybeUninit<f32>]; 2],
    [gate, up, grad]: [&[f32]; 3],
    act: impl Fn(f32) -> (f32, f32),
) {
    for ((((d_gate, d_up), &g), &u), &dy) in d_gate.iter_mut().zip(d_up).zip(gate).zip(up).zip(grad)
    {
        let (value, derivative) = act(g);
        d_up.write(dy * value);
        d_gate.write(dy * u * derivative);
    }
}

/// `act(gate)·up`.
pub(crate) fn value(gate: &Tensor, up: &Tensor, activation: Activation) -> Option<CpuValue> {
    fn run(gate: &[f32], up: &[f32], act: impl Fn(f32) -> (f32, f32) + Sync) -> Vec<f32> {
        let [out] = filled(gate.len(), |i, [out]| {
            let range = i * CHUNK..(i * CHUNK + out.len());
            value_chunk(out, &gate[range.clone()], &up[range], &act);
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
            let range = i * CHUNK..(i * CHUNK + d_gate.len());
            let inputs = [gate, up, grad].map(|x| &x[range.clone()]);
            gradients_chunk([d_gate, d_up], inputs, &act);
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
