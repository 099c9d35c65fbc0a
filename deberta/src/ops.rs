//! Graph nodes with hand-written backward passes that keep only what their gradient needs.
//!
//! candle's graph holds every op's inputs until the backward pass, and its fused softmax and
//! LayerNorm kernels have no backward pass, so a composed attention keeps about thirteen
//! `[B, H, L, L]` tensors per layer where PyTorch keeps two (its softmax saves only its output,
//! its dropout a byte mask). Each op here computes its value with candle's fused kernels on
//! detached inputs, so no intermediate is recorded, and then enters the graph as one node whose
//! backward pass is written out below. Both directions are candle tensor ops, so the ops run
//! on every device candle has kernels for (CPU and CUDA) with no kernels of their own.
//!
//! A node's value is copied once into the storage candle's custom-op interface asks for: a
//! memcpy per op, negligible beside the matmuls around it.
use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Device, Shape, Storage, Tensor, D,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type CandleResult<T> = candle_core::Result<T>;

/// A value computed outside the graph, handed over once to the node that outputs it (with
/// [`precomputed_forward!`](crate::precomputed_forward); the LLM member's ops use it too).
pub struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub fn new(value: Tensor) -> CandleResult<Precomputed> {
        // A fresh, contiguous, offset-0 tensor: its storage's first elements are its values.
        let value = if value.is_contiguous() && value.layout().start_offset() == 0 {
            value
        } else {
            value.copy()?
        };
        Ok(Precomputed(Mutex::new(Some(value.detach()))))
    }

    fn take(&self) -> CandleResult<Tensor> {
        match self
            .0
            .lock()
            .expect("precomputed value lock poisoned")
            .take()
        {
            Some(value) => Ok(value),
            None => bail!("a precomputed node's value was taken twice"),
        }
    }

    pub fn cpu(&self) -> CandleResult<(CpuStorage, Shape)> {
        let value = self.take()?;
        let (storage, _) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), value.shape().clone())),
            _ => bail!("precomputed value is not on the CPU"),
        }
    }

    pub fn cuda(&self) -> CandleResult<(CudaStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, value.shape().clone())),
            _ => bail!("precomputed value is not on a CUDA device"),
        }
    }
}

/// The `cpu_fwd` and `cuda_fwd` of a node whose value was computed beforehand from the same
/// inputs (held in `self.value`, a [`Precomputed`]): the input storages are not read again.
#[macro_export]
macro_rules! precomputed_forward {
    ($($storage:ident $layout:ident),+) => {
        fn cpu_fwd(
            &self,
            $($storage: &candle_core::CpuStorage, $layout: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $(let _ = ($storage, $layout);)+
            self.value.cpu()
        }

        fn cuda_fwd(
            &self,
            $($storage: &candle_core::CudaStorage, $layout: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $(let _ = ($storage, $layout);)+
            self.value.cuda()
        }
    };
}

/// A projection by a frozen weight, `x · Wᵀ (+ b)`, as one graph node whose backward pass
/// gives the input's gradient alone. candle's matmul node computes the gradients of both
/// operands, so every frozen projection of a LoRA model would cost a weight-sized gradient
/// (the base model once more) and a third more backward compute. The weight and bias are
/// never given gradients.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> CandleResult<Tensor> {
    let weight = weight.detach();
    let value = x.detach().broadcast_matmul(&weight.t()?)?;
    let value = match bias {
        Some(bias) => value.broadcast_add(&bias.detach())?,
        None => value,
    };
    if !x.track_op() {
        return Ok(value);
    }
    x.apply_op1(FrozenLinear {
        value: Precomputed::new(value)?,
        weight,
    })
}

struct FrozenLinear {
    value: Precomputed,
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    crate::precomputed_forward!(storage layout);

    /// dx = dy · W (W is `[out, in]`, dy `[.., out]`).
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.weight)?))
    }
}

