//! DeBERTa-v2/v3 in candle with Hugging Face's weight names (so that checkpoints load through a
//! `VarBuilder`), dropout that is active only in training, and a classification head for the
//! cross-encoder or the siamese layout.
//!
//! Follows `transformers/models/deberta_v2/modeling_deberta_v2.py`. Written here rather than
//! taken from candle-transformers because that model has no dropout and no way to stop
//! gradients below the layers being trained.
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Init, Linear, VarBuilder};

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::TensorId;
use serde::Deserialize;

use crate::ops::{self, Relative, RelativeIndex};
use neural::{checkpointed, dropout, DropoutRng, ParamGrads, Precision, Recompute, ScoreTerms};

type CandleResult<T> = candle_core::Result<T>;

/// The fields of a Hugging Face `config.json` that the forward pass depends on, with the
/// defaults that `DebertaV2Config` and the modelling code apply.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct ModelConfig {
    /// `deberta-v2` in Hugging Face's folders; checked only to name another family's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    #[serde(default, deserialize_with = "pos_att_type")]
    pub pos_att_type: Vec<String>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub norm_rel_ebd: Option<String>,
    pub embedding_size: Option<usize>,
    pub pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pub pooler_dropout: f64,
    #[serde(default = "default_act")]
    pub pooler_hidden_act: String,
    pub cls_dropout: Option<f64>,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub initializer_range: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> usize {
    512
}
fn default_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

fn pos_att_type<'de, De: serde::Deserializer<'de>>(d: De) -> Result<Vec<String>, De::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Kinds {
        Joined(String),
        List(Vec<String>),
        None(()),
    }
    Ok(match Kinds::deserialize(d)? {
        Kinds::Joined(s) => s.split('|').map(|k| k.trim().to_lowercase()).collect(),
        Kinds::List(v) => v.into_iter().map(|k| k.trim().to_lowercase()).collect(),
        Kinds::None(()) => Vec::new(),
    })
}

impl ModelConfig {
    /// What is wrong with the configuration, naming the field: values the forward pass cannot
    /// use (a LayerNorm eps ≤ 0 divides by zero on a constant row, a size of 0 makes empty
    /// tensors) and features this implementation does not run. Without it such a model loads
    /// and fails later as a NaN training loss or an index error.
    pub fn check(&self) -> Result<(), String> {
        // A decoder LLM's folder, given to this member: say whose it is rather than which of
        // its keys DeBERTa cannot read.
        if let Some(kind) = self
            .model_type
            .as_deref()
            .filter(|kind| !kind.starts_with("deberta"))
        {
            return Err(format!(
                "model_type {kind:?}: this member reads DeBERTa-v2/v3 folders; decoder LLMs \
                 (gemma2, qwen2, llama) are the LLM member's, to which `transformer` gives them"
            ));
        }
        let sizes = [
            ("vocab_size", Some(self.vocab_size)),
            ("hidden_size", Some(self.hidden_size)),
            ("num_hidden_layers", Some(self.num_hidden_layers)),
            ("num_attention_heads", Some(self.num_attention_heads)),
            ("intermediate_size", Some(self.intermediate_size)),
            (
                "max_position_embeddings",
                Some(self.max_position_embeddings),
            ),
            ("embedding_size", self.embedding_size),
            ("pooler_hidden_size", self.pooler_hidden_size),
        ];
        for (field, size) in sizes {
            if size == Some(0) {
                return Err(format!("{field} is 0; it must be at least 1"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps is {}; it must be a finite number above 0",
                self.layer_norm_eps
            ));
        }
        let probabilities = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("pooler_dropout", Some(self.pooler_dropout)),
            ("cls_dropout", self.cls_dropout),
        ];
        for (field, p) in probabilities {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!(
                    "{field} is {p}; a dropout probability lies in [0, 1)"
                ));
            }
        }
        if let Some(range) = self
            .initializer_range
            .filter(|r| !(r.is_finite() && *r >= 0.0))
        {
            return Err(format!(
                "initializer_range is {range}; it must be a finite number ≥ 0"
            ));
        }
        for (field, name) in [
            ("hidden_act", &self.hidden_act),
            ("pooler_hidden_act", &self.pooler_hidden_act),
        ] {
            if !ACTIVATIONS.contains(&name.as_str()) {
                return Err(format!(
                    "{field} {name:?} is not supported (one of {})",
                    ACTIVATIONS.join(", ")
                ));
            }
        }
        if self.conv_kernel_size > 0 {
            return Err(
                "conv_kernel_size > 0 (DeBERTa-v2 xlarge convolution) is not supported".into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(kind) = self
            .pos_att_type
            .iter()
            .find(|k| *k != "c2p" && *k != "p2c")
        {
            return Err(format!(
                "pos_att_type {kind:?} is not supported (only c2p and p2c)"
            ));
        }
        Ok(())
    }

    fn pooled_size(&self) -> usize {
        self.pooler_hidden_size.unwrap_or(self.hidden_size)
    }

    fn max_relative(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// Half the number of relative-position embeddings (`pos_ebd_size` in HF).
    fn attention_span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative()
        }
    }

    fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|k| k == "c2p")
    }

    fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|k| k == "p2c")
    }
}

