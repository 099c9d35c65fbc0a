//! A decoder LLM with a sequence-classification head, as Hugging Face's
//! `Gemma2ForSequenceClassification`, `Qwen2ForSequenceClassification` and
//! `LlamaForSequenceClassification` compute it: the hidden state of each row's last real
//! token goes through the bias-free `score` linear to one logit per class.
//!
//! Written here rather than taken from candle-transformers, whose Gemma-2, Qwen2 and Llama are
//! built for generation: one sequence at a time with a KV cache, no padding mask and no
//! classification head; the member batches padded rows and will train adapters inside the
//! projections.
use crate::adapter::{
    lora_key, Adapter, LoraSpec, LoraWeights, ProjectionShapes, SCORE_KEY, TARGETABLE,
};
use crate::config::{DecoderConfig, Family, Llama3RopeScaling};
use crate::ops::{gated_product, Activation};
use crate::safetensors_reader::SafetensorsReader;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor, TensorId, Var};
use candle_nn::{Linear, Module, VarBuilder};
use neural::{checkpointed, DropoutRng, ParamGrads, Recompute};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The safetensors files of a model folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists, each of which must be there.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::MissingFile {
            path: dir.to_owned(),
            what: "model.safetensors or model.safetensors.index.json".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(Error::io(&index))?;
    let bad = |message: String| Error::BadModelFile {
        path: index.clone(),
        message,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map".into()))?;
    let mut shards: Vec<&str> = map
        .values()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad(format!("weight_map value {v}: not a file name")))
        })
        .collect::<Result<_>>()?;
    shards.sort_unstable();
    shards.dedup();
    shards
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            match path.is_file() {
                true => Ok(path),
                false => Err(Error::MissingFile {
                    path: path.clone(),
                    what: format!("a shard that {} lists", index.display()),
                }),
            }
        })
        .collect()
}

/// The fingerprint of a model folder (`neural::fingerprint_files`: every byte of its weight
/// files, `config.json` and `tokenizer.json`), which a fold's run records so that its
/// adapter is never applied to another base, nor merged with folds trained on another.
pub fn base_fingerprint(dir: &Path) -> Result<String> {
    let mut files = weight_files(dir)?;
    files.extend(neural::existing_files(
        dir,
        &["config.json", "tokenizer.json"],
    ));
    Ok(neural::fingerprint_files(&files)?)
}

/// RMSNorm, computed in f32 as Hugging Face does: `x / sqrt(mean(x²) + eps)` times the weight,
/// or times `1 + weight` for Gemma-2.
struct RmsNorm {
    scale: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(vb: VarBuilder, config: &DecoderConfig) -> Result<RmsNorm> {
        let weight = vb.get(config.hidden_size, "weight")?.to_dtype(DType::F32)?;
        let scale = match config.family {
            Family::Gemma2 => (weight + 1.0)?,
            Family::Qwen2 | Family::Llama => weight,
        };
        Ok(RmsNorm {
            scale,
            eps: config.rms_norm_eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::rms_norm(x, &self.scale, self.eps)?)
    }
}

/// A projection, with its bias where the family has one.
fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// A variable's tensor as a pass needs it: tracked, so that the backward pass reaches it, or
/// detached for prediction, where a tracked one would keep every activation of the forward
/// pass alive for a backward pass that never comes (5.6 GB at 512 tokens for Qwen2.5-0.5B).
fn variable(var: &Var, grads: bool) -> Tensor {
    match grads {
        true => var.as_tensor().clone(),
        false => var.as_tensor().detach(),
    }
}

/// How a forward pass runs.
struct Pass<'a> {
    /// Recorded for a backward pass to the adapter and the head.
    grads: bool,
    /// Training: the generator of the adapters' dropout masks.
    dropout: Option<&'a DropoutRng>,
    /// Gradient checkpointing: each layer keeps its input only and runs again in the
    /// backward pass.
    checkpoint: bool,
}

impl Pass<'_> {
    const PREDICT: Pass<'static> = Pass {
        grads: false,
        dropout: None,
        checkpoint: false,
    };
}

/// A frozen base weight: dense, or 8-bit for inference (candle's Q8_0: blocks of 32 int8
/// values with an f16 scale, 1.0625 bytes a weight, which it multiplies without making a
/// dense copy; it has no backward pass, so adapters train on a dense base).
enum BaseWeight {
    Dense(Linear),
    Q8 {
        weight: QMatMul,
        bias: Option<Tensor>,
        bytes: usize,
    },
}

/// The token embedding table: as loaded, or 8 bits a weight for prediction.
enum Embedding {
    Dense(Tensor),
    /// Each row as bytes q with x ≈ (q − 128)·scale, scale = the row's largest |x| / 127
    /// (f16, one per row): half the bytes of f16 and two bytes a row. candle's Q8_0 has no row lookup, so the
    /// looked-up rows are dequantized per batch instead.
    Int8 {
        rows: Tensor,
        scales: Tensor,
        dtype: DType,
    },
}

/// Rows per block when quantizing the table: a block's f32 copy is the only temporary.
const EMBEDDING_BLOCK_ROWS: usize = 4096;