/// A frozen projection with a LoRA update, `x·Wᵀ (+ b) + s·(drop(x)·Aᵀ)·Bᵀ`, as one graph node
/// whose inputs are x, A and B (W frozen: no gradient). Composed candle ops would keep the
/// base output, the update, its scaled copy and their sum for the backward pass, four
/// output-sized tensors per projection (for an MLP projection, four times the layer's input);
/// this node keeps only its inputs and the dropout mask. The update runs in f32 whatever x's
/// dtype (as PEFT keeps adapters), and the output has x's dtype. `dropout`: the mask applied to
/// the adapter's input (PEFT's `lora_dropout`), drawn by the caller.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: (&Tensor, &Tensor, f64),
    dropout: Option<KeepMask>,
) -> CandleResult<Tensor> {
    let (a, b, scale) = lora;
    let weight = weight.detach();
    let base = frozen_linear(&x.detach(), &weight, bias)?;
    let dropped = |x: &Tensor| -> CandleResult<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        match &dropout {
            Some(mask) => mask.apply(&x),
            None => Ok(x),
        }
    };
    let down = dropped(&x.detach())?.broadcast_matmul(&a.detach().t()?)?;
    let update = (down.broadcast_matmul(&(b.detach() * scale)?.t()?)?).to_dtype(base.dtype())?;
    let value = (base + update)?;
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return Ok(value);
    }
    x.apply_op3(
        a,
        b,
        LoraLinear {
            value: Precomputed::new(value)?,
            weight,
            scale,
            dropout,
        },
    )
}

struct LoraLinear {
    value: Precomputed,
    weight: Tensor,
    scale: f64,
    dropout: Option<KeepMask>,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    /// With g = dy (f32, rows flattened), d = drop(x) and u = g·B:
    /// dx = g·W + s·mask(u·A), dA = s·uᵀ·d, dB = s·gᵀ·(d·Aᵀ).
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let in_dim = x.dim(D::Minus1)?;
        let out_dim = grad.dim(D::Minus1)?;
        let g = grad.to_dtype(DType::F32)?.reshape(((), out_dim))?;
        let mut d = x.to_dtype(DType::F32)?;
        if let Some(mask) = &self.dropout {
            d = mask.apply(&d)?;
        }
        let d = d.reshape(((), in_dim))?;
        let u = g.matmul(b)?;
        let mut dx_update = (u.matmul(a)? * self.scale)?.reshape(x.shape())?;
        if let Some(mask) = &self.dropout {
            dx_update = mask.apply(&dx_update)?;
        }
        let dx = (grad.broadcast_matmul(&self.weight)? + dx_update.to_dtype(x.dtype())?)?;
        let da = (u.t()?.matmul(&d)? * self.scale)?;
        let db = (g.t()?.matmul(&d.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Seeded randomness for dropout in training. CPU masks come from this generator so that a run
/// is reproducible; on a GPU the device's own (seeded) generator is used to avoid transfers.
pub struct DropoutRng(RefCell<StdRng>);

impl DropoutRng {
    pub fn new(rng: StdRng) -> Self {
        DropoutRng(RefCell::new(rng))
    }

    /// A seed for a generator of its own (one per encoder layer and pass).
    pub fn fork_seed(&self) -> u64 {
        self.0.borrow_mut().random()
    }

    /// The generator of `seed`: the same masks every time it is made again. On a GPU the
    /// device's generator is reseeded, which makes its masks repeat too.
    pub fn replay(seed: u64, device: &Device) -> CandleResult<DropoutRng> {
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        Ok(DropoutRng::new(StdRng::seed_from_u64(seed)))
    }

    /// A dropout mask of `shape`, each entry dropped with probability p.
    pub fn mask(&self, p: f64, shape: &Shape, device: &Device) -> CandleResult<KeepMask> {
        let keep = match device {
            Device::Cpu => {
                let mut rng = self.0.borrow_mut();
                let keep: Vec<u8> = (0..shape.elem_count())
                    .map(|_| u8::from(rng.random::<f64>() >= p))
                    .collect();
                Tensor::from_vec(keep, shape, device)?
            }
            device => Tensor::rand(0f32, 1f32, shape, device)?.ge(p)?,
        };
        Ok(KeepMask {
            keep,
            scale: 1.0 / (1.0 - p),
        })
    }
}

/// Inverted dropout's mask: a byte per entry (1 kept, 0 dropped), kept entries scaled by
/// 1/(1−p). The forward and backward passes both apply it.
pub struct KeepMask {
    pub keep: Tensor,
    pub scale: f64,
}

impl KeepMask {
    pub fn apply(&self, x: &Tensor) -> CandleResult<Tensor> {
        (x * self.keep.to_dtype(x.dtype())?)? * self.scale
    }
}

/// Inverted dropout with a byte mask: kept entries are scaled by 1/(1−p). Keeps the mask, not
/// an f32 copy of it, for the backward pass.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&DropoutRng>) -> CandleResult<Tensor> {
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = rng.mask(p, x.shape(), x.device())?;
    let value = mask.apply(&x.detach())?;
    if !x.track_op() {
        return Ok(value);
    }
    x.apply_op1(Dropout {
        value: Precomputed::new(value)?,
        mask,
    })
}

struct Dropout {
    value: Precomputed,
    mask: KeepMask,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "byte-mask-dropout"
    }

    crate::precomputed_forward!(storage layout);

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        Ok(Some(self.mask.apply(grad)?))
    }
}

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

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

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

