//! Attention on the CPU in f32 without soft-capping or dropout, the LLM member's:
//! `softmax(s·q·kᵀ + mask)·v` as one node.
//!
//! It works in blocks of query rows, and each block's products stop at the last key its rows
//! may see: under a causal mask that is 5/8 of the square at 512 tokens, where the composed
//! ops computed all of it and masked half away (PyTorch's `scaled_dot_product_attention` skips
//! those blocks too). gemm writes the scores straight into the kept probabilities' buffer, and
//! the mask and softmax go over them in place. Key and value heads are read in place for every
//! query head they serve (grouped-query attention), where the composed ops copied them once
//! per query head. Anything else is `None`, and the caller takes candle's ops.
use candle_core::Tensor;
use rayon::prelude::*;

use multiversion::multiversion;

use crate::cpu_math;
use crate::cpu_matmul::{add_product, write_product, CpuValue, Matrix};

/// One row of `softmax(scores + mask)` in place, as candle's softmax: exp(s − max), then each
/// divided by the sum. Compiled for each SIMD level and run at the CPU's (the release build
/// targets baseline x86-64), with an exponential that vectorises.
#[multiversion(targets = "simd")]
fn softmax_row(scores: &mut [f32], mask: &[f32]) {
    for (s, &m) in scores.iter_mut().zip(mask) {
        *s += m;
    }
    let max = cpu_math::max(scores);
    for s in scores.iter_mut() {
        *s = cpu_math::exp(*s - max);
    }
    let sum = cpu_math::sum(scores);
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// One row of the softmax's backward pass in place: the probabilities' gradient dy becomes
/// the scores' gradient y·(dy − Σⱼ dy·y). Compiled as [`softmax_row`] is.
#[multiversion(targets = "simd")]
fn softmax_backward_row(grad: &mut [f32], probs: &[f32]) {
    let dot = cpu_math::dot(grad, probs);
    for (g, &y) in grad.iter_mut().zip(probs) {
        *g = (*g - dot) * y;
    }
}

/// Keys whose additive mask is at or below this are hidden, and left out of their row's
/// products. For a mask that shows keys with values far above it and hides them with values
/// at or below it, as the LLM member's does (0 and −f32::MAX, transformers' `finfo.min`), a
/// hidden key's exp(score + mask − max) is exactly 0 in f32 whenever its row sees some key,
/// so leaving it out changes none of the row's probabilities.
const HIDDEN: f32 = f32::MIN / 2.0;

/// Query rows per block of [`attention`]. A block's products stop at its rows' last visible
/// key, so under a causal mask n blocks compute (n + 1)/2n of the square: smaller blocks skip
/// more, and call gemm more often on smaller products.
const BLOCK_ROWS: usize = 128;

/// Rows `row..row + rows` of one query head, which see keys `0..keys`: its scores and
/// probabilities are `rows × keys`, at `offset` in [`Attended::probs`].
#[derive(Clone, Copy)]
struct Block {
    batch: usize,
    head: usize,
    row: usize,
    rows: usize,
    keys: usize,
    offset: usize,
}

/// What [`attention`]'s backward pass needs beside its inputs: the probabilities, block by
/// block, and the scale of the scores.
pub(crate) struct Attended {
    probs: Vec<f32>,
    blocks: Vec<Block>,
    scale: f32,
}

/// The blocks of `batches × heads` heads of `len` query rows, in the order of the heads and
/// rows (so also of the output's rows), for an additive `mask` of `mask_batches` batches of
/// `mask_rows` rows of `len` keys.
fn blocks(
    batches: usize,
    heads: usize,
    len: usize,
    mask: &[f32],
    mask_batches: usize,
    mask_rows: usize,
) -> Vec<Block> {
    // The keys each mask row lets its query see: up to its last visible one, or all of them
    // where none is visible (the softmax then spreads the row over every key, as candle's
    // ops do). A NaN counts as visible, so it reaches the output as it would there.
    let reach: Vec<usize> = mask
        .chunks(len)
        .map(|row| {
            row.iter()
                .rposition(|&m| m > HIDDEN || m.is_nan())
                .map_or(len, |last| last + 1)
        })
        .collect();
    let mut blocks = Vec::new();
    let mut offset = 0;
    for batch in 0..batches {
        let mask_batch = batch % mask_batches;
        let row_blocks: Vec<(usize, usize, usize)> = (0..len)
            .step_by(BLOCK_ROWS)
            .map(|row| {
                let rows = BLOCK_ROWS.min(len - row);
                let keys = (row..row + rows)
                    .map(|r| reach[mask_batch * mask_rows + r % mask_rows])
                    .max()
                    .unwrap_or(len);
                (row, rows, keys)
            })
            .collect();
        for head in 0..heads {
            for &(row, rows, keys) in &row_blocks {
                blocks.push(Block {
                    batch,
                    head,
                    row,
                    rows,
                    keys,
                    offset,
                });
                offset += rows * keys;
            }
        }
    }
    blocks
}

/// The probabilities the fused attention ([`attention`](crate::attention) on the CPU in f32)
/// computes and keeps for one head of `len` tokens under a
/// causal mask: each block of rows up to its last row's key.
pub fn causal_attention_probabilities(len: usize) -> usize {
    (0..len)
        .step_by(BLOCK_ROWS)
        .map(|row| {
            let end = (row + BLOCK_ROWS).min(len);
            (end - row) * end
        })
        .sum()
}

/// The heads of a 4-D f32 CPU tensor `[b, h, L, d]` (any strides) as matrices, batch-major.
fn heads<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<Vec<Matrix<'a>>> {
    let &[b, h, _, _] = layout.dims() else {
        return None;
    };
    (0..b * h)
        .map(|i| Matrix::inner(storage, layout, &[i / h, i % h]))
        .collect()
}

