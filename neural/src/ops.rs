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
//! Each backward pass below works on detached inputs. candle records the ops of a backward pass
//! that reads tracked tensors, and a variable's gradient stays in its store to the end of the
//! pass: a LoRA gradient computed from the node's input as given kept the projection's f32
//! output gradient and input alive for the whole pass, which doubled the training peak of
//! Qwen2.5-0.5B's shape (BENCHMARKS.md).
//!
//! A node's value made with candle ops is copied once into the storage candle's custom-op
//! interface asks for (candle cannot move a storage out of a tensor). On the CPU in f32 the
//! projections and the LLM's attention write their value into a buffer of their own
//! (`cpu_matmul`, `cpu_attention`), which the node takes without a copy.
use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Device, Shape, Storage, Tensor, D,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cpu_attention;
use crate::cpu_matmul::{self, CpuValue};

type CandleResult<T> = candle_core::Result<T>;

/// A value computed outside the graph, handed over once to the node that outputs it (with
/// [`precomputed_forward!`](crate::precomputed_forward); the LLM member's ops use it too).
pub struct Precomputed(Mutex<Option<NodeValue>>);

enum NodeValue {
    Tensor(Tensor),
    /// Handed over without a copy.
    Cpu(CpuValue),
}

impl Precomputed {
    pub fn new(value: Tensor) -> CandleResult<Precomputed> {
        // A fresh, contiguous, offset-0 tensor: its storage's first elements are its values.
        let value = if value.is_contiguous() && value.layout().start_offset() == 0 {
            value
        } else {
            value.copy()?
        };
        Ok(Precomputed(Mutex::new(Some(NodeValue::Tensor(
            value.detach(),
        )))))
    }

    /// A value computed on the CPU outside candle's ops.
    pub fn from_cpu(value: CpuValue) -> Precomputed {
        Precomputed(Mutex::new(Some(NodeValue::Cpu(value))))
    }

    fn take(&self) -> CandleResult<NodeValue> {
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

    /// The value as a tensor, for a caller that makes no node of it.
    pub fn tensor(self) -> CandleResult<Tensor> {
        match self.take()? {
            NodeValue::Tensor(value) => Ok(value),
            NodeValue::Cpu(value) => value.into_tensor(),
        }
    }

    pub fn cpu(&self) -> CandleResult<(CpuStorage, Shape)> {
        let value = match self.take()? {
            NodeValue::Cpu(value) => return Ok((CpuStorage::F32(value.data), value.shape)),
            NodeValue::Tensor(value) => value,
        };
        // candle has no way to move a storage out of a tensor: one copy.
        let (storage, _) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), value.shape().clone())),
            _ => bail!("precomputed value is not on the CPU"),
        }
    }

    pub fn cuda(&self) -> CandleResult<(CudaStorage, Shape)> {
        let NodeValue::Tensor(value) = self.take()? else {
            bail!("precomputed value is not on a CUDA device");
        };
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
    let value = match cpu_matmul::projection(x, &weight, bias, None) {
        Some(value) => Precomputed::from_cpu(value),
        None => {
            let value = x.detach().broadcast_matmul(&weight.t()?)?;
            Precomputed::new(match bias {
                Some(bias) => value.broadcast_add(&bias.detach())?,
                None => value,
            })?
        }
    };
    if !x.track_op() {
        return value.tensor();
    }
    x.apply_op1(FrozenLinear { value, weight })
}