/// The relative-position terms of one layer's attention: the projected relative embeddings
/// `[1, H, 2S, d]` for content→position (keys) and position→content (queries, scaled).
pub struct Relative<'a> {
    pub pos_key: Option<Tensor>,
    pub pos_query: Option<Tensor>,
    pub index: &'a RelativeIndex,
}

/// `out[b,h,i,j] = x[b,h,row,:] · pos[h, δ(i,j), :]` through the flat index, where `row` is i
/// for c2p and j for p2c (the index says which).
fn relative_scores(x: &Tensor, pos: &Tensor, index: &Tensor) -> CandleResult<Tensor> {
    let (batch, heads, len, _) = x.dims4()?;
    let all = x.matmul(&broadcast_batch(pos, batch)?.t()?)?; // [B, H, L, 2S]
    let span2 = all.dim(3)?;
    all.reshape((batch * heads, len * span2))?
        .index_select(index, 1)?
        .reshape((batch, heads, len, len))
}

fn broadcast_batch(pos: &Tensor, batch: usize) -> CandleResult<Tensor> {
    let (_, heads, rows, width) = pos.dims4()?;
    pos.broadcast_as((batch, heads, rows, width))?.contiguous()
}

/// The adjoint of the gather in [`relative_scores`]: `grad` `[B, H, L, L]` summed into
/// `[B, H, L, 2S]` at the gathered places.
fn scatter_relative(grad: &Tensor, index: &Tensor, span2: usize) -> CandleResult<Tensor> {
    let (batch, heads, len, _) = grad.dims4()?;
    Tensor::zeros((batch * heads, len * span2), grad.dtype(), grad.device())?
        .index_add(index, &grad.reshape((batch * heads, len * len))?, 1)?
        .reshape((batch, heads, len, span2))
}