/// How the three classes are read from the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One sequence `[CLS] prompt [SEP] A [SEP] B [SEP]`, head on its pooled vector.
    Cross,
    /// `prompt+A` and `prompt+B` through the same backbone, head on `[hA, hB, hA−hB, hA·hB]`.
    Siamese,
}

/// Whether a forward pass trains (dropout on, differentiable kernels) and which parts of the
/// graph gradients flow into.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub dropout: Option<&'a DropoutRng>,
    /// Index of the lowest encoder layer that receives gradients; `num_hidden_layers` trains
    /// the head only. Everything below it runs detached.
    pub first_trained_layer: usize,
    /// Whether the embeddings (word and relative) receive gradients.
    pub train_embeddings: bool,
    /// Gradient checkpointing: trained layers keep only their inputs and are run again in the
    /// backward pass.
    pub checkpoint: bool,
}

impl Pass<'_> {
    pub fn eval() -> Pass<'static> {
        Pass {
            dropout: None,
            first_trained_layer: usize::MAX,
            train_embeddings: false,
            checkpoint: false,
        }
    }

    fn grads_at(&self, layer: usize) -> bool {
        layer >= self.first_trained_layer
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> CandleResult<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    /// Normalizes in f32 whatever the activations' dtype (as autocast does) and returns that
    /// dtype; a graph node with its own backward pass when anything in it trains.
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        ops::layer_norm(&x.to_dtype(DType::F32)?, &self.weight, &self.bias, self.eps)?
            .to_dtype(x.dtype())
    }
}

/// A dense layer that keeps its weights in f32 and casts them to the input's dtype on use:
/// with bf16 activations that is mixed precision (f32 master weights, bf16 matmuls), as in
/// torch's autocast. Casting to the same dtype is free.
struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        let dtype = x.dtype();
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        Linear::new(self.weight.to_dtype(dtype)?, bias).forward(x)
    }
}

fn linear(input: usize, output: usize, vb: VarBuilder) -> CandleResult<Dense> {
    Ok(Dense {
        weight: vb.get_with_hints((output, input), "weight", Init::Const(0.0))?,
        bias: Some(vb.get_with_hints(output, "bias", Init::Const(0.0))?),
    })
}

/// The activations [`activation`] knows, checked at load.
const ACTIVATIONS: [&str; 6] = [
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "tanh",
];

fn activation(name: &str, x: &Tensor) -> CandleResult<Tensor> {
    match name {
        "gelu" => x.gelu_erf(),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu(),
        "relu" => x.relu(),
        "tanh" => x.tanh(),
        other => candle_core::bail!("activation {other:?} is not supported"),
    }
}

