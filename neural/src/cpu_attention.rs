//! Attention's probabilities and their backward pass on the CPU in f32, for the plain case
//! (no extra score terms, no soft-capping, no dropout): the LLM member's.
//!
//! As candle ops the forward pass wrote five `[B, H, L, L]` buffers (the product's zeroes, the
//! product, the masked scores, the softmax, the node's copy of it) and the backward pass five
//! more (the product with the output, its row sums, the difference, the scores' gradient, and
//! the two products' zeroes). Here gemm writes the scores, the mask and softmax go over them in
//! place, and the node takes the buffer; backward, one pass per row gives the scores'
//! gradient. Anything else is `None`, and the caller takes candle's ops.
use candle_core::Tensor;
use rayon::prelude::*;

use crate::cpu_matmul::{gemm_into, Matrix};

/// `softmax(q·kᵀ + mask)` over the last dimension, for q and k `[b, h, L, D]` and an additive
/// mask `[b or 1, 1, L or 1, L]`.
pub(crate) fn probs(query: &Tensor, key: &Tensor, mask: &Tensor) -> Option<Vec<f32>> {
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
    let heads = b * h;
    let mut scores: Vec<f32> = Vec::with_capacity(heads * len * len);
    for head in 0..heads {
        let rows = head * len;
        // SAFETY: scores has room for heads·len² values; head `head` writes only its own
        // len² block (in bounds, disjoint from the others and from the operands) and reads
        // none of it.
        unsafe {
            gemm_into(
                scores.as_mut_ptr().add(head * len * len),
                false,
                q.rows(rows, len),
                k.rows(rows, len).t(),
                1.0,
            )
        };
    }
    // SAFETY: every head's block was written above, so all heads·len² values are set.
    unsafe { scores.set_len(heads * len * len) };
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
    Some(scores)
}

/// (dq, dk) from the probabilities y and their gradient dy: the scores' gradient
/// ds = y·(dy − Σⱼ dy·y) row by row, then dq = ds·k and dk = dsᵀ·q.
pub(crate) fn gradients(
    query: &Tensor,
    key: &Tensor,
    probs: &Tensor,
    grad: &Tensor,
) -> Option<(Vec<f32>, Vec<f32>)> {
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
    let ds_matrix = Matrix::row_major(&ds, len);
    let heads = b * h;
    let (mut dq, mut dk): (Vec<f32>, Vec<f32>) = (
        Vec::with_capacity(heads * len * d),
        Vec::with_capacity(heads * len * d),
    );
    for head in 0..heads {
        let rows = head * len;
        let ds_head = ds_matrix.rows(rows, len);
        // SAFETY: dq and dk have room for heads·len·d values; each head writes its own len·d
        // block of each (in bounds, disjoint, apart from the operands) without reading it.
        unsafe {
            gemm_into(
                dq.as_mut_ptr().add(rows * d),
                false,
                ds_head,
                k.rows(rows, len),
                1.0,
            );
            gemm_into(
                dk.as_mut_ptr().add(rows * d),
                false,
                ds_head.t(),
                q.rows(rows, len),
                1.0,
            );
        }
    }
    // SAFETY: every head's blocks were written above.
    unsafe {
        dq.set_len(heads * len * d);
        dk.set_len(heads * len * d);
    }
    Some((dq, dk))
}