impl Embedding {
    /// `[n, hidden]` rows of `ids` (`[n]`), in the table's dtype.
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(table) => Ok(table.embedding(ids)?),
            Embedding::Int8 {
                rows,
                scales,
                dtype,
            } => {
                let q = rows.index_select(ids, 0)?.to_dtype(DType::F32)?;
                let scale = scales.index_select(ids, 0)?.to_dtype(DType::F32)?;
                Ok(((q - 128.0)?.broadcast_mul(&scale)?).to_dtype(*dtype)?)
            }
        }
    }

    fn quantize(&mut self) -> Result<()> {
        let Embedding::Dense(table) = self else {
            return Ok(());
        };
        let (vocab, _) = table.dims2()?;
        *self = Embedding::quantized(vocab, table.dtype(), table.device(), |start, rows| {
            Ok(table.narrow(0, start, rows)?)
        })?;
        Ok(())
    }

    /// The 8-bit table of `vocab` rows made block by block: `block(start, rows)` gives rows
    /// `start..start + rows` in `dtype` (on any device), so that no more than a block is ever
    /// held dense; the table goes to `device`.
    fn quantized(
        vocab: usize,
        dtype: DType,
        device: &Device,
        block: impl Fn(usize, usize) -> Result<Tensor>,
    ) -> Result<Embedding> {
        let (mut rows, mut scales) = (Vec::new(), Vec::new());
        for start in (0..vocab).step_by(EMBEDDING_BLOCK_ROWS) {
            let block =
                block(start, EMBEDDING_BLOCK_ROWS.min(vocab - start))?.to_dtype(DType::F32)?;
            // An all-zero row keeps scale 1 (its bytes are all 128).
            let largest = block.abs()?.max_keepdim(1)?;
            let scale = (largest.eq(0f64)?.to_dtype(DType::F32)? * 127.0)?.add(&largest)?;
            // Rounded to f16 before the bytes are made, so that they are made with the scale
            // that will multiply them.
            let scale = (scale / 127.0)?
                .to_dtype(DType::F16)?
                .to_dtype(DType::F32)?;
            let q = ((block.broadcast_div(&scale)?.round()? + 128.0)?.clamp(1f32, 255f32)?)
                .to_dtype(DType::U8)?;
            rows.push(q.to_device(device)?);
            scales.push(scale.to_dtype(DType::F16)?.to_device(device)?);
        }
        Ok(Embedding::Int8 {
            rows: Tensor::cat(&rows, 0)?,
            scales: Tensor::cat(&scales, 0)?,
            dtype,
        })
    }

    fn bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Embedding::Dense(table) => bytes(table),
            Embedding::Int8 { rows, scales, .. } => bytes(rows) + bytes(scales),
        }
    }
}

/// A frozen base projection and, once an adapter is applied, its LoRA update.
struct Projection {
    base: BaseWeight,
    lora: Option<LoraWeights>,
}

impl Projection {
    /// The projection of `vb`'s weights; with `eight_bit` quantized at once, so that the
    /// dense weight lives only while this projection is read.
    fn load(
        vb: VarBuilder,
        (in_dim, out_dim): (usize, usize),
        bias: bool,
        eight_bit: bool,
    ) -> Result<Projection> {
        let mut linear = linear(vb, in_dim, out_dim, bias)?;
        if !eight_bit {
            let weight = neural::frozen_weight(linear.weight().clone())?;
            linear = Linear::new(weight, linear.bias().cloned());
        }
        let mut projection = Projection {
            base: BaseWeight::Dense(linear),
            lora: None,
        };
        if eight_bit {
            projection.quantize()?;
        }
        Ok(projection)
    }

    /// Replaces a dense base weight by its Q8_0 quantization.
    fn quantize(&mut self) -> Result<()> {
        if let BaseWeight::Dense(linear) = &self.base {
            let q = QTensor::quantize(&linear.weight().to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
            let bytes = q.storage_size_in_bytes();
            self.base = BaseWeight::Q8 {
                weight: QMatMul::from_qtensor(q)?,
                bias: linear.bias().cloned(),
                bytes,
            };
        }
        Ok(())
    }

    /// Bytes of the base weight and bias as stored.
    fn base_bytes(&self) -> usize {
        let tensor_bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match &self.base {
            BaseWeight::Dense(linear) => {
                tensor_bytes(linear.weight()) + linear.bias().map_or(0, tensor_bytes)
            }
            BaseWeight::Q8 { bias, bytes, .. } => bytes + bias.as_ref().map_or(0, tensor_bytes),
        }
    }

    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let grads = pass.grads;
        let y = match (&self.base, &self.lora) {
            // One node for the frozen product and the adapter's update, which keeps only its
            // inputs (composed ops would keep four output-sized tensors); in prediction, where
            // nothing is tracked, the same ops without a node.
            (BaseWeight::Dense(linear), Some(lora)) => {
                let (a, b) = (variable(&lora.a, grads), variable(&lora.b, grads));
                // PEFT's lora_dropout: on the adapter's input only, in training only. Drawn
                // whenever the pass has a generator, tracked or not, so that a checkpointed
                // layer's first (untracked) run and its recomputation draw the same masks.
                let mask = match pass.dropout {
                    Some(rng) if lora.dropout > 0.0 => {
                        Some(rng.mask(lora.dropout, x.shape(), x.device())?)
                    }
                    _ => None,
                };
                let (weight, bias) = (linear.weight(), linear.bias());
                return Ok(neural::lora_linear(
                    x,
                    weight,
                    bias,
                    (&a, &b, lora.scale),
                    mask,
                )?);
            }
            // In training only the input's gradient is wanted of a frozen weight.
            (BaseWeight::Dense(linear), None) if grads => {
                neural::frozen_linear(x, linear.weight(), linear.bias())?
            }
            (BaseWeight::Dense(linear), _) => linear.forward(x)?,
            // candle's quantized product passes no gradient to its input, so the adapters of
            // every layer below would train on wrong gradients.
            (BaseWeight::Q8 { .. }, _) if grads => {
                return Err(Error::Invalid(
                    "8-bit base weights are for prediction: train on f32, bf16 or f16 weights"
                        .into(),
                ))
            }
            (BaseWeight::Q8 { weight, bias, .. }, _) => {
                // candle's quantized product takes f32 activations.
                let y = weight
                    .forward(&x.to_dtype(DType::F32)?)?
                    .to_dtype(x.dtype())?;
                match bias {
                    Some(bias) => y.broadcast_add(bias)?,
                    None => y,
                }
            }
        };
        let Some(lora) = &self.lora else {
            return Ok(y);
        };
        // 8-bit base (prediction): the adapter in f32 (as PEFT keeps it).
        let (a, b) = (variable(&lora.a, false), variable(&lora.b, false));
        let down = x.to_dtype(DType::F32)?.broadcast_matmul(&a.t()?)?;
        let up = down.broadcast_matmul(&b.t()?)?;
        let update = (up * lora.scale)?.to_dtype(y.dtype())?;
        Ok((y + update)?)
    }
}