struct Embeddings {
    word: Embedding,
    position: Option<Embedding>,
    token_type: Option<Embedding>,
    projection: Option<Dense>,
    norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn load(config: &ModelConfig, vb: VarBuilder) -> CandleResult<Embeddings> {
        let width = config.embedding_size.unwrap_or(config.hidden_size);
        let table = |rows: usize, name: &str| -> CandleResult<Embedding> {
            let weights =
                vb.get_with_hints((rows, width), &format!("{name}.weight"), Init::Const(0.0))?;
            Ok(Embedding::new(weights, width))
        };
        Ok(Embeddings {
            word: table(config.vocab_size, "word_embeddings")?,
            position: if config.position_biased_input {
                Some(table(
                    config.max_position_embeddings,
                    "position_embeddings",
                )?)
            } else {
                None
            },
            token_type: if config.type_vocab_size > 0 {
                Some(table(config.type_vocab_size, "token_type_embeddings")?)
            } else {
                None
            },
            projection: if width != config.hidden_size {
                let weight = vb.get_with_hints(
                    (config.hidden_size, width),
                    "embed_proj.weight",
                    Init::Const(0.0),
                )?;
                Some(Dense { weight, bias: None })
            } else {
                None
            },
            norm: LayerNorm::load(
                config.hidden_size,
                config.layer_norm_eps,
                vb.pp("LayerNorm"),
            )?,
            dropout: config.hidden_dropout_prob,
        })
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor, pass: &Pass) -> CandleResult<Tensor> {
        let (_, len) = ids.dims2()?;
        let mut x = self.word.forward(ids)?;
        if let Some(position) = &self.position {
            let positions = Tensor::arange(0u32, len as u32, ids.device())?;
            x = x.broadcast_add(&position.forward(&positions)?)?;
        }
        if let Some(token_type) = &self.token_type {
            x = x.broadcast_add(&token_type.forward(&ids.zeros_like()?)?)?;
        }
        if let Some(projection) = &self.projection {
            x = projection.forward(&x)?;
        }
        let x = self.norm.forward(&x)?;
        let x = x.broadcast_mul(&mask.unsqueeze(2)?)?;
        dropout(&x, self.dropout, pass.dropout)
    }
}

/// The `[L, L]` index tables of the longest length seen so far, on the model's device. An
/// entry does not depend on L, so a shorter length's indices are the top-left corner: built
/// once rather than on the host for every batch.
#[derive(Default)]
struct RelativeIndexCache(std::sync::Mutex<Option<(Tensor, Tensor)>>);

impl RelativeIndexCache {
    fn get(
        &self,
        len: usize,
        config: &ModelConfig,
        device: &Device,
    ) -> CandleResult<RelativeIndex> {
        let mut tables = self.0.lock().expect("relative index lock poisoned");
        let covered = tables
            .as_ref()
            .is_some_and(|(c2p, _)| c2p.dim(0).is_ok_and(|d| d >= len));
        if !covered {
            let full = relative_index(len, config, device)?;
            *tables = Some((full.c2p.reshape((len, len))?, full.p2c.reshape((len, len))?));
        }
        let (c2p, p2c) = tables.as_ref().expect("filled above");
        let corner = |t: &Tensor| t.narrow(0, 0, len)?.narrow(1, 0, len)?.flatten_all();
        Ok(RelativeIndex {
            c2p: corner(c2p)?,
            p2c: corner(p2c)?,
        })
    }
}