/// The shapes [`attention`] takes: (batches, query heads, key/value heads, length, head size,
/// mask batches, mask rows), or `None`.
fn attention_dims(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    mask: &Tensor,
) -> Option<(usize, usize, usize, usize, usize, usize, usize)> {
    let &[b, h, len, d] = query.dims() else {
        return None;
    };
    let &[kb, kv, kl, kd] = key.dims() else {
        return None;
    };
    let &[mb, 1, mq, mk] = mask.dims() else {
        return None;
    };
    let fits = (kb, kl, kd) == (b, len, d)
        && value.dims() == key.dims()
        && kv > 0
        && h % kv == 0
        && (mb == 1 || mb == b)
        && (mq == 1 || mq == len)
        && mk == len
        && b * h * len * d > 0;
    fits.then_some((b, h, kv, len, d, mb, mq))
}

/// `softmax(scale·q·kᵀ + mask)·v` for q `[b, h, L, d]`, k and v `[b, kv, L, d]` (any strides;
/// key/value head g serves query heads g·h/kv to (g + 1)·h/kv − 1) and an additive mask
/// `[b or 1, 1, L or 1, L]`: the output `[b, h, L, d]`, and what the backward pass needs.
/// The blocks run in parallel, each product on one thread.
pub(crate) fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    mask: &Tensor,
    scale: f32,
) -> Option<(CpuValue, Attended)> {
    let (b, h, kv, len, d, mb, mq) = attention_dims(query, key, value, mask)?;
    let group = h / kv;
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = key.storage_and_layout();
    let (v_storage, v_layout) = value.storage_and_layout();
    let (m_storage, m_layout) = mask.storage_and_layout();
    let (queries, keys) = (heads(&q_storage, q_layout)?, heads(&k_storage, k_layout)?);
    let values = heads(&v_storage, v_layout)?;
    let mask = Matrix::of(&m_storage, m_layout, len)?.values();
    let blocks = blocks(b, h, len, mask, mb, mq);
    let total = blocks
        .last()
        .map_or(0, |last| last.offset + last.rows * last.keys);
    let (mut probs, mut out) = (
        Vec::with_capacity(total),
        Vec::with_capacity(b * h * len * d),
    );
    // Each block's slots in both buffers, taken in block order.
    let (mut probs_left, mut out_left) = (
        &mut probs.spare_capacity_mut()[..total],
        &mut out.spare_capacity_mut()[..b * h * len * d],
    );
    let mut tasks = Vec::with_capacity(blocks.len());
    for block in &blocks {
        let (p, rest) = std::mem::take(&mut probs_left).split_at_mut(block.rows * block.keys);
        probs_left = rest;
        let (o, rest) = std::mem::take(&mut out_left).split_at_mut(block.rows * d);
        out_left = rest;
        tasks.push((block, p, o));
    }
    tasks.into_par_iter().for_each(|(block, p, o)| {
        let kv_head = block.batch * kv + block.head / group;
        let q = queries[block.batch * h + block.head].rows(block.row, block.rows);
        let k = keys[kv_head].rows(0, block.keys);
        let scores = write_product(p, q, k.t(), scale, false);
        let mask_batch = block.batch % mb;
        for (i, row) in scores.chunks_mut(block.keys).enumerate() {
            let mask_row = mask_batch * mq + (block.row + i) % mq;
            softmax_row(row, &mask[mask_row * len..][..block.keys]);
        }
        let probs = Matrix::row_major(scores, block.keys);
        write_product(o, probs, values[kv_head].rows(0, block.keys), 1.0, false);
    });
    // SAFETY: the blocks' slots tile the first `total` and `b·h·L·d` slots of the two buffers
    // (their sizes summed in block order), and each task's write_product calls initialised its
    // slots.
    unsafe {
        probs.set_len(total);
        out.set_len(b * h * len * d);
    }
    let attended = Attended {
        probs,
        blocks,
        scale,
    };
    Some((CpuValue::new(out, query.dims(), d), attended))
}