/// A frozen `[out, in]` weight laid out as [`frozen_linear`] and [`lora_linear`] multiply it
/// fastest. gemm packs a weight stored `[out, in]` at every forward product; for a weight with
/// more inputs than outputs (an MLP's down projection) that costs more than reading it
/// transposed costs the backward pass, so on the CPU in f32 such a weight is kept `[in, out]`
/// in memory behind an `[out, in]` view (BENCHMARKS.md). Anything else is returned as it is.
pub fn frozen_weight(weight: Tensor) -> CandleResult<Tensor> {
    match *weight.dims() {
        [out, inputs]
            if inputs > out && weight.device().is_cpu() && weight.dtype() == DType::F32 =>
        {
            weight.t()?.contiguous()?.t()
        }
        _ => Ok(weight),
    }
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
        Ok(Some(
            match cpu_matmul::input_gradient(grad, &self.weight, None) {
                Some(dx) => dx.into_tensor()?,
                None => grad.broadcast_matmul(&self.weight)?,
            },
        ))
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
    let dropped = |x: &Tensor| -> CandleResult<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        match &dropout {
            Some(mask) => mask.apply(&x),
            None => Ok(x),
        }
    };
    let down = dropped(&x.detach())?.broadcast_matmul(&a.detach().t()?)?;
    let rank = a.dim(0)?;
    let update = (&down, &b.detach().t()?, scale);
    let value = match cpu_matmul::projection(x, &weight, bias, Some(update)) {
        Some(value) => Precomputed::from_cpu(value),
        None => {
            let base = frozen_linear(&x.detach(), &weight, bias)?;
            let update =
                (down.broadcast_matmul(&(b.detach() * scale)?.t()?)?).to_dtype(base.dtype())?;
            Precomputed::new((base + update)?)?
        }
    };
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return value.tensor();
    }
    x.apply_op3(
        a,
        b,
        LoraLinear {
            value,
            weight,
            scale,
            dropout,
            down: down.reshape(((), rank))?,
        },
    )
}

struct LoraLinear {
    value: Precomputed,
    weight: Tensor,
    scale: f64,
    dropout: Option<KeepMask>,
    /// The forward pass's d·Aᵀ (`[rows, r]`, f32), which dB needs again.
    down: Tensor,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    /// With g = dy (f32, rows flattened), d = drop(x) and u = g·B:
    /// dx = g·W + s·mask(u·A), dA = s·uᵀ·d, dB = s·gᵀ·(d·Aᵀ), d·Aᵀ kept from the forward pass.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (&x.detach(), &a.detach(), &b.detach());
        let in_dim = x.dim(D::Minus1)?;
        let out_dim = grad.dim(D::Minus1)?;
        let g = grad.to_dtype(DType::F32)?.reshape(((), out_dim))?;
        let mut d = x.to_dtype(DType::F32)?;
        if let Some(mask) = &self.dropout {
            d = mask.apply(&d)?;
        }
        let d = d.reshape(((), in_dim))?;
        let u = g.matmul(b)?;
        // Without dropout the update's share adds into the product's buffer on the CPU.
        let dx = match &self.dropout {
            None => cpu_matmul::input_gradient(grad, &self.weight, Some((&u, a, self.scale))),
            Some(_) => None,
        };
        let dx = match dx {
            Some(dx) => dx.into_tensor()?,
            None => {
                let mut dx_update = (u.matmul(a)? * self.scale)?.reshape(x.shape())?;
                if let Some(mask) = &self.dropout {
                    dx_update = mask.apply(&dx_update)?;
                }
                (grad.broadcast_matmul(&self.weight)? + dx_update.to_dtype(x.dtype())?)?
            }
        };
        let da = (u.t()?.matmul(&d)? * self.scale)?;
        let db = (g.t()?.matmul(&self.down)? * self.scale)?;
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

/// Terms added to the attention scores q·kᵀ before the softmax, with trained inputs of their
/// own (DeBERTa's relative positions). The attention node keeps them for its backward pass.
pub trait ScoreTerms: Send + Sync + 'static {
    /// The terms' trained inputs as one tensor (the node's third input), if any.
    fn inputs(&self) -> CandleResult<Option<Tensor>>;
    /// `scores` (of detached queries and keys) with the terms added.
    fn add_to(&self, scores: Tensor, query: &Tensor, key: &Tensor) -> CandleResult<Tensor>;
    /// The backward pass through the terms: adds their share of the queries' and keys'
    /// gradients to `dq` and `dk` and returns the gradient of [`ScoreTerms::inputs`]; `inputs`
    /// are the node's (query, key, the terms' inputs).
    /// `grad_scores` is the f32 gradient of the (capped) scores.
    fn backward(
        &self,
        grad_scores: &Tensor,
        inputs: (&Tensor, &Tensor, &Tensor),
        dq: &mut Tensor,
        dk: &mut Tensor,
    ) -> CandleResult<Option<Tensor>>;
}