/// RoPE's inverse frequencies in f32, Llama-3's scaling applied where configured (as
/// transformers' `_compute_llama3_parameters`).
pub fn rope_inverse_frequencies(config: &DecoderConfig) -> Vec<f32> {
    let dim = config.head_dim;
    (0..dim / 2)
        .map(|i| {
            let base = 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / dim as f32);
            match &config.rope_scaling {
                None => base,
                Some(scaling) => llama3_scaled(base, scaling),
            }
        })
        .collect()
}

fn llama3_scaled(inv_freq: f32, s: &Llama3RopeScaling) -> f32 {
    let (factor, low, high) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
    );
    let old_context = s.original_max_position_embeddings as f32;
    let (low_freq_wavelen, high_freq_wavelen) = (old_context / low, old_context / high);
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else {
        let smooth = (old_context / wavelen - low) / (high - low);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

/// RoPE's cos and sin for positions 0..len, `[len, head_dim / 2]`: each frequency once, as
/// the fused rotation (`ops::rope`, rotate-half layout) takes them.
fn rope_tables(config: &DecoderConfig, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv_freq = rope_inverse_frequencies(config);
    let half = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((len, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

struct Attention {
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    fn load(vb: VarBuilder, c: &DecoderConfig, eight_bit: bool) -> Result<Attention> {
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let hidden = c.hidden_size;
        let load = |name: &str, dims, bias| Projection::load(vb.pp(name), dims, bias, eight_bit);
        Ok(Attention {
            q: load("q_proj", (hidden, q_dim), c.qkv_bias)?,
            k: load("k_proj", (hidden, kv_dim), c.qkv_bias)?,
            v: load("v_proj", (hidden, kv_dim), c.qkv_bias)?,
            o: load("o_proj", (q_dim, hidden), c.o_bias)?,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: c.attention_scale,
            softcap: c.attn_logit_softcapping,
        })
    }

    /// `mask`: `[batch, 1, len, len]`, 0 where a query may attend a key, a large negative
    /// number where not.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        pass: &Pass,
    ) -> Result<Tensor> {
        let grads = pass.grads;
        let (b, len, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = crate::ops::rope(&split(self.q.forward(x, pass)?, self.heads)?, cos, sin)?;
        let k = crate::ops::rope(&split(self.k.forward(x, pass)?, self.kv_heads)?, cos, sin)?;
        let v = split(self.v.forward(x, pass)?, self.kv_heads)?;
        // The shared attention op (`neural::attention`): softmax(s·q·kᵀ + mask)·v with
        // Gemma-2's soft-capping of the scores, the grouped key/value heads read for every
        // query head they serve.
        let out = neural::attention(&q, &k, &v, self.scale, mask, self.softcap, grads)?
            .transpose(1, 2)?
            .reshape((b, len, self.heads * self.head_dim))?;
        self.o.forward(&out, pass)
    }
}

struct Mlp {
    gate: Projection,
    up: Projection,
    down: Projection,
    family: Family,
}

impl Mlp {
    fn load(vb: VarBuilder, c: &DecoderConfig, eight_bit: bool) -> Result<Mlp> {
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let load = |name: &str, dims| Projection::load(vb.pp(name), dims, false, eight_bit);
        Ok(Mlp {
            gate: load("gate_proj", (hidden, inter))?,
            up: load("up_proj", (hidden, inter))?,
            down: load("down_proj", (inter, hidden))?,
            family: c.family,
        })
    }

    fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let activation = match self.family {
            Family::Gemma2 => Activation::GeluTanh,
            Family::Qwen2 | Family::Llama => Activation::Silu,
        };
        let gated = gated_product(
            &self.gate.forward(x, pass)?,
            &self.up.forward(x, pass)?,
            activation,
        )?;
        self.down.forward(&gated, pass)
    }
}

struct Layer {
    attention: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attention_norm: RmsNorm,
    /// Gemma-2 only: the norm before the MLP and the one on its output (Llama and Qwen2 call
    /// the norm before the MLP `post_attention_layernorm`).
    gemma_norms: Option<(RmsNorm, RmsNorm)>,
    sliding: bool,
}

impl Layer {
    fn load(vb: VarBuilder, c: &DecoderConfig, index: usize, eight_bit: bool) -> Result<Layer> {
        let gemma_norms = match c.family {
            Family::Gemma2 => Some((
                RmsNorm::load(vb.pp("pre_feedforward_layernorm"), c)?,
                RmsNorm::load(vb.pp("post_feedforward_layernorm"), c)?,
            )),
            _ => None,
        };
        Ok(Layer {
            attention: Attention::load(vb.pp("self_attn"), c, eight_bit)?,
            mlp: Mlp::load(vb.pp("mlp"), c, eight_bit)?,
            input_norm: RmsNorm::load(vb.pp("input_layernorm"), c)?,
            post_attention_norm: RmsNorm::load(vb.pp("post_attention_layernorm"), c)?,
            gemma_norms,
            sliding: c.sliding_layers[index],
        })
    }

    /// The projections in the order of `adapter::TARGETABLE`.
    fn projections(&self) -> [&Projection; 7] {
        let (a, m) = (&self.attention, &self.mlp);
        [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
    }

    /// The projection named `name`, one of `adapter::TARGETABLE`.
    fn projection_mut(&mut self, name: &str) -> &mut Projection {
        let index = TARGETABLE
            .iter()
            .position(|(n, _)| *n == name)
            .expect("adapter modules are checked against TARGETABLE");
        let (a, m) = (&mut self.attention, &mut self.mlp);
        [
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
            &mut m.gate,
            &mut m.up,
            &mut m.down,
        ]
        .into_iter()
        .nth(index)
        .expect("seven projections")
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masks: &Masks,
        pass: &Pass,
    ) -> Result<Tensor> {
        let mask = match (&masks.sliding, self.sliding) {
            (Some(sliding), true) => sliding,
            _ => &masks.full,
        };
        let attended =
            self.attention
                .forward(&self.input_norm.forward(x)?, cos, sin, mask, pass)?;
        match &self.gemma_norms {
            // Gemma-2 normalises each sublayer's output before the residual add.
            Some((pre_feedforward, post_feedforward)) => {
                let x = (x + self.post_attention_norm.forward(&attended)?)?;
                let fed = self.mlp.forward(&pre_feedforward.forward(&x)?, pass)?;
                Ok((&x + post_feedforward.forward(&fed)?)?)
            }
            None => {
                let x = (x + attended)?;
                let fed = self
                    .mlp
                    .forward(&self.post_attention_norm.forward(&x)?, pass)?;
                Ok((&x + fed)?)
            }
        }
    }
}

/// The additive attention masks of a padded batch, `[batch, 1, len, len]`: causal, padding
/// keys hidden; `sliding` also hides keys `window` or more tokens back, made only where a
/// layer slides and the batch is longer than the window (elsewhere it equals `full`).
#[derive(Clone)]
struct Masks {
    full: Tensor,
    sliding: Option<Tensor>,
}

impl Masks {
    fn new(attention_mask: &Tensor, window: Option<usize>) -> Result<Masks> {
        let (b, len) = attention_mask.dims2()?;
        let device = attention_mask.device();
        let position = Tensor::arange(0u32, len as u32, device)?.to_dtype(DType::F32)?;
        let (query, key) = (position.reshape((len, 1))?, position.reshape((1, len))?);
        let causal = key.broadcast_le(&query)?.to_dtype(DType::F32)?;
        let keys = attention_mask
            .to_dtype(DType::F32)?
            .reshape((b, 1, 1, len))?;
        // Allowed (1) → 0, hidden (0) → the most negative f32, as transformers adds
        // finfo.min: finite, so a row with no key left (a left-padding query) stays finite.
        let additive = |allowed: Tensor| -> Result<Tensor> {
            Ok(((allowed.broadcast_mul(&keys)? - 1.0)? * f64::from(f32::MAX))?)
        };
        let sliding = match window {
            Some(window) if window < len => {
                let in_window = key
                    .broadcast_gt(&(query - window as f64)?)?
                    .to_dtype(DType::F32)?;
                Some(additive((&causal * in_window)?.reshape((1, 1, len, len))?)?)
            }
            _ => None,
        };
        Ok(Masks {
            sliding,
            full: additive(causal.reshape((1, 1, len, len))?)?,
        })
    }
}

/// One decoder layer's call in a forward pass, with what it needs besides the hidden states
/// and the seed of its dropout masks, so that gradient checkpointing can make it again.
struct LayerCall {
    layer: Arc<Layer>,
    cos: Tensor,
    sin: Tensor,
    masks: Masks,
    /// Drawn once per layer and pass; None without dropout.
    seed: Option<u64>,
}

impl LayerCall {
    fn forward(&self, x: &Tensor, grads: bool) -> Result<Tensor> {
        let rng = self
            .seed
            .map(|s| DropoutRng::replay(s, x.device()))
            .transpose()?;
        let pass = Pass {
            grads,
            dropout: rng.as_ref(),
            checkpoint: false,
        };
        self.layer
            .forward(x, &self.cos, &self.sin, &self.masks, &pass)
    }
}

impl Recompute for LayerCall {
    fn run(&self, x: &Tensor, _: Option<&Tensor>, grads: bool) -> candle_core::Result<Tensor> {
        self.forward(x, grads).map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        })
    }

    /// The adapter's A and B of each projection.
    fn parameters(&self) -> Vec<Tensor> {
        self.layer
            .projections()
            .into_iter()
            .flat_map(|p| &p.lora)
            .flat_map(|lora| [lora.a.as_tensor().clone(), lora.b.as_tensor().clone()])
            .collect()
    }
}

/// Weights drawn at random on request, whatever their name: the backend of
/// [`DecoderClassifier::random`].
struct RandomWeights(std::sync::Mutex<rand::rngs::StdRng>);

/// The seed of a head drawn for a folder that has none.
const HEAD_SEED: u64 = 0;

impl RandomWeights {
    fn new(seed: u64) -> RandomWeights {
        RandomWeights(std::sync::Mutex::new(
            <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
        ))
    }

    /// f32 values, normal with deviation 0.02, as Hugging Face initialises weights.
    fn draw(&self, shape: candle_core::Shape, device: &Device) -> candle_core::Result<Tensor> {
        use rand_distr::Distribution;
        let normal = rand_distr::Normal::new(0f32, 0.02).expect("a positive deviation");
        let mut rng = self.0.lock().expect("the weights' generator lock");
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| normal.sample(&mut *rng))
            .collect();
        Tensor::from_vec(values, shape, device)
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        _name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.draw(shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _device: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: {name} has no shape to draw")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A layer to change (an adapter added or removed, weights quantized): only between forward
/// passes, when no layer call holds it.
fn unshared(layer: &mut Arc<Layer>) -> Result<&mut Layer> {
    Arc::get_mut(layer)
        .ok_or_else(|| Error::Invalid("a layer cannot change while a forward pass holds it".into()))
}

/// The classes of the head: A wins, B wins, tie.
const CLASSES: usize = 3;

/// Refuses a model whose projections Q8_0 cannot hold (inputs in blocks of 32).
fn check_8_bit(c: &DecoderConfig) -> Result<()> {
    let inputs = [c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size];
    match inputs.iter().find(|n| !n.is_multiple_of(32)) {
        Some(bad) => Err(Error::Invalid(format!(
            "8-bit weights need projection inputs that are multiples of 32; this model has {bad}"
        ))),
        None => Ok(()),
    }
}

/// The embedding table of the weight files in 8 bits, read a block of rows at a time: each
/// block converted to `dtype` (as a dense load would) and quantized, so that no more than a
/// block is ever dense.
fn embedding_8_bit(
    reader: &SafetensorsReader,
    config: &DecoderConfig,
    dtype: DType,
    device: &Device,
) -> Result<Embedding> {
    const NAME: &str = "model.embed_tokens.weight";
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    let shape = reader.shape(NAME)?;
    if shape != [vocab, hidden] {
        return Err(Error::Invalid(format!(
            "{NAME} has shape {shape:?}; config.json's vocab_size and hidden_size make \
             [{vocab}, {hidden}]"
        )));
    }
    Embedding::quantized(vocab, dtype, device, |start, rows| {
        Ok(reader.rows(NAME, start, rows)?.to_dtype(dtype)?)
    })
}

/// A decoder LLM with its classification head: the frozen base in the precision it was loaded
/// in (f32, bf16 or f16), norms, softmax, the adapter and the head in f32, as PEFT and
/// autocast keep them.
pub struct DecoderClassifier {
    config: DecoderConfig,
    embed: Embedding,
    /// Shared with the layer calls of a checkpointed forward pass while it runs.
    layers: Vec<Arc<Layer>>,
    norm: RmsNorm,
    /// The classification head, `[classes, hidden]`, trained in full.
    score: Var,
    /// The head as the folder had it (or as drawn where it had none).
    initial_score: Tensor,
    /// Whether the folder had a `score` head (a `*ForSequenceClassification` save).
    head_in_folder: bool,
    lora: Option<LoraSpec>,
    dir: PathBuf,
    device: Device,
    /// The adapter's gradients found by checkpointed layers (see `neural::checkpointed`).
    checkpoint_grads: ParamGrads,
}

impl DecoderClassifier {
    /// Loads a Hugging Face folder (`config.json`, `model.safetensors` or shards) saved by
    /// `*ForSequenceClassification`, whose `score` head is kept; the base weights in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<DecoderClassifier> {
        DecoderClassifier::load_folder(dir, device, dtype, false)
    }

    /// Loads a folder as [`DecoderClassifier::load`] does, with the base weights in 8 bits
    /// (see [`DecoderClassifier::quantize_base`]) quantized while they are read: each layer's
    /// projections as the layer is read, the embedding table a block of rows at a time from
    /// the memory-mapped files, so that the dense base is never held (on the device or the
    /// host). The values are those of loading in `dtype` and quantizing afterwards.
    pub fn load_8_bit(dir: &Path, device: &Device, dtype: DType) -> Result<DecoderClassifier> {
        DecoderClassifier::load_folder(dir, device, dtype, true)
    }

    fn load_folder(
        dir: &Path,
        device: &Device,
        dtype: DType,
        eight_bit: bool,
    ) -> Result<DecoderClassifier> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                path: dir.to_owned(),
                what: "config.json".into(),
            });
        }
        let config = DecoderConfig::from_file(&config_path)?;
        let files = weight_files(dir)?;
        // A tensor missing or of another shape than config.json implies: name the weights.
        let weights = match files.as_slice() {
            [one] => one.clone(),
            _ => dir.join("model.safetensors.index.json"),
        };
        let in_weights = |error: Error| match error {
            Error::Candle(e) => Error::BadModelFile {
                path: weights.clone(),
                message: format!("{e} (config.json gives the shapes)"),
            },
            other => other,
        };
        if !eight_bit {
            // SAFETY: the files are memory-mapped read-only; candle copies each tensor out of
            // the mapping when it is loaded, and the member does not write model files while
            // it runs.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
            return DecoderClassifier::build(config, vb, dir, None).map_err(in_weights);
        }
        check_8_bit(&config)?;
        // Read, not mapped: a mapping keeps the dense bytes it touched resident.
        let reader = SafetensorsReader::open(&files)?;
        let embed = embedding_8_bit(&reader, &config, dtype, device).map_err(in_weights)?;
        let vb = VarBuilder::from_backend(Box::new(reader), dtype, device.clone());
        DecoderClassifier::build(config, vb, dir, Some(embed)).map_err(in_weights)
    }

    /// A model of `config`'s shape with random weights (normal, std 0.02, as Hugging Face
    /// initialises them), for benchmarks: nothing is read from disk.
    pub fn random(
        config: DecoderConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<DecoderClassifier> {
        let backend = RandomWeights::new(seed);
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        DecoderClassifier::build(config, vb, Path::new("random"), None)
    }

    /// The model of `vb`'s weights; with `embed_8_bit` (the table read in 8 bits) the base is
    /// 8-bit: each projection is quantized as soon as it is read.
    fn build(
        config: DecoderConfig,
        vb: VarBuilder,
        dir: &Path,
        embed_8_bit: Option<Embedding>,
    ) -> Result<DecoderClassifier> {
        let model = vb.pp("model");
        let eight_bit = embed_8_bit.is_some();
        let layers = (0..config.num_layers)
            .map(|i| Layer::load(model.pp("layers").pp(i), &config, i, eight_bit).map(Arc::new))
            .collect::<Result<_>>()?;
        // A causal LM's folder (the usual download) has no head: it starts as transformers
        // starts it, normal with deviation 0.02, from a fixed seed.
        let head_in_folder = vb.contains_tensor("score.weight");
        if let Some(classes) = config
            .num_labels
            .filter(|&n| head_in_folder && n != CLASSES)
        {
            return Err(Error::BadModelFile {
                path: dir.join("config.json"),
                message: format!(
                    "id2label names {classes} classes for its score head; the member predicts \
                     {CLASSES} (A wins, B wins, tie): a head trained for another task"
                ),
            });
        }
        let head_shape = (CLASSES, config.hidden_size);
        let score = match head_in_folder {
            true => vb.get(head_shape, "score.weight")?,
            false => RandomWeights::new(HEAD_SEED).draw(head_shape.into(), vb.device())?,
        }
        .to_dtype(DType::F32)?;
        let embed = match embed_8_bit {
            Some(embed) => embed,
            None => Embedding::Dense(model.get(
                (config.vocab_size, config.hidden_size),
                "embed_tokens.weight",
            )?),
        };
        Ok(DecoderClassifier {
            embed,
            norm: RmsNorm::load(model.pp("norm"), &config)?,
            score: Var::from_tensor(&score)?,
            initial_score: score,
            head_in_folder,
            layers,
            config,
            lora: None,
            dir: dir.to_owned(),
            device: vb.device().clone(),
            checkpoint_grads: ParamGrads::default(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the folder had a trained `score` head; without one (a causal LM) the head was
    /// drawn at random and must be trained.
    pub fn head_in_folder(&self) -> bool {
        self.head_in_folder
    }

    /// The variables training updates, by PEFT's key names: every LoRA A and B of the applied
    /// adapter, and the classification head. The base weights are plain tensors, never
    /// variables, so no gradient is computed for them.
    pub fn trainable(&self) -> Vec<(String, &Var)> {
        let mut vars = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            for ((name, _), projection) in TARGETABLE.iter().zip(layer.projections()) {
                if let Some(lora) = &projection.lora {
                    vars.push((lora_key(index, name, "A"), &lora.a));
                    vars.push((lora_key(index, name, "B"), &lora.b));
                }
            }
        }
        vars.push((SCORE_KEY.to_owned(), &self.score));
        vars
    }

    /// Quantizes the base weights to 8 bits for prediction: every projection's (Q8_0) and the
    /// embedding table's (a byte per weight and a scale per row), about 0.53× the bytes of
    /// f16. Needs each projection's input size to be a multiple of 32.
    pub fn quantize_base(&mut self) -> Result<()> {
        check_8_bit(&self.config)?;
        for layer in &mut self.layers {
            let layer = unshared(layer)?;
            for (name, _) in TARGETABLE {
                layer.projection_mut(name).quantize()?;
            }
        }
        self.embed.quantize()
    }

    /// Bytes of the projections' base weights as stored (dense f32, or 8-bit).
    pub fn projection_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|layer| layer.projections())
            .map(Projection::base_bytes)
            .sum()
    }

    /// Bytes of the base model as stored: embedding table and projections (norms and head
    /// are a rounding error beside them).
    pub fn weight_bytes(&self) -> usize {
        self.embed.bytes() + self.projection_bytes()
    }

    /// `(in, out)` of each projection an adapter may target.
    fn projection_shapes(&self) -> ProjectionShapes {
        let c = &self.config;
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        [
            ("q_proj", (hidden, q_dim)),
            ("k_proj", (hidden, kv_dim)),
            ("v_proj", (hidden, kv_dim)),
            ("o_proj", (q_dim, hidden)),
            ("gate_proj", (hidden, inter)),
            ("up_proj", (hidden, inter)),
            ("down_proj", (inter, hidden)),
        ]
        .into_iter()
        .collect()
    }

    /// Applies a PEFT LoRA adapter saved for this model (`adapter_config.json`,
    /// `adapter_model.safetensors`): its A and B in the targeted projections of every layer,
    /// and its classification head in place of the folder's where it carries one.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<&LoraSpec> {
        if self.lora.is_some() {
            return Err(Error::Invalid(format!(
                "{}: the model has an adapter already",
                dir.display()
            )));
        }
        let shapes = self.projection_shapes();
        let head = self.score.as_tensor().dims2()?;
        let adapter = Adapter::load(dir, self.config.num_layers, &shapes, head, &self.device)?;
        // Without a head of its own the adapter would predict through the one drawn at random
        // for a folder that has none.
        if adapter.score.is_none() && !self.head_in_folder {
            return Err(Error::BadModelFile {
                path: dir.to_owned(),
                message: format!(
                    "the adapter has no score head, and the base {} has none either; save the \
                     head with the adapter (PEFT's modules_to_save = [\"score\"])",
                    self.dir.display()
                ),
            });
        }
        for ((layer, name), weights) in adapter.weights {
            unshared(&mut self.layers[layer])?
                .projection_mut(&name)
                .lora = Some(weights);
        }
        if let Some(score) = adapter.score {
            self.score = Var::from_tensor(&score)?;
        }
        Ok(self.lora.insert(adapter.spec))
    }

    /// Adds a fresh LoRA adapter to train, as PEFT initialises one: A uniform in
    /// ±1/√in (PyTorch's kaiming_uniform with a = √5), B zero, so that the untrained adapter
    /// changes nothing.
    pub fn add_lora(&mut self, spec: LoraSpec, seed: u64) -> Result<()> {
        use rand::{Rng, SeedableRng};
        if self.lora.is_some() {
            return Err(Error::Invalid("the model has an adapter already".into()));
        }
        if spec.r == 0
            || spec
                .target_modules
                .iter()
                .any(|m| !TARGETABLE.iter().any(|(t, _)| t == m))
        {
            return Err(Error::Invalid(format!(
                "LoRA: r must be positive and the targets among q_proj, k_proj, v_proj, \
                 o_proj, gate_proj, up_proj, down_proj (got r = {}, {:?})",
                spec.r, spec.target_modules
            )));
        }
        let shapes = self.projection_shapes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for layer in &mut self.layers {
            let layer = unshared(layer)?;
            for module in &spec.target_modules {
                let (in_dim, out_dim) = shapes[module.as_str()];
                let bound = 1.0 / (in_dim as f32).sqrt();
                let a: Vec<f32> = (0..spec.r * in_dim)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (spec.r, in_dim), &self.device)?;
                let b = Tensor::zeros((out_dim, spec.r), DType::F32, &self.device)?;
                layer.projection_mut(module).lora = Some(LoraWeights {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                    scale: spec.scale(),
                    dropout: spec.dropout,
                });
            }
        }
        self.lora = Some(spec);
        Ok(())
    }

    /// Takes the adapter out and puts the folder's head back: the base model as loaded, ready
    /// for the next fold's adapter without being read again.
    pub fn remove_adapter(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            let layer = unshared(layer)?;
            for (name, _) in TARGETABLE {
                layer.projection_mut(name).lora = None;
            }
        }
        self.score = Var::from_tensor(&self.initial_score)?;
        self.lora = None;
        Ok(())
    }

    /// Writes the adapter in PEFT's format to `dir` (`adapter_config.json`,
    /// `adapter_model.safetensors` with PEFT's key names, the head included), which
    /// `PeftModel.from_pretrained` and [`DecoderClassifier::apply_adapter`] load.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let spec = self
            .lora
            .as_ref()
            .ok_or_else(|| Error::Invalid("no adapter to save".into()))?;
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let tensors: std::collections::HashMap<String, Tensor> = self
            .trainable()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        let weights = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &weights).map_err(|e| match e {
            candle_core::Error::Io(cause) => Error::Io {
                path: weights.clone(),
                cause,
            },
            other => Error::Candle(other),
        })?;
        let config = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&spec.peft_config(&self.dir))
            .expect("a JSON value serialises");
        std::fs::write(&config, text).map_err(Error::io(&config))
    }

    /// The logits `[batch, classes]` of padded rows, for prediction (no gradients):
    /// `input_ids` and `attention_mask` are `[batch, len]` (1 for a real token, 0 for padding,
    /// on either side). Each row's logits come from its last real token.
    pub fn logits(&self, input_ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<Tensor> {
        self.forward(input_ids, attention_mask, &Pass::PREDICT)
    }

    /// The same logits, recorded for a backward pass to the adapter and the head
    /// ([`DecoderClassifier::trainable`]): the adapters' dropout masks drawn from `dropout`
    /// where given; with `checkpoint`, each layer keeps only its input and runs again in the
    /// backward pass, whose adapter gradients [`DecoderClassifier::take_checkpoint_grads`]
    /// then holds.
    pub fn training_logits(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        dropout: Option<&DropoutRng>,
        checkpoint: bool,
    ) -> Result<Tensor> {
        let pass = Pass {
            grads: true,
            dropout,
            checkpoint,
        };
        self.forward(input_ids, attention_mask, &pass)
    }

    /// The adapter gradients that checkpointed layers found in the backward passes since the
    /// last call, by the variables' tensor ids.
    pub fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        std::mem::take(
            &mut *self
                .checkpoint_grads
                .lock()
                .expect("checkpoint grads lock poisoned"),
        )
    }

    fn forward(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        pass: &Pass,
    ) -> Result<Tensor> {
        let b = input_ids.len();
        let len = input_ids.first().map_or(0, Vec::len);
        if b == 0 || len == 0 || attention_mask.len() != b {
            return Err(Error::Invalid(format!(
                "logits of {b} rows of {len} tokens with {} mask rows",
                attention_mask.len()
            )));
        }
        let mut last = Vec::with_capacity(b);
        for (row, (ids, mask)) in input_ids.iter().zip(attention_mask).enumerate() {
            if ids.len() != len || mask.len() != len {
                return Err(Error::Invalid(format!("row {row}: not {len} tokens long")));
            }
            if let Some(id) = ids
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(Error::Invalid(format!(
                    "row {row}: token id {id} outside the model's vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            let real = mask.iter().rposition(|&m| m != 0).ok_or_else(|| {
                Error::Invalid(format!("row {row}: no token (an all-zero attention mask)"))
            })?;
            last.push(real);
        }
        let flat_ids: Vec<u32> = input_ids.concat();
        let ids = Tensor::from_vec(flat_ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(attention_mask.concat(), (b, len), &self.device)?;
        let mut x =
            self.embed
                .lookup(&ids.flatten_all()?)?
                .reshape((b, len, self.config.hidden_size))?;
        if self.config.family == Family::Gemma2 {
            x = (x * (self.config.hidden_size as f64).sqrt())?;
        }
        let (cos, sin) = rope_tables(&self.config, len, &self.device)?;
        let window = self
            .config
            .sliding_layers
            .contains(&true)
            .then_some(self.config.sliding_window);
        let masks = Masks::new(&mask, window)?;
        for layer in &self.layers {
            // Each layer draws its dropout masks from a generator of its own, so that a
            // checkpointed layer draws the same masks again in the backward pass.
            let call = LayerCall {
                layer: layer.clone(),
                cos: cos.clone(),
                sin: sin.clone(),
                masks: masks.clone(),
                seed: pass.dropout.map(DropoutRng::fork_seed),
            };
            x = match pass.checkpoint && pass.grads {
                true => checkpointed(call, &x, None, self.checkpoint_grads.clone())?,
                false => call.forward(&x, pass.grads)?,
            };
        }
        let rows = last
            .iter()
            .enumerate()
            .map(|(row, &position)| x.get(row)?.get(position))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // The final norm works token by token: only the pooled tokens need it.
        let pooled = self.norm.forward(&Tensor::stack(&rows, 0)?)?;
        Ok(pooled
            .to_dtype(DType::F32)?
            .matmul(&variable(&self.score, pass.grads).t()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each 8-bit row comes back within half a step of the original (the step is the row's
    /// largest |x| / 127), an all-zero row exactly, in the table's dtype; half the bytes of f16.
    #[test]
    fn the_8_bit_embedding_table_is_within_half_a_step() {
        let values: Vec<f32> = (0..5 * 64)
            .map(|i| {
                if i < 64 {
                    0.0
                } else {
                    ((i * 37 % 101) as f32 - 50.0) / 7.0
                }
            })
            .collect();
        let table = Tensor::from_vec(values, (5, 64), &Device::Cpu).unwrap();
        let half = table.to_dtype(DType::F16).unwrap();
        let mut embedding = Embedding::Dense(half.clone());
        embedding.quantize().unwrap();
        assert!(embedding.bytes() * 2 <= Embedding::Dense(half).bytes() + 5 * 4);
        let ids = Tensor::new(&[4u32, 0, 2, 4], &Device::Cpu).unwrap();
        let rows = embedding.lookup(&ids).unwrap();
        assert_eq!(rows.dtype(), DType::F16);
        let rows = rows.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let original = table.to_vec2::<f32>().unwrap();
        for (row, &id) in rows.iter().zip(&[4usize, 0, 2, 4]) {
            let step = original[id].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (x, y) in row.iter().zip(&original[id]) {
                assert!(
                    (x - y).abs() <= 0.5 * step + 1e-2 * step + 4e-3 * y.abs(),
                    "{x} {y}"
                );
            }
        }
        assert!(rows[1].iter().all(|&x| x == 0.0));
    }
}
