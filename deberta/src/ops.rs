//! DeBERTa's own graph nodes: LayerNorm with a backward pass that keeps only its input and
//! output, and the relative-position terms of its disentangled attention, which enter the
//! shared attention node ([`neural::attention_probs`]) as [`ScoreTerms`]. Why hand-written
//! backward passes: see `neural::ops`.
use candle_core::cpu_backend::Map1;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType, D};
use neural::{Precomputed, ScoreTerms};
use rayon::prelude::*;

type CandleResult<T> = candle_core::Result<T>;

/// LayerNorm over the last dimension of an f32 tensor, with candle's fused kernel forward.
/// The backward pass recomputes mean and inverse deviation from the input, so the graph keeps
/// the input and the output only.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> CandleResult<Tensor> {
    let value = candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)?;
    if !(x.track_op() || weight.track_op() || bias.track_op()) {
        return Ok(value);
    }
    x.apply_op3(
        weight,
        bias,
        LayerNorm {
            value: Precomputed::new(value)?,
            eps,
        },
    )
}

struct LayerNorm {
    value: Precomputed,
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-with-backward"
    }

    neural::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    /// With x̂ = (x − μ)·r and r = 1/√(σ² + ε): dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) where
    /// ĝ = g·w; dw = Σ g·x̂ and db = Σ g over every row.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached, as `neural::ops` says why: dw would keep x̂ alive to the end of the pass.
        let (x, weight) = (&x.detach(), &weight.detach());
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let inverse_deviation = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let normed = centred.broadcast_mul(&inverse_deviation)?;
        let width = x.dim(D::Minus1)?;
        let rows = x.elem_count() / width;
        let grad_normed = grad.broadcast_mul(weight)?;
        let dx = (grad_normed.broadcast_sub(&grad_normed.mean_keepdim(D::Minus1)?)?
            - normed.broadcast_mul(&(&grad_normed * &normed)?.mean_keepdim(D::Minus1)?)?)?
        .broadcast_mul(&inverse_deviation)?;
        let dw = (grad * &normed)?.reshape((rows, width))?.sum(0)?;
        let db = grad.reshape((rows, width))?.sum(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Flat gather indices of DeBERTa's relative positions for one sequence length:
/// `c2p[i·L+j] = i·2S + δ(i,j)` and `p2c[i·L+j] = j·2S + δ(i,j)`.
#[derive(Clone)]
pub struct RelativeIndex {
    pub c2p: Tensor,
    pub p2c: Tensor,
}

/// The relative-position terms of one layer's attention, DeBERTa's disentangled attention:
/// the projected relative embeddings `[1, H, 2S, d]` for content→position (keys) and
/// position→content (queries, scaled), gathered through the index.
pub struct Relative {
    pub pos_key: Option<Tensor>,
    pub pos_query: Option<Tensor>,
    pub index: RelativeIndex,
}

impl Relative {
    /// The terms present, in the order of their projections in [`ScoreTerms::inputs`]: c2p
    /// (query rows against position keys), then p2c (key rows against position queries).
    fn gathers(&self) -> impl Iterator<Item = (&Tensor, &Tensor, Rows)> {
        let c2p = self
            .pos_key
            .as_ref()
            .map(|p| (p, &self.index.c2p, Rows::Query));
        let p2c = self
            .pos_query
            .as_ref()
            .map(|p| (p, &self.index.p2c, Rows::Key));
        c2p.into_iter().chain(p2c)
    }
}

/// Which side's rows a relative term multiplies.
#[derive(Clone, Copy)]
enum Rows {
    Query,
    Key,
}

impl ScoreTerms for Relative {
    fn inputs(&self) -> CandleResult<Option<Tensor>> {
        let positions: Vec<Tensor> = self.gathers().map(|(pos, _, _)| pos.clone()).collect();
        match positions.is_empty() {
            true => Ok(None),
            false => Tensor::cat(&positions, 0).map(Some),
        }
    }

    fn add_to(&self, mut scores: Tensor, query: &Tensor, key: &Tensor) -> CandleResult<Tensor> {
        for (pos, index, rows) in self.gathers() {
            let rows = match rows {
                Rows::Query => query,
                Rows::Key => key,
            };
            scores = (scores + relative_scores(rows, &pos.detach(), index)?)?;
        }
        Ok(scores)
    }

    /// Through each term, the gather's adjoint G (a scatter-add of ds): c2p adds G·pₖ to dq
    /// and gives dpₖ = Σ_b Gᵀ·q; p2c adds G·p_q to dk and dp_q = Σ_b Gᵀ·k.
    fn backward(
        &self,
        grad_scores: &Tensor,
        (query, key, positions): (&Tensor, &Tensor, &Tensor),
        dq: &mut Tensor,
        dk: &mut Tensor,
    ) -> CandleResult<Option<Tensor>> {
        let dtype = query.dtype();
        let batch = query.dim(0)?;
        let mut grad_positions = Vec::new();
        for (i, (_, index, rows)) in self.gathers().enumerate() {
            let pos = positions.narrow(0, i, 1)?;
            let span2 = pos.dim(2)?;
            let (rows, grad_rows) = match rows {
                Rows::Query => (query, &mut *dq),
                Rows::Key => (key, &mut *dk),
            };
            let adjoint = scatter_relative(grad_scores, index, span2)?.to_dtype(dtype)?;
            *grad_rows = (&*grad_rows + adjoint.matmul(&broadcast_batch(&pos, batch)?)?)?;
            grad_positions.push(adjoint.t()?.matmul(rows)?.sum_keepdim(0)?);
        }
        match grad_positions.is_empty() {
            true => Ok(None),
            false => Tensor::cat(&grad_positions, 0).map(Some),
        }
    }
}

/// `out[b,h,i,j] = x[b,h,row,:] · pos[h, δ(i,j), :]` through the flat index, where `row` is i
/// for c2p and j for p2c (the index says which).
fn relative_scores(x: &Tensor, pos: &Tensor, index: &Tensor) -> CandleResult<Tensor> {
    let (batch, heads, len, _) = x.dims4()?;
    let all = x.matmul(&broadcast_batch(pos, batch)?.t()?)?; // [B, H, L, 2S]
    let span2 = all.dim(3)?;
    select_columns(&all.reshape((batch * heads, len * span2))?, index)?
        .reshape((batch, heads, len, len))
}

/// `out[r, t] = src[r, index[t]]`: candle's `index_select` along dimension 1. On the CPU that
/// copies one element per `memcpy` call (its slices are one element wide here), 15% of
/// base-size inference (BENCHMARKS.md), so an untracked CPU tensor (the attention node's
/// forward pass, on detached inputs) takes `SelectColumns`, a plain loop over the rows in
/// parallel, which has no backward pass. A tracked tensor and CUDA keep `index_select`.
fn select_columns(src: &Tensor, index: &Tensor) -> CandleResult<Tensor> {
    match src.device().is_cpu() && !src.track_op() {
        true => src
            .contiguous()?
            .apply_op2_no_bwd(&index.contiguous()?, &SelectColumns),
        false => src.index_select(index, 1),
    }
}

/// [`select_columns`] on the CPU: `src` `[rows, width]`, `index` u32 columns, both contiguous.
struct SelectColumns;

impl CustomOp2 for SelectColumns {
    fn name(&self) -> &'static str {
        "select-columns"
    }

    fn cpu_fwd(
        &self,
        src: &CpuStorage,
        src_layout: &Layout,
        index: &CpuStorage,
        index_layout: &Layout,
    ) -> CandleResult<(CpuStorage, Shape)> {
        let (rows, width) = src_layout.shape().dims2()?;
        let index = columns(index, index_layout, width)?;
        let selected = Gather { index, width }.map(src, src_layout)?;
        Ok((selected, Shape::from((rows, index.len()))))
    }
}