/// Attention probabilities for already scaled queries: `dropout(softmax(q·kᵀ + terms +
/// mask))`, the scores' sum in the activations' dtype and the softmax in f32 (as under
/// autocast), returned in the activations' dtype. `terms`: extra score terms (DeBERTa's
/// relative positions); `softcap`: Gemma-2's soft-capping of the scores before the mask,
/// `cap·tanh(scores/cap)`.
///
/// In training (`grads`) the result is one graph node that keeps the softmax output, the byte
/// dropout mask, the capped scores' tanh (with `softcap`) and its inputs `q`, `k` and the
/// terms' inputs, as PyTorch does; the scores and every other `[B, H, L, L]` intermediate are
/// freed at once.
pub fn attention_probs(
    query: &Tensor,
    key: &Tensor,
    terms: Option<Box<dyn ScoreTerms>>,
    mask_bias: &Tensor,
    dropout: Option<(f64, &DropoutRng)>,
    softcap: Option<f64>,
    grads: bool,
) -> CandleResult<Tensor> {
    let dtype = query.dtype();
    let (q, k) = (query.detach(), key.detach());
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(terms) = &terms {
        scores = terms.add_to(scores, &q, &k)?;
    }
    let softcap = match softcap {
        Some(cap) => {
            let tanh = (scores / cap)?.tanh()?;
            scores = (&tanh * cap)?;
            // Kept for the backward pass only.
            grads.then_some(tanh)
        }
        None => None,
    };
    // Each [B, H, L, L] step is dropped as soon as the next exists: two at a time.
    let masked = scores.to_dtype(DType::F32)?.broadcast_add(mask_bias)?;
    drop(scores);
    let softmax = candle_nn::ops::softmax_last_dim(&masked)?;
    drop(masked);
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
    // The node has three inputs: the query stands in for terms without inputs.
    let inputs = match &terms {
        Some(terms) => terms.inputs()?,
        None => None,
    }
    .unwrap_or_else(|| query.clone());
    // Without dropout in f32 the node's own output is the softmax: not kept twice.
    let softmax = (mask.is_some() || dtype != DType::F32).then_some(softmax);
    query.apply_op3(
        key,
        &inputs,
        AttentionProbs {
            value: Precomputed::new(value)?,
            softmax,
            mask,
            softcap,
            terms,
        },
    )
}

/// Attention's output, `softmax(scale·q·kᵀ + mask)·v` with Gemma-2's soft-capping of the
/// scores where `softcap` is given, for q `[b, h, L, d]` and k, v `[b, kv, L, d]` (grouped-query
/// attention: key/value head g serves query heads g·h/kv to (g + 1)·h/kv − 1); `[b, h, L, d]`
/// in v's dtype. The scores and the softmax are taken in f32, as [`attention_probs`] takes
/// them (q and k are small beside the projections: scaling q in bf16 before the product
/// doubled the bf16 error on the LLM fixtures).
///
/// On the CPU in f32 without soft-capping it is one node (`cpu_attention::attention`) that
/// keeps its inputs and the probabilities, and computes each block of query rows only up to
/// its last visible key. Elsewhere it is [`attention_probs`] and a matmul, the keys and values
/// repeated for each query head they serve.
pub fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: f64,
    mask_bias: &Tensor,
    softcap: Option<f64>,
    grads: bool,
) -> CandleResult<Tensor> {
    let (q, k, v) = (query.detach(), key.detach(), value.detach());
    if let Some((output, attended)) = attention_is_fused(query.device(), query.dtype(), softcap)
        .then(|| cpu_attention::attention(&q, &k, &v, mask_bias, scale as f32))
        .flatten()
    {
        let output = Precomputed::from_cpu(output);
        if !grads {
            return output.tensor();
        }
        let node = FusedAttention {
            value: output,
            attended,
        };
        return query.apply_op3(key, value, node);
    }
    let (heads, kv_heads) = (query.dim(1)?, key.dim(1)?);
    if kv_heads == 0 || heads % kv_heads != 0 {
        bail!("{heads} query heads cannot share {kv_heads} key/value heads evenly");
    }
    let times = heads / kv_heads;
    let query = (query.to_dtype(DType::F32)? * scale)?;
    let key = repeat_heads(&key.to_dtype(DType::F32)?, times)?;
    let probs = attention_probs(&query, &key, None, mask_bias, None, softcap, grads)?;
    probs
        .to_dtype(value.dtype())?
        .matmul(&repeat_heads(value, times)?)
}