/// HF's `make_log_bucket_position`, in f32 as torch computes it.
fn log_bucket(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let ratio = (abs as f32 / mid as f32).ln() / ((max_position - 1) as f32 / mid as f32).ln();
    let log_pos = (ratio * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * relative.signum()
}

/// Relative positions of a sequence length as flat gather indices (they depend on the length
/// only), where `δ(i,j) = clamp(bucket(i−j) + S, 0, 2S−1)` and S is the attention span.
fn relative_index(
    len: usize,
    config: &ModelConfig,
    device: &Device,
) -> CandleResult<RelativeIndex> {
    let span = config.attention_span();
    let (buckets, max_position) = (config.position_buckets, config.max_relative());
    let width = (2 * span) as usize;
    let mut c2p = Vec::with_capacity(len * len);
    let mut p2c = Vec::with_capacity(len * len);
    for i in 0..len {
        for j in 0..len {
            let relative = i as i64 - j as i64;
            let relative = if buckets > 0 && max_position > 0 {
                log_bucket(relative, buckets, max_position)
            } else {
                relative
            };
            let delta = (relative + span).clamp(0, 2 * span - 1) as usize;
            c2p.push((i * width + delta) as u32);
            p2c.push((j * width + delta) as u32);
        }
    }
    Ok(RelativeIndex {
        c2p: Tensor::from_vec(c2p, len * len, device)?,
        p2c: Tensor::from_vec(p2c, len * len, device)?,
    })
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    pos_query: Option<Dense>,
    pos_key: Option<Dense>,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    heads: usize,
    config: ModelConfig,
}

impl Layer {
    fn load(config: &ModelConfig, vb: VarBuilder) -> CandleResult<Layer> {
        let hidden = config.hidden_size;
        let attention = vb.pp("attention.self");
        let separate = config.relative_attention && !config.share_att_key;
        Ok(Layer {
            query: linear(hidden, hidden, attention.pp("query_proj"))?,
            key: linear(hidden, hidden, attention.pp("key_proj"))?,
            value: linear(hidden, hidden, attention.pp("value_proj"))?,
            pos_query: if separate && config.p2c() {
                Some(linear(hidden, hidden, attention.pp("pos_query_proj"))?)
            } else {
                None
            },
            pos_key: if separate && config.c2p() {
                Some(linear(hidden, hidden, attention.pp("pos_key_proj"))?)
            } else {
                None
            },
            attention_out: linear(hidden, hidden, vb.pp("attention.output.dense"))?,
            attention_norm: LayerNorm::load(
                hidden,
                config.layer_norm_eps,
                vb.pp("attention.output.LayerNorm"),
            )?,
            intermediate: linear(
                hidden,
                config.intermediate_size,
                vb.pp("intermediate.dense"),
            )?,
            output: linear(config.intermediate_size, hidden, vb.pp("output.dense"))?,
            output_norm: LayerNorm::load(hidden, config.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: config.num_attention_heads,
            config: config.clone(),
        })
    }

    /// `[B, L, H·d]` → `[B, H, L, d]`.
    fn split_heads(&self, x: &Tensor) -> CandleResult<Tensor> {
        let (batch, len, width) = x.dims3()?;
        x.reshape((batch, len, self.heads, width / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        relative: Option<(&Tensor, &RelativeIndex)>,
        grads: bool,
        rng: Option<&DropoutRng>,
    ) -> CandleResult<Tensor> {
        let config = &self.config;
        let (batch, len, hidden) = x.dims3()?;
        let head_size = hidden / self.heads;
        let factor = 1 + usize::from(config.c2p()) + usize::from(config.p2c());
        let scale = ((head_size * factor) as f64).sqrt();
        // Every score term is divided by the same scale, so it is applied to the (small) query
        // and position-query projections rather than to three [B, H, L, L] score tensors.
        let query = (self.split_heads(&self.query.forward(x)?)? / scale)?;
        let key = self.split_heads(&self.key.forward(x)?)?;
        let value = self.split_heads(&self.value.forward(x)?)?;
        let relative = match relative {
            Some((embeddings, index)) => {
                let embeddings =
                    dropout(embeddings, config.hidden_dropout_prob, rng)?.unsqueeze(0)?;
                let project = |own: &Option<Dense>, shared: &Dense| -> CandleResult<Tensor> {
                    self.split_heads(&own.as_ref().unwrap_or(shared).forward(&embeddings)?)
                };
                Some(Box::new(Relative {
                    pos_key: config
                        .c2p()
                        .then(|| project(&self.pos_key, &self.key))
                        .transpose()?,
                    pos_query: config
                        .p2c()
                        .then(|| project(&self.pos_query, &self.query)? / scale)
                        .transpose()?,
                    index: index.clone(),
                }) as Box<dyn ScoreTerms>)
            }
            None => None,
        };
        let probs = neural::attention_probs(
            &query,
            &key,
            relative,
            mask_bias,
            rng.map(|rng| (config.attention_probs_dropout_prob, rng)),
            None,
            grads,
        )?;
        let context = probs
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, len, hidden))?;
        let attended = dropout(
            &self.attention_out.forward(&context)?,
            config.hidden_dropout_prob,
            rng,
        )?;
        let attended = self.attention_norm.forward(&(attended + x)?)?;
        let inner = activation(&config.hidden_act, &self.intermediate.forward(&attended)?)?;
        let out = dropout(
            &self.output.forward(&inner)?,
            config.hidden_dropout_prob,
            rng,
        )?;
        self.output_norm.forward(&(out + attended)?)
    }

    /// Every weight of the layer, for the gradients a checkpointed backward pass finds.
    fn parameters(&self) -> Vec<&Tensor> {
        let dense = [
            Some(&self.query),
            Some(&self.key),
            Some(&self.value),
            self.pos_query.as_ref(),
            self.pos_key.as_ref(),
            Some(&self.attention_out),
            Some(&self.intermediate),
            Some(&self.output),
        ];
        let mut parameters: Vec<&Tensor> = dense
            .into_iter()
            .flatten()
            .flat_map(|d| std::iter::once(&d.weight).chain(d.bias.as_ref()))
            .collect();
        for norm in [&self.attention_norm, &self.output_norm] {
            parameters.extend([&norm.weight, &norm.bias]);
        }
        parameters
    }
}

/// One encoder layer's call in a forward pass: the layer, its inputs besides the hidden
/// states, and the seed of its dropout masks, so that the call can be made again.
struct LayerCall {
    layer: Arc<Layer>,
    mask_bias: Tensor,
    index: Option<RelativeIndex>,
    /// Drawn once per layer and pass; None without dropout.
    seed: Option<u64>,
}

impl Recompute for LayerCall {
    /// `extra`: the relative embeddings.
    fn run(&self, x: &Tensor, relative: Option<&Tensor>, grads: bool) -> CandleResult<Tensor> {
        let rng = self
            .seed
            .map(|s| DropoutRng::replay(s, x.device()))
            .transpose()?;
        let relative = relative.zip(self.index.as_ref());
        self.layer
            .forward(x, &self.mask_bias, relative, grads, rng.as_ref())
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.layer.parameters().into_iter().cloned().collect()
    }
}

/// The DeBERTa encoder (`deberta.*` weights).
pub struct Backbone {
    embeddings: Embeddings,
    layers: Vec<Arc<Layer>>,
    relative: Option<Embedding>,
    relative_norm: Option<LayerNorm>,
    config: ModelConfig,
    /// The activations' dtype; weights stay f32 and are cast on use.
    dtype: DType,
    relative_index: RelativeIndexCache,
    /// Weight gradients of checkpointed layers, collected by [`DebertaClassifier::take_checkpoint_grads`].
    checkpoint_grads: ParamGrads,
}

impl Backbone {
    fn load(config: &ModelConfig, dtype: DType, vb: VarBuilder) -> CandleResult<Backbone> {
        let encoder = vb.pp("encoder");
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(config, encoder.pp(format!("layer.{i}"))).map(Arc::new))
            .collect::<CandleResult<Vec<_>>>()?;
        let relative = if config.relative_attention {
            let rows = 2 * config.attention_span() as usize;
            let weights = encoder.get_with_hints(
                (rows, config.hidden_size),
                "rel_embeddings.weight",
                Init::Const(0.0),
            )?;
            Some(Embedding::new(weights, config.hidden_size))
        } else {
            None
        };
        let norm_relative = config
            .norm_rel_ebd
            .as_deref()
            .is_some_and(|n| n.split('|').any(|k| k.trim() == "layer_norm"));
        Ok(Backbone {
            embeddings: Embeddings::load(config, vb.pp("embeddings"))?,
            layers,
            relative,
            relative_norm: if norm_relative {
                Some(LayerNorm::load(
                    config.hidden_size,
                    config.layer_norm_eps,
                    encoder.pp("LayerNorm"),
                )?)
            } else {
                None
            },
            config: config.clone(),
            dtype,
            relative_index: RelativeIndexCache::default(),
            checkpoint_grads: ParamGrads::default(),
        })
    }

    /// Last hidden states `[B, L, hidden]` of token ids `[B, L]` (u32) and mask `[B, L]` (f32).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, pass: &Pass) -> CandleResult<Tensor> {
        let (_, len) = ids.dims2()?;
        let mut x = self
            .embeddings
            .forward(ids, mask, pass)?
            .to_dtype(self.dtype)?;
        if !pass.train_embeddings {
            x = x.detach();
        }
        // Padded keys get a large negative score, so they receive exactly zero attention.
        let mask_bias = ((mask - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?;
        let relative = match &self.relative {
            Some(table) => {
                let mut embeddings = table.embeddings().clone();
                if let Some(norm) = &self.relative_norm {
                    embeddings = norm.forward(&embeddings)?;
                }
                embeddings = embeddings.to_dtype(self.dtype)?;
                if !pass.train_embeddings {
                    embeddings = embeddings.detach();
                }
                Some((
                    embeddings,
                    self.relative_index.get(len, &self.config, ids.device())?,
                ))
            }
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            // Each layer draws its dropout masks from a generator of its own, so that a
            // checkpointed layer can draw the same masks again in the backward pass.
            let seed = pass.dropout.map(|rng| rng.fork_seed());
            let grads = pass.grads_at(i);
            let call = LayerCall {
                layer: layer.clone(),
                mask_bias: mask_bias.clone(),
                index: relative.as_ref().map(|(_, index)| index.clone()),
                seed,
            };
            let embeddings = relative.as_ref().map(|(e, _)| e);
            x = if pass.checkpoint && grads {
                checkpointed(call, &x, embeddings, self.checkpoint_grads.clone())?
            } else {
                call.run(&x, embeddings, grads)?
            };
            // A frozen layer's output starts the graph afresh: the backward pass stops at the
            // lowest trained layer instead of running through the frozen layer below it (its
            // weights are Vars, so its ops are recorded) and keeping its activations.
            if !grads {
                x = x.detach();
            }
        }
        Ok(x)
    }
}

/// Backbone, context pooler (`pooler.dense` on the `[CLS]` state) and `classifier`.
pub struct DebertaClassifier {
    backbone: Backbone,
    pooler: Dense,
    classifier: Dense,
    layout: Layout,
    config: ModelConfig,
}

/// The names of the weights a fine-tuning run creates when the checkpoint lacks them.
pub const HEAD_PREFIXES: [&str; 2] = ["pooler.", "classifier."];

impl DebertaClassifier {
    pub fn load(
        config: &ModelConfig,
        layout: Layout,
        precision: Precision,
        vb: VarBuilder,
    ) -> CandleResult<Self> {
        let pooled = config.pooled_size();
        let head_input = match layout {
            Layout::Cross => pooled,
            Layout::Siamese => 4 * pooled,
        };
        Ok(DebertaClassifier {
            backbone: Backbone::load(config, precision.dtype(), vb.pp("deberta"))?,
            pooler: linear(config.hidden_size, pooled, vb.pp("pooler.dense"))?,
            classifier: linear(head_input, 3, vb.pp("classifier"))?,
            layout,
            config: config.clone(),
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn num_layers(&self) -> usize {
        self.backbone.layers.len()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weight gradients that checkpointed layers found in the backward passes since the
    /// last call, by weight; candle's gradient store has the others.
    pub fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        std::mem::take(
            &mut *self
                .backbone
                .checkpoint_grads
                .lock()
                .expect("checkpoint grads lock poisoned"),
        )
    }

    fn pool(&self, hidden: &Tensor, pass: &Pass) -> CandleResult<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let first = dropout(&first, self.config.pooler_dropout, pass.dropout)?;
        activation(
            &self.config.pooler_hidden_act,
            &self.pooler.forward(&first)?,
        )
    }

    /// Logits `[N, 3]` in f32. Cross: `ids` holds N sequences. Siamese: `ids` holds 2N sequences, the
    /// N prompt+A sequences first, then the N prompt+B sequences in the same order.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, pass: &Pass) -> CandleResult<Tensor> {
        let pooled = self.pool(&self.backbone.forward(ids, mask, pass)?, pass)?;
        let features = match self.layout {
            Layout::Cross => pooled,
            Layout::Siamese => {
                let rows = pooled.dim(0)? / 2;
                let a = pooled.narrow(0, 0, rows)?;
                let b = pooled.narrow(0, rows, rows)?;
                Tensor::cat(&[&a, &b, &(&a - &b)?, &(&a * &b)?], 1)?
            }
        };
        let drop = self
            .config
            .cls_dropout
            .unwrap_or(self.config.hidden_dropout_prob);
        self.classifier
            .forward(&dropout(&features, drop, pass.dropout)?)?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_relative_indices_equal_fresh_ones_for_shorter_lengths() {
        let config: ModelConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8, "relative_attention": true,
            "position_buckets": 4, "pos_att_type": "p2c|c2p"
        }))
        .unwrap();
        let cache = RelativeIndexCache::default();
        for len in [12, 5, 12, 1] {
            let cached = cache.get(len, &config, &Device::Cpu).unwrap();
            let fresh = relative_index(len, &config, &Device::Cpu).unwrap();
            for (a, b) in [(&cached.c2p, &fresh.c2p), (&cached.p2c, &fresh.p2c)] {
                assert_eq!(
                    a.to_vec1::<u32>().unwrap(),
                    b.to_vec1::<u32>().unwrap(),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn log_buckets_match_hugging_face() {
        // Values of HF's make_log_bucket_position(rel, 256, 512) for a few distances.
        assert_eq!(log_bucket(0, 256, 512), 0);
        assert_eq!(log_bucket(128, 256, 512), 128);
        assert_eq!(log_bucket(-128, 256, 512), -128);
        assert_eq!(log_bucket(129, 256, 512), 129);
        assert_eq!(log_bucket(511, 256, 512), 255);
        assert_eq!(log_bucket(300, 256, 512), 207);
        assert_eq!(log_bucket(-300, 256, 512), -207);
        // And with the fixture's 8 buckets.
        assert_eq!(log_bucket(4, 8, 512), 4);
        assert_eq!(log_bucket(7, 8, 512), 5);
        assert_eq!(log_bucket(100, 8, 512), 6);
        assert_eq!(log_bucket(-128, 8, 512), -7);
    }
}