/// (dq, dk, dv) of [`attention`] from its output's gradient `grad` `[b, h, L, d]` (any
/// strides). Per block, over the keys its rows saw: the probabilities' gradient dp = dy·vᵀ,
/// the scores' ds row by row ([`softmax_backward_row`]), then dq = s·ds·k, dk += s·dsᵀ·q and
/// dv += pᵀ·dy. The heads run in parallel, each product on one thread; a key/value head's
/// gradients are the sums over the query heads it serves.
pub(crate) fn attention_gradients(
    attended: &Attended,
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    grad: &Tensor,
) -> Option<(CpuValue, CpuValue, CpuValue)> {
    let &[b, h, len, d] = query.dims() else {
        return None;
    };
    let &[_, kv, _, _] = key.dims() else {
        return None;
    };
    if grad.dims() != query.dims() || value.dims() != key.dims() || kv == 0 || h % kv != 0 {
        return None;
    }
    let group = h / kv;
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = key.storage_and_layout();
    let (v_storage, v_layout) = value.storage_and_layout();
    let (g_storage, g_layout) = grad.storage_and_layout();
    let (queries, keys) = (heads(&q_storage, q_layout)?, heads(&k_storage, k_layout)?);
    let (values, grads) = (heads(&v_storage, v_layout)?, heads(&g_storage, g_layout)?);
    let blocks_per_head = len.div_ceil(BLOCK_ROWS);
    if attended.blocks.len() != b * h * blocks_per_head || keys.len() != b * kv {
        return None;
    }
    let head_len = len * d;
    let mut dq = Vec::with_capacity(b * h * head_len);
    let (mut dk_heads, mut dv_heads) = (vec![0f32; b * h * head_len], vec![0f32; b * h * head_len]);
    dq.spare_capacity_mut()[..b * h * head_len]
        .par_chunks_mut(head_len)
        .zip(dk_heads.par_chunks_mut(head_len))
        .zip(dv_heads.par_chunks_mut(head_len))
        .zip(attended.blocks.par_chunks(blocks_per_head))
        .for_each(|(((dq, dk), dv), blocks)| {
            let mut dp = Vec::with_capacity(BLOCK_ROWS * len);
            for block in blocks {
                let (rows, keys_seen) = (block.rows, block.keys);
                let batch_head = block.batch * h + block.head;
                let kv_head = block.batch * kv + block.head / group;
                let q = queries[batch_head].rows(block.row, rows);
                let dy = grads[batch_head].rows(block.row, rows);
                let k = keys[kv_head].rows(0, keys_seen);
                let v = values[kv_head].rows(0, keys_seen);
                let p = &attended.probs[block.offset..][..rows * keys_seen];
                let ds = write_product(
                    &mut dp.spare_capacity_mut()[..rows * keys_seen],
                    dy,
                    v.t(),
                    1.0,
                    false,
                );
                for (ds, p) in ds.chunks_mut(keys_seen).zip(p.chunks(keys_seen)) {
                    softmax_backward_row(ds, p);
                }
                let ds = Matrix::row_major(ds, keys_seen);
                let scale = attended.scale;
                write_product(&mut dq[block.row * d..][..rows * d], ds, k, scale, false);
                add_product(&mut dk[..keys_seen * d], ds.t(), q, scale, false);
                let p = Matrix::row_major(p, keys_seen);
                add_product(&mut dv[..keys_seen * d], p.t(), dy, 1.0, false);
            }
        });
    // SAFETY: each head's blocks tile its L rows (`blocks` made them so), and write_product
    // initialised every block's d·rows slots of dq.
    unsafe { dq.set_len(b * h * head_len) };
    // A key/value head's gradients: the sums over its query heads.
    let sum_groups = |per_head: Vec<f32>| -> Vec<f32> {
        if group == 1 {
            return per_head;
        }
        let mut sums = vec![0f32; b * kv * head_len];
        sums.par_chunks_mut(head_len)
            .enumerate()
            .for_each(|(kv_head, sum)| {
                let first = (kv_head / kv) * h + (kv_head % kv) * group;
                for head in per_head.chunks(head_len).skip(first).take(group) {
                    for (s, x) in sum.iter_mut().zip(head) {
                        *s += x;
                    }
                }
            });
        sums
    };
    let kv_dims = key.dims();
    Some((
        CpuValue::new(dq, query.dims(), d),
        CpuValue::new(sum_groups(dk_heads), kv_dims, d),
        CpuValue::new(sum_groups(dv_heads), kv_dims, d),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys each block of query rows computes: up to its last visible key under a causal
    /// mask; every key for a block with a query that sees none (left padding), and for a mask
    /// whose hidden keys are merely large negative numbers.
    #[test]
    fn blocks_stop_at_their_last_visible_key() {
        let len = 300;
        let mask_of = |hidden: f32, padding: usize| -> Vec<f32> {
            (0..len * len)
                .map(|i| match i % len > i / len || i % len < padding {
                    true => hidden,
                    false => 0.0,
                })
                .collect()
        };
        let keys = |mask: &[f32], mask_rows: usize| -> Vec<(usize, usize, usize)> {
            blocks(1, 2, len, mask, 1, mask_rows)
                .iter()
                .map(|b| (b.head, b.row, b.keys))
                .collect()
        };
        let causal = [(0, 0, 128), (0, 128, 256), (0, 256, 300)];
        let both_heads: Vec<_> = causal
            .iter()
            .chain(&causal)
            .enumerate()
            .map(|(i, &(_, r, k))| (i / 3, r, k))
            .collect();
        assert_eq!(keys(&mask_of(-f32::MAX, 0), len), both_heads);
        let padded = keys(&mask_of(f32::NEG_INFINITY, 2), len);
        assert_eq!(padded[..3], [(0, 0, 300), (0, 128, 256), (0, 256, 300)]);
        assert!(keys(&mask_of(-1e9, 0), len)
            .iter()
            .all(|&(_, _, k)| k == len));
        // One mask row for every query: its reach for all blocks.
        assert!(keys(&[0.0; 300], 1).iter().all(|&(_, _, k)| k == len));
        let offsets: Vec<usize> = blocks(1, 2, len, &mask_of(-f32::MAX, 0), 1, len)
            .iter()
            .map(|b| b.offset)
            .collect();
        let per_head = 128 * 128 + 128 * 256 + 44 * 300;
        assert_eq!(causal_attention_probabilities(len), per_head);
        assert_eq!(causal_attention_probabilities(512), 512 * 512 * 5 / 8);
        assert_eq!(
            offsets,
            [
                0,
                128 * 128,
                128 * 128 + 128 * 256,
                per_head,
                per_head + 128 * 128,
                per_head + 128 * 128 + 128 * 256
            ]
        );
    }
}