/// Whether [`attention`] is the fused node for activations of `dtype` on `device`: on the CPU
/// in f32 without soft-capping. A memory estimate counts that node's buffers there.
pub fn attention_is_fused(device: &Device, dtype: DType, softcap: Option<f64>) -> bool {
    device.is_cpu() && dtype == DType::F32 && softcap.is_none()
}

/// `[b, kv, L, d]` repeated to `[b, kv·times, L, d]`, each head serving `times` consecutive
/// query heads.
fn repeat_heads(x: &Tensor, times: usize) -> CandleResult<Tensor> {
    if times == 1 {
        return Ok(x.clone());
    }
    let (b, kv, len, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, times, len, d))?
        .reshape((b, kv * times, len, d))
}

struct FusedAttention {
    value: Precomputed,
    attended: cpu_attention::Attended,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "attention"
    }

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        _output: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (query, key, value) = (&query.detach(), &key.detach(), &value.detach());
        let Some((dq, dk, dv)) =
            cpu_attention::attention_gradients(&self.attended, query, key, value, grad)
        else {
            bail!("attention's gradient is not an f32 CPU tensor of the queries' shape");
        };
        Ok((
            Some(dq.into_tensor()?),
            Some(dk.into_tensor()?),
            Some(dv.into_tensor()?),
        ))
    }
}

struct AttentionProbs {
    value: Precomputed,
    /// The f32 softmax before dropout, where it differs from the node's output.
    softmax: Option<Tensor>,
    mask: Option<KeepMask>,
    /// With soft-capping: tanh(scores / cap), whose derivative the scores' gradient takes.
    softcap: Option<Tensor>,
    terms: Option<Box<dyn ScoreTerms>>,
}