/// The selected columns of each `width`-wide row, rows in parallel; every column is below
/// `width` ([`columns`]).
struct Gather<'a> {
    index: &'a [u32],
    width: usize,
}

impl Map1 for Gather<'_> {
    fn f<T: WithDType>(&self, src: &[T], layout: &Layout) -> CandleResult<Vec<T>> {
        let (src, index) = (contiguous(src, layout)?, self.index);
        let rows = layout.dims()[0];
        let mut selected: Vec<T> = Vec::with_capacity(rows * index.len());
        if index.is_empty() {
            return Ok(selected);
        }
        selected.spare_capacity_mut()[..rows * index.len()]
            .par_chunks_mut(index.len())
            .zip(src.par_chunks(self.width))
            .for_each(|(out, row)| {
                for (slot, &column) in out.iter_mut().zip(index) {
                    slot.write(row[column as usize]);
                }
            });
        // SAFETY: the rows × index.len() slots are the chunks above, one per row of src, and
        // each slot of each chunk was written.
        unsafe { selected.set_len(rows * index.len()) };
        Ok(selected)
    }
}

fn broadcast_batch(pos: &Tensor, batch: usize) -> CandleResult<Tensor> {
    let (_, heads, rows, width) = pos.dims4()?;
    pos.broadcast_as((batch, heads, rows, width))?.contiguous()
}

/// The adjoint of the gather in [`relative_scores`]: `grad` `[B, H, L, L]` summed into
/// `[B, H, L, 2S]` at the gathered places.
fn scatter_relative(grad: &Tensor, index: &Tensor, span2: usize) -> CandleResult<Tensor> {
    let (batch, heads, len, _) = grad.dims4()?;
    add_at_columns(
        &grad.reshape((batch * heads, len * len))?,
        index,
        len * span2,
    )?
    .reshape((batch, heads, len, span2))
}