/// DeBERTa's disentangled attention probabilities for already scaled queries (and position
/// queries): `dropout(softmax(q·kᵀ + c2p + p2c + mask))`, the scores' sum in the activations'
/// dtype and the softmax in f32 (as under autocast), returned in the activations' dtype.
/// `softcap`: Gemma-2's soft-capping of the scores before the mask, `cap·tanh(scores/cap)`.
///
/// In training (`grads`) the result is one graph node that keeps the softmax output, the byte
/// dropout mask, the capped scores' tanh (with `softcap`) and its inputs `q`, `k` and the
/// position projections, as PyTorch does; the scores and every other `[B, H, L, L]`
/// intermediate are freed at once.
pub fn attention_probs(
    query: &Tensor,
    key: &Tensor,
    relative: Option<Relative>,
    mask_bias: &Tensor,
    dropout: Option<(f64, &DropoutRng)>,
    softcap: Option<f64>,
    grads: bool,
) -> CandleResult<Tensor> {
    let dtype = query.dtype();
    let (q, k) = (query.detach(), key.detach());
    let mut scores = q.matmul(&k.t()?)?;
    let mut positions = Vec::new();
    let mut gathers = Vec::new();
    if let Some(relative) = &relative {
        if let Some(pos_key) = &relative.pos_key {
            scores = (scores + relative_scores(&q, &pos_key.detach(), &relative.index.c2p)?)?;
            positions.push(pos_key.clone());
            gathers.push(Gather::ContentToPosition(relative.index.c2p.clone()));
        }
        if let Some(pos_query) = &relative.pos_query {
            scores = (scores + relative_scores(&k, &pos_query.detach(), &relative.index.p2c)?)?;
            positions.push(pos_query.clone());
            gathers.push(Gather::PositionToContent(relative.index.p2c.clone()));
        }
    }
    let softcap = match softcap {
        Some(cap) => {
            let tanh = (scores / cap)?.tanh()?;
            scores = (&tanh * cap)?;
            Some(tanh)
        }
        None => None,
    };
    let softmax =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?.broadcast_add(mask_bias)?)?;
    drop(scores);
    let mask = match dropout {
        Some((p, rng)) if p > 0.0 => Some(rng.mask(p, softmax.shape(), softmax.device())?),
        _ => None,
    };
    let value = match &mask {
        Some(mask) => mask.apply(&softmax)?.to_dtype(dtype)?,
        None => softmax.to_dtype(dtype)?,
    };
    if !grads {
        return Ok(value);
    }
    // One tensor for the position projections, so that the node has three inputs.
    let positions = if positions.is_empty() {
        query.clone()
    } else {
        Tensor::cat(&positions, 0)?
    };
    // Without dropout in f32 the node's own output is the softmax: not kept twice.
    let softmax = (mask.is_some() || dtype != DType::F32).then_some(softmax);
    query.apply_op3(
        key,
        &positions,
        AttentionProbs {
            value: Precomputed::new(value)?,
            softmax,
            mask,
            softcap,
            gathers,
        },
    )
}

enum Gather {
    /// c2p: query rows against position keys.
    ContentToPosition(Tensor),
    /// p2c: key rows against position queries.
    PositionToContent(Tensor),
}

struct AttentionProbs {
    value: Precomputed,
    /// The f32 softmax before dropout, where it differs from the node's output.
    softmax: Option<Tensor>,
    mask: Option<KeepMask>,
    /// With soft-capping: tanh(scores / cap), whose derivative the scores' gradient takes.
    softcap: Option<Tensor>,
    /// The relative terms present, in the order of their projections in the third input.
    gathers: Vec<Gather>,
}