impl CustomOp3 for AttentionProbs {
    fn name(&self) -> &'static str {
        "attention-probs"
    }

    crate::precomputed_forward!(s1 l1, s2 l2, s3 l3);

    /// Softmax: ds = y·(dy − Σⱼ dy·y), times 1 − tanh² with soft-capping. Scores: dq = ds·k,
    /// dk = dsᵀ·q, plus the terms' shares ([`ScoreTerms::backward`]).
    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        inputs: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (query, key, inputs, output) = (
            &query.detach(),
            &key.detach(),
            &inputs.detach(),
            &output.detach(),
        );
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
        let grad_inputs = match &self.terms {
            Some(terms) => terms.backward(&grad_scores, (query, key, inputs), &mut dq, &mut dk)?,
            None => None,
        };
        Ok((Some(dq), Some(dk), grad_inputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same, max_difference, random, TOLERANCE};

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

    /// A weight with more inputs than outputs is stored transposed, with the same values; a
    /// wider one is left as it is.
    #[test]
    fn frozen_weight_transposes_only_narrow_outputs() {
        let narrow = random(&[2, 5], 1).as_tensor().detach();
        let laid_out = frozen_weight(narrow.clone()).unwrap();
        assert_eq!(laid_out.stride(), [1, 2]);
        assert_eq!(max_difference(&laid_out, &narrow), 0.0);
        let wide = random(&[5, 2], 2).as_tensor().detach();
        assert_eq!(frozen_weight(wide).unwrap().stride(), [2, 1]);
    }

    /// The LoRA projection gives the composed ops' value and the gradients of x, A and B, with
    /// and without a dropout mask on the adapter's input, and none for the frozen weight.
    #[test]
    fn lora_linear_matches_the_composed_ops() {
        lora_linear_matches_the_composed_ops_with(Some(0.3));
        lora_linear_matches_the_composed_ops_with(None);
    }

    fn lora_linear_matches_the_composed_ops_with(dropout: Option<f64>) {
        let (x, w, bias) = (random(&[2, 5, 4], 1), random(&[3, 4], 2), random(&[3], 3));
        let (a, b) = (random(&[2, 4], 5), random(&[3, 2], 6));
        let upstream = random(&[2, 5, 3], 4).as_tensor().detach();
        let scale = 1.5;
        let mask = || {
            dropout.map(|p| {
                DropoutRng::replay(9, &Device::Cpu)
                    .unwrap()
                    .mask(p, x.shape(), &Device::Cpu)
                    .unwrap()
            })
        };
        let composed = {
            let base = x
                .as_tensor()
                .broadcast_matmul(&w.as_tensor().detach().t().unwrap())
                .unwrap()
                .broadcast_add(&bias.as_tensor().detach())
                .unwrap();
            let dropped = match mask() {
                Some(mask) => mask.apply(x.as_tensor()).unwrap(),
                None => x.as_tensor().clone(),
            };
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
            mask(),
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

    /// Plain attention (no terms) against the composed softmax(q·kᵀ + mask),
    /// values and gradients: with a zero mask, and with a causal mask per batch row, one with
    /// a padded key, as the LLM member builds them.
    #[test]
    fn plain_attention_probs_equal_the_composed_ones() {
        let causal: Vec<f32> = (0..2 * 4 * 4)
            .map(|i| {
                let (batch, row, col) = (i / 16, (i / 4) % 4, i % 4);
                if col > row || (batch == 1 && col == 0) {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let cases = [
            (
                [1, 2, 5, 3],
                (11, 12),
                Tensor::zeros((1, 1, 1, 5), DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                [2, 3, 4, 5],
                (21, 22),
                Tensor::from_vec(causal, (2, 1, 4, 4), &Device::Cpu).unwrap(),
            ),
        ];
        for (shape, (query_seed, key_seed), mask) in cases {
            let (query, key) = (random(&shape, query_seed), random(&shape, key_seed));
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
            let scores = query.matmul(&key.t().unwrap()).unwrap();
            let composed =
                candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
            assert_same(&op, &composed, &[&query, &key]);
        }
    }

    /// The fused attention against the composed softmax(s·q·kᵀ + mask)·v, values and the
    /// gradients of q, k and v: grouped key/value heads, 300 tokens (three blocks of query
    /// rows, the last one short), a causal mask per batch row with the LLM member's −f32::MAX,
    /// one row left-padded (its padding queries see no key), values read through a
    /// transposed view and the output's gradient arriving as one; and a zero mask of one row.
    #[test]
    fn fused_attention_equals_the_composed_ops() {
        let (b, h, kv, len, d) = (2, 4, 2, 300, 8);
        let causal: Vec<f32> = (0..b * len * len)
            .map(|i| {
                let (batch, row, col) = (i / (len * len), (i / len) % len, i % len);
                match col > row || (batch == 1 && col < 3) {
                    true => -f32::MAX,
                    false => 0.0,
                }
            })
            .collect();
        let causal = Tensor::from_vec(causal, (b, 1, len, len), &Device::Cpu).unwrap();
        let query = random(&[b, h, len, d], 41);
        let key = random(&[b, kv, len, d], 42);
        let value_rows = random(&[b, len, kv, d], 43);
        let value = value_rows.transpose(1, 2).unwrap();
        let scale = 0.35;
        let fused = attention(
            query.as_tensor(),
            key.as_tensor(),
            &value,
            scale,
            &causal,
            None,
            true,
        )
        .unwrap();
        // Key/value head g serves query heads 2g and 2g + 1.
        let served = Tensor::new(&[0u32, 0, 1, 1], &Device::Cpu).unwrap();
        let composed = |q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor| {
            let k = k.index_select(&served, 1).unwrap();
            let v = v.contiguous().unwrap().index_select(&served, 1).unwrap();
            let scores = (q * scale).unwrap().matmul(&k.t().unwrap()).unwrap();
            let probs =
                candle_nn::ops::softmax(&scores.broadcast_add(mask).unwrap(), D::Minus1).unwrap();
            probs.matmul(&v).unwrap()
        };
        let expected = composed(query.as_tensor(), key.as_tensor(), &value, &causal);
        let rows = |t: &Tensor| t.transpose(1, 2).unwrap();
        assert_same(
            &rows(&fused),
            &rows(&expected),
            &[&query, &key, &value_rows],
        );

        let (query, key, value) = (
            random(&[1, 2, 5, 3], 44),
            random(&[1, 2, 5, 3], 45),
            random(&[1, 2, 5, 3], 46),
        );
        let zero = Tensor::zeros((1, 1, 1, 5), DType::F32, &Device::Cpu).unwrap();
        let (q, k, v) = (query.as_tensor(), key.as_tensor(), value.as_tensor());
        let fused = attention(q, k, v, scale, &zero, None, true).unwrap();
        let scores = (q * scale).unwrap().matmul(&k.t().unwrap()).unwrap();
        let expected = candle_nn::ops::softmax(&scores.broadcast_add(&zero).unwrap(), D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap();
        assert_same(&fused, &expected, &[&query, &key, &value]);
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
