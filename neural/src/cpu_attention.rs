//! Attention's probabilities and their backward pass on the CPU in f32, for the plain case
//! (no extra score terms, no soft-capping, no dropout): the LLM member's.
//!
//! As candle ops the forward pass wrote five `[B, H, L, L]` buffers (the product's zeroes, the
//! product, the masked scores, the softmax, the node's copy of it) and the backward pass three
//! more (the product with the output, the difference from its row sums, the scores'
//! gradient). Here gemm writes the scores, the mask and softmax go over them in
//! place, and the node takes the buffer; backward, one pass per row gives the scores'
//! gradient. Anything else is `None`, and the caller takes candle's ops.
use candle_core::Tensor;
use rayon::prelude::*;

use crate::cpu_matmul::{batched_product, CpuValue, Matrix};

/// `softmax(q·kᵀ + mask)` over the last dimension, for q and k `[b, h, L, D]` and an additive
/// mask `[b or 1, 1, L or 1, L]`.
pub(crate) fn probs(query: &Tensor, key: &Tensor, mask: &Tensor) -> Option<CpuValue> {
    let &[b, h, len, d] = query.dims() else {
        return None;
    };
    let &[mb, 1, mq, mk] = mask.dims() else {
        return None;
    };
    if key.dims() != query.dims() || !(mb == 1 || mb == b) || !(mq == 1 || mq == len) || mk != len {
        return None;
    }
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = key.storage_and_layout();
    let (m_storage, m_layout) = mask.storage_and_layout();
    let q = Matrix::of(&q_storage, q_layout, d)?;
    let k = Matrix::of(&k_storage, k_layout, d)?;
    let mask = Matrix::of(&m_storage, m_layout, len)?;
    let mut scores = batched_product(b * h, |head| (q.block(head, len), k.block(head, len).t()));
    let mask = mask.values();
    scores
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(row, scores)| {
            let (batch, query_row) = (row / (h * len), row % len);
            let mask_row = (batch % mb) * mq + query_row % mq;
            let mask = &mask[mask_row * len..(mask_row + 1) * len];
            let mut max = f32::NEG_INFINITY;
            for (s, &m) in scores.iter_mut().zip(mask) {
                *s += m;
                max = max.max(*s);
            }
            // As candle's softmax: exp(s − max), then each divided by the sum.
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for s in scores.iter_mut() {
                *s /= sum;
            }
        });
    Some(CpuValue::new(scores, query.dims(), len))
}

/// (dq, dk) from the probabilities y and their gradient dy: the scores' gradient
/// ds = y·(dy − Σⱼ dy·y) row by row, then dq = ds·k and dk = dsᵀ·q.
pub(crate) fn gradients(
    query: &Tensor,
    key: &Tensor,
    probs: &Tensor,
    grad: &Tensor,
) -> Option<(CpuValue, CpuValue)> {
    let &[b, h, len, d] = query.dims() else {
        return None;
    };
    if key.dims() != query.dims() || probs.dims() != [b, h, len, len] || grad.dims() != probs.dims()
    {
        return None;
    }
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = key.storage_and_layout();
    let (y_storage, y_layout) = probs.storage_and_layout();
    let (g_storage, g_layout) = grad.storage_and_layout();
    let q = Matrix::of(&q_storage, q_layout, d)?;
    let k = Matrix::of(&k_storage, k_layout, d)?;
    let y = Matrix::of(&y_storage, y_layout, len)?.values();
    let g = Matrix::of(&g_storage, g_layout, len)?.values();
    let mut ds = Vec::with_capacity(y.len());
    ds.spare_capacity_mut()[..y.len()]
        .par_chunks_mut(len)
        .zip(y.par_chunks(len).zip(g.par_chunks(len)))
        .for_each(|(ds, (y, g))| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((ds, &y), &g) in ds.iter_mut().zip(y).zip(g) {
                ds.write((g - dot) * y);
            }
        });
    // SAFETY: the rows cover all of ds, and each row's loop writes every element of its row.
    unsafe { ds.set_len(y.len()) };
    let ds = Matrix::row_major(&ds, len);
    let dq = batched_product(b * h, |head| (ds.block(head, len), k.block(head, len)));
    let dk = batched_product(b * h, |head| (ds.block(head, len).t(), q.block(head, len)));
    let value = |data| CpuValue::new(data, query.dims(), d);
    Some((value(dq), value(dk)))
}