impl CustomOp3 for AttentionProbs {
    fn name(&self) -> &'static str {
        "disentangled-attention-probs"
    }

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    /// Softmax: ds = y·(dy − Σⱼ dy·y), times 1 − tanh² with soft-capping. Scores: dq = ds·k,
    /// dk = dsᵀ·q, and through each
    /// relative term the gather's adjoint G (a scatter-add of ds):
    /// c2p adds G·pₖ to dq and gives dpₖ = Σ_b Gᵀ·q; p2c adds G·p_q to dk and dp_q = Σ_b Gᵀ·k.
    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        positions: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dtype = query.dtype();
        let mut grad_softmax = grad.to_dtype(DType::F32)?;
        if let Some(mask) = &self.mask {
            grad_softmax = mask.apply(&grad_softmax)?;
        }
        let y = self.softmax.as_ref().unwrap_or(output);
        let dot = (&grad_softmax * y)?.sum_keepdim(D::Minus1)?;
        let mut grad_scores = (grad_softmax.broadcast_sub(&dot)? * y)?;
        drop(grad_softmax);
        // cap·tanh(s/cap) has the derivative 1 − tanh².
        if let Some(tanh) = &self.softcap {
            let tanh = tanh.to_dtype(DType::F32)?;
            grad_scores = (grad_scores * (1.0 - tanh.sqr()?)?)?;
        }
        let grad_scores_low = grad_scores.to_dtype(dtype)?;
        let mut dq = grad_scores_low.matmul(key)?;
        let mut dk = grad_scores_low.t()?.matmul(query)?;
        drop(grad_scores_low);
        let batch = query.dim(0)?;
        let mut grad_positions = Vec::new();
        for (i, gather) in self.gathers.iter().enumerate() {
            let pos = positions.narrow(0, i, 1)?;
            let span2 = pos.dim(2)?;
            let (index, rows, grad_rows) = match gather {
                Gather::ContentToPosition(index) => (index, query, &mut dq),
                Gather::PositionToContent(index) => (index, key, &mut dk),
            };
            let adjoint = scatter_relative(&grad_scores, index, span2)?.to_dtype(dtype)?;
            *grad_rows = (&*grad_rows + adjoint.matmul(&broadcast_batch(&pos, batch)?)?)?;
            grad_positions.push(adjoint.t()?.matmul(rows)?.sum_keepdim(0)?);
        }
        let grad_positions = if grad_positions.is_empty() {
            None
        } else {
            Some(Tensor::cat(&grad_positions, 0)?)
        };
        Ok((Some(dq), Some(dk), grad_positions))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Var;

    const TOLERANCE: f32 = 1e-5;

    /// The frozen projection gives the composed one's value and input gradient, and no
    /// gradient for its weight or bias.
    #[test]
    fn frozen_linear_gives_the_input_gradient_alone() {
        let (x, w, b) = (random(&[2, 5, 4], 1), random(&[3, 4], 2), random(&[3], 3));
        let upstream = random(&[2, 5, 3], 4).as_tensor().detach();
        let composed = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().detach().t().unwrap())
            .unwrap()
            .broadcast_add(&b.as_tensor().detach())
            .unwrap();
        let frozen = frozen_linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        let diff = (&composed - &frozen)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < TOLERANCE);
        let grad_of = |y: &Tensor| {
            let grads = (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                grads.get(x.as_tensor()).unwrap().clone(),
                grads.get(w.as_tensor()).is_some() || grads.get(b.as_tensor()).is_some(),
            )
        };
        let ((dx_composed, _), (dx_frozen, weight_grads)) = (grad_of(&composed), grad_of(&frozen));
        let diff = (dx_composed - dx_frozen)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < TOLERANCE);
        assert!(!weight_grads, "the frozen weight got a gradient");
    }

    /// The LoRA projection gives the composed ops' value and the gradients of x, A and B, with
    /// a dropout mask on the adapter's input, and none for the frozen weight.
    #[test]
    fn lora_linear_matches_the_composed_ops() {
        let (x, w, bias) = (random(&[2, 5, 4], 1), random(&[3, 4], 2), random(&[3], 3));
        let (a, b) = (random(&[2, 4], 5), random(&[3, 2], 6));
        let upstream = random(&[2, 5, 3], 4).as_tensor().detach();
        let scale = 1.5;
        let mask = || {
            DropoutRng::replay(9, &Device::Cpu)
                .unwrap()
                .mask(0.3, x.shape(), &Device::Cpu)
                .unwrap()
        };
        let composed = {
            let base = x
                .as_tensor()
                .broadcast_matmul(&w.as_tensor().detach().t().unwrap())
                .unwrap()
                .broadcast_add(&bias.as_tensor().detach())
                .unwrap();
            let dropped = mask().apply(x.as_tensor()).unwrap();
            let down = dropped
                .broadcast_matmul(&a.as_tensor().t().unwrap())
                .unwrap();
            let up = down.broadcast_matmul(&b.as_tensor().t().unwrap()).unwrap();
            (base + (up * scale).unwrap()).unwrap()
        };
        let fused = lora_linear(
            x.as_tensor(),
            w.as_tensor(),
            Some(bias.as_tensor()),
            (a.as_tensor(), b.as_tensor(), scale),
            Some(mask()),
        )
        .unwrap();
        assert!(max_difference(&composed, &fused) < TOLERANCE);
        let grads_of = |y: &Tensor| {
            let grads = (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [&x, &a, &b].map(|v| grads.get(v.as_tensor()).unwrap().clone())
        };
        let (expected, ours) = (grads_of(&composed), grads_of(&fused));
        for (name, (e, o)) in ["x", "A", "B"].iter().zip(expected.iter().zip(&ours)) {
            let difference = max_difference(e, o);
            assert!(difference < TOLERANCE, "d{name} differs by {difference}");
        }
        let grads = (&fused * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(w.as_tensor()).is_none() && grads.get(bias.as_tensor()).is_none());
    }

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// The largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
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
    fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
        let dims = out.dims().to_vec();
        (out * random(&dims, seed).as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
    }

    /// Values and gradients (for `inputs`) of the op's loss against the composed version's.
    fn assert_same(op: &Tensor, composed: &Tensor, inputs: &[&Var]) {
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
                Some(Relative {
                    pos_key: Some(pos_key.as_tensor().clone()),
                    pos_query: Some(pos_query.as_tensor().clone()),
                    index: &index,
                }),
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
    fn attention_probs_without_relative_terms_equal_the_plain_softmax() {
        let query = random(&[1, 2, 5, 3], 11);
        let key = random(&[1, 2, 5, 3], 12);
        let mask = Tensor::zeros((1, 1, 1, 5), DType::F32, &Device::Cpu).unwrap();
        let op = attention_probs(
            query.as_tensor(),
            key.as_tensor(),
            None,
            &mask,
            None,
            None,
            true,
        )
        .unwrap();
        let composed =
            candle_nn::ops::softmax(&query.matmul(&key.t().unwrap()).unwrap(), D::Minus1).unwrap();
        assert_same(&op, &composed, &[&query, &key]);
    }

    /// Gemma-2's soft-capping: cap·tanh(scores/cap) before the mask, value and gradients
    /// against the composed ops (scores large enough that the cap bends them).
    #[test]
    fn soft_capped_attention_probs_equal_the_composed_ones() {
        let query = random(&[2, 2, 5, 3], 13);
        let key = random(&[2, 2, 5, 3], 14);
        let scaled = (query.as_tensor() * 4.0).unwrap();
        let mask = Tensor::from_vec(
            vec![0f32, 0., 0., 0., -1e9, 0., 0., 0., 0., 0.],
            (2, 1, 1, 5),
            &Device::Cpu,
        )
        .unwrap();
        let cap = 2.0;
        let op =
            attention_probs(&scaled, key.as_tensor(), None, &mask, None, Some(cap), true).unwrap();
        let scores = scaled.matmul(&key.t().unwrap()).unwrap();
        let capped = ((scores / cap).unwrap().tanh().unwrap() * cap).unwrap();
        let composed =
            candle_nn::ops::softmax(&capped.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        assert_same(&op, &composed, &[&query, &key]);
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

    #[test]
    fn dropout_keeps_a_byte_mask_and_scales_gradients_like_the_composed_one() {
        let x = random(&[4, 50], 31);
        let op = dropout(
            x.as_tensor(),
            0.25,
            Some(&DropoutRng::replay(3, &Device::Cpu).unwrap()),
        )
        .unwrap();
        let keep = DropoutRng::replay(3, &Device::Cpu)
            .unwrap()
            .mask(0.25, x.shape(), &Device::Cpu)
            .unwrap()
            .keep;
        assert_eq!(keep.dtype(), DType::U8);
        let kept = keep
            .sum_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (120.0..180.0).contains(&kept),
            "{kept} of 200 kept at p = 0.25"
        );
        let composed =
            ((x.as_tensor() * keep.to_dtype(DType::F32).unwrap()).unwrap() / 0.75).unwrap();
        assert_same(&op, &composed, &[&x]);
    }
}