/// The adjoint of [`select_columns`]: `out[r, index[t]] += src[r, t]` into `width` zeroed
/// columns, as candle's `index_add` along dimension 1, which runs on one thread on the CPU
/// (6.5% of base-size training). An untracked CPU tensor (the attention node's backward pass)
/// takes `AddAtColumns`, rows in parallel, each summed in index order as `index_add` sums
/// them; a tracked tensor and CUDA keep `index_add`.
fn add_at_columns(src: &Tensor, index: &Tensor, width: usize) -> CandleResult<Tensor> {
    match src.device().is_cpu() && !src.track_op() {
        true => src
            .contiguous()?
            .apply_op2_no_bwd(&index.contiguous()?, &AddAtColumns { width }),
        false => {
            Tensor::zeros((src.dim(0)?, width), src.dtype(), src.device())?.index_add(index, src, 1)
        }
    }
}

/// [`add_at_columns`] on the CPU: `src` `[rows, index.len()]`, `index` u32 columns below
/// `width`, both contiguous.
struct AddAtColumns {
    width: usize,
}

impl CustomOp2 for AddAtColumns {
    fn name(&self) -> &'static str {
        "add-at-columns"
    }

    fn cpu_fwd(
        &self,
        src: &CpuStorage,
        src_layout: &Layout,
        index: &CpuStorage,
        index_layout: &Layout,
    ) -> CandleResult<(CpuStorage, Shape)> {
        let width = self.width;
        let (rows, picked) = src_layout.shape().dims2()?;
        let index = columns(index, index_layout, width)?;
        if index.len() != picked {
            candle_core::bail!(
                "add-at-columns: {} columns for {picked} values",
                index.len()
            );
        }
        let summed = Scatter { index, width }.map(src, src_layout)?;
        Ok((summed, Shape::from((rows, width))))
    }
}

/// Each row (`index.len()` wide) summed into a zeroed `width`-wide row at its columns, in
/// index order, rows in parallel; every column is below `width` ([`columns`]).
struct Scatter<'a> {
    index: &'a [u32],
    width: usize,
}

impl Map1 for Scatter<'_> {
    fn f<T: WithDType>(&self, src: &[T], layout: &Layout) -> CandleResult<Vec<T>> {
        let (src, index, width) = (contiguous(src, layout)?, self.index, self.width);
        let mut summed = vec![T::zero(); layout.dims()[0] * width];
        if index.is_empty() || width == 0 {
            return Ok(summed);
        }
        summed
            .par_chunks_mut(width)
            .zip(src.par_chunks(index.len()))
            .for_each(|(out, row)| {
                for (&value, &column) in row.iter().zip(index) {
                    out[column as usize] += value;
                }
            });
        Ok(summed)
    }
}

/// A contiguous tensor's elements.
fn contiguous<'a, T>(values: &'a [T], layout: &Layout) -> CandleResult<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("the column gather and scatter take contiguous tensors"),
    }
}

/// A contiguous u32 index's columns, each checked to be below `width`.
fn columns<'a>(index: &'a CpuStorage, layout: &Layout, width: usize) -> CandleResult<&'a [u32]> {
    let index = match (index, layout.contiguous_offsets()) {
        (CpuStorage::U32(index), Some((start, end))) => &index[start..end],
        _ => candle_core::bail!("a column index must be contiguous u32"),
    };
    if let Some(column) = index.iter().find(|&&column| column as usize >= width) {
        candle_core::bail!("column {column} of a {width}-column tensor");
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use neural::testing::{assert_same, random};
    use neural::{attention_probs, DropoutRng};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Flat c2p/p2c gather indices of arbitrary (here random) relative distances.
    fn index(len: usize, span2: usize, seed: u64) -> RelativeIndex {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut c2p = Vec::new();
        let mut p2c = Vec::new();
        for i in 0..len {
            for j in 0..len {
                let delta = rng.random_range(0..span2);
                c2p.push((i * span2 + delta) as u32);
                p2c.push((j * span2 + delta) as u32);
            }
        }
        RelativeIndex {
            c2p: Tensor::from_vec(c2p, len * len, &Device::Cpu).unwrap(),
            p2c: Tensor::from_vec(p2c, len * len, &Device::Cpu).unwrap(),
        }
    }

    /// The CPU nodes give `index_select`'s and `index_add`'s values exactly, in f32 and bf16,
    /// and refuse a column past the row's end; a tracked tensor keeps its gradient.
    #[test]
    fn column_gather_and_its_adjoint_equal_candles_ops() {
        let tracked = random(&[5, 40], 11);
        let src = tracked.as_tensor().detach();
        let mut rng = StdRng::seed_from_u64(12);
        let columns: Vec<u32> = (0..300).map(|_| rng.random_range(0..40)).collect();
        let index = Tensor::new(columns.as_slice(), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let src = src.to_dtype(dtype).unwrap();
            let ours = select_columns(&src, &index).unwrap();
            let theirs = src.index_select(&index, 1).unwrap();
            assert_eq!(ours.dims(), &[5, 300]);
            let [ours, theirs] =
                [ours, theirs].map(|t| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
            assert_eq!(ours, theirs, "{dtype:?}");
            // The adjoint, from 300 values a row into the 40 columns.
            let values = random(&[5, 300], 13)
                .as_tensor()
                .detach()
                .to_dtype(dtype)
                .unwrap();
            let ours = add_at_columns(&values, &index, 40).unwrap();
            let theirs = Tensor::zeros((5, 40), dtype, &Device::Cpu)
                .unwrap()
                .index_add(&index, &values, 1)
                .unwrap();
            let [ours, theirs] =
                [ours, theirs].map(|t| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
            assert_eq!(ours, theirs, "{dtype:?} adjoint");
        }
        // Column c's gradient counts its picks, in every row.
        let grads = select_columns(tracked.as_tensor(), &index)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = grads.get(tracked.as_tensor()).expect("a gradient");
        let picks = columns.iter().filter(|&&c| c == columns[0]).count() as f32;
        let first = grad.get(4).unwrap().get(columns[0] as usize).unwrap();
        assert_eq!(first.to_scalar::<f32>().unwrap(), picks);
        // No columns picked: every row of the adjoint stays zero.
        let none = Tensor::new(&[] as &[u32], &Device::Cpu).unwrap();
        let nothing = Tensor::zeros((5, 0), DType::F32, &Device::Cpu).unwrap();
        let zeros = add_at_columns(&nothing, &none, 40).unwrap();
        assert_eq!(zeros.to_vec2::<f32>().unwrap(), vec![vec![0f32; 40]; 5]);
        let past_the_end = Tensor::new(&[3u32, 40], &Device::Cpu).unwrap();
        let error = select_columns(&src, &past_the_end).unwrap_err().to_string();
        assert!(error.contains("column 40 of a 40-column tensor"), "{error}");
        let two = random(&[5, 2], 14).as_tensor().detach();
        let error = add_at_columns(&two, &past_the_end, 40)
            .unwrap_err()
            .to_string();
        assert!(error.contains("column 40 of a 40-column tensor"), "{error}");
    }

    #[test]
    fn attention_probs_equal_the_composed_attention_with_gradients() {
        let (batch, heads, len, width, span2) = (2, 3, 6, 4, 8);
        let query = random(&[batch, heads, len, width], 1);
        let key = random(&[batch, heads, len, width], 2);
        let pos_key = random(&[1, heads, span2, width], 3);
        let pos_query = random(&[1, heads, span2, width], 4);
        let index = index(len, span2, 5);
        // The last key of the second row is padding.
        let mask = Tensor::from_vec(
            vec![0f32, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., -1e9],
            (batch, 1, 1, len),
            &Device::Cpu,
        )
        .unwrap();
        for p in [0.0, 0.3] {
            let seed = 7;
            let op = attention_probs(
                query.as_tensor(),
                key.as_tensor(),
                Some(Box::new(Relative {
                    pos_key: Some(pos_key.as_tensor().clone()),
                    pos_query: Some(pos_query.as_tensor().clone()),
                    index: index.clone(),
                })),
                &mask,
                Some((p, &DropoutRng::replay(seed, &Device::Cpu).unwrap())),
                None,
                true,
            )
            .unwrap();
            let scores = (query.matmul(&key.t().unwrap()).unwrap()
                + relative_scores(&query, &pos_key, &index.c2p).unwrap())
            .unwrap();
            let scores = (scores + relative_scores(&key, &pos_query, &index.p2c).unwrap()).unwrap();
            let softmax =
                candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
            let composed = if p > 0.0 {
                let keep = DropoutRng::replay(seed, &Device::Cpu)
                    .unwrap()
                    .mask(p, softmax.shape(), &Device::Cpu)
                    .unwrap()
                    .keep;
                ((softmax * keep.to_dtype(DType::F32).unwrap()).unwrap() / (1.0 - p)).unwrap()
            } else {
                softmax
            };
            assert_same(&op, &composed, &[&query, &key, &pos_key, &pos_query]);
        }
    }

    #[test]
    fn layer_norm_equals_the_composed_one_with_gradients() {
        let x = random(&[2, 3, 16], 21);
        let weight = random(&[16], 22);
        let bias = random(&[16], 23);
        let op = layer_norm(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), 1e-7).unwrap();
        let composed = candle_nn::ops::layer_norm_slow(&x, &weight, &bias, 1e-7).unwrap();
        assert_same(&op, &composed, &[&x, &weight, &bias]);
    }
}
