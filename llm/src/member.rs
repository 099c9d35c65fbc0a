//! The LLM member as the shared fold loop trains it: a decoder LLM with a LoRA adapter, its
//! tokenizer and template, and its settings (`configs/llm.toml`). It implements
//! `neural::FoldModel`, so that it trains through the loop both members share (AdamW,
//! schedule, accumulation, clipping, f16 loss scaling, swap augmentation, early stopping) and
//! predicts with its swap averaging; [`LlmRun`] is the member under the fold-run protocol.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, TensorId, Var};
use neural::run::{BaseModel, Member};
use neural::{
    DropoutRng, EncodedPair, FoldModel, FoldRows, MemberConfig, MemoryEstimate, Precision,
    ResponsePair, SegmentBudget, Setting, TrainingConfig,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::adapter::{LoraSpec, SCORE_KEY, TARGETABLE};
use crate::encode::{Padding, PairEncoder, Template};
use crate::model::DecoderClassifier;
use crate::Family;
use crate::{Error, Result};

/// The LLM member's settings: the shared training keys, the adapter, the template and the
/// padding side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmConfig {
    #[serde(flatten)]
    pub training: TrainingConfig,
    pub lora: LoraSpec,
    /// The text the model reads, with `{prompt}`, `{response_a}` and `{response_b}`.
    pub template: String,
    pub padding: Padding,
}

impl Default for LlmConfig {
    /// What the LMSYS winners trained with, scaled to a default that also runs on a CPU with
    /// the tiny example model: LoRA r 16 on every projection, learning rate 2e-4, one epoch.
    fn default() -> LlmConfig {
        LlmConfig {
            training: TrainingConfig {
                max_len: 1024,
                batch_size: 2,
                eval_batch_size: 4,
                grad_accumulation: 8,
                epochs: 1,
                learning_rate: 2e-4,
                head_learning_rate: 2e-4,
                weight_decay: 0.01,
                warmup_ratio: 0.05,
                patience: 1,
                segments: SegmentBudget {
                    prompt_head_share: Some(1.0),
                    ..SegmentBudget::default()
                },
                ..TrainingConfig::default()
            },
            lora: LoraSpec {
                r: 16,
                alpha: 32.0,
                target_modules: TARGETABLE.iter().map(|(m, _)| (*m).to_owned()).collect(),
                use_rslora: false,
                dropout: 0.05,
            },
            template: "# Prompt\n{prompt}\n\n# Response A\n{response_a}\n\n# Response B\n\
                       {response_b}\n\n# Which response is better?"
                .into(),
            padding: Padding::Right,
        }
    }
}

impl MemberConfig for LlmConfig {
    const DEFAULTS_FILE: &'static str = "configs/llm.toml";

    fn training(&self) -> &TrainingConfig {
        &self.training
    }

    fn training_mut(&mut self) -> &mut TrainingConfig {
        &mut self.training
    }

    /// Every check of the settings but `max_len`, which [`LlmMember::load`] checks against
    /// the template once it has the tokenizer.
    fn validate(&self) -> std::result::Result<(), String> {
        self.training.validate()?;
        let lora = &self.lora;
        if lora.r == 0 || !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(format!(
                "lora: r ({}) and alpha ({}) must be above 0",
                lora.r, lora.alpha
            ));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(format!("lora: dropout {} must be in [0, 1)", lora.dropout));
        }
        if lora.target_modules.is_empty()
            || lora
                .target_modules
                .iter()
                .any(|m| !TARGETABLE.iter().any(|(t, _)| t == m))
        {
            return Err(format!(
                "lora: target_modules {:?} must be some of q_proj, k_proj, v_proj, o_proj, \
                 gate_proj, up_proj, down_proj",
                lora.target_modules
            ));
        }
        Template::parse(&self.template).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A decoder LLM, its tokenizer and template, and the settings it trains and predicts with.
pub struct LlmMember {
    model: DecoderClassifier,
    encoder: PairEncoder,
    config: LlmConfig,
}

impl LlmMember {
    /// Loads the base model of `model_dir` in the precision of `config` (bf16 or f16 base
    /// weights; f32 otherwise), with no adapter yet. Returns the member and, where the folder
    /// gives no pad token, the sentence that says EOS pads instead.
    pub fn load(
        model_dir: &Path,
        device: &Device,
        config: &LlmConfig,
    ) -> Result<(LlmMember, Option<String>)> {
        LlmMember::load_with(model_dir, device, config, false, None)
    }

    /// Loads the member as [`LlmMember::load`] does, with the base weights in 8 bits for
    /// prediction, quantized as they are read ([`DecoderClassifier::load_8_bit`]).
    pub fn load_8_bit(
        model_dir: &Path,
        device: &Device,
        config: &LlmConfig,
    ) -> Result<(LlmMember, Option<String>)> {
        LlmMember::load_with(model_dir, device, config, true, None)
    }

    /// `max_len_source`: where `max_len` was set (a flag, a config file), for the refusal of
    /// one too small.
    fn load_with(
        model_dir: &Path,
        device: &Device,
        config: &LlmConfig,
        eight_bit: bool,
        max_len_source: Option<&str>,
    ) -> Result<(LlmMember, Option<String>)> {
        config.validate().map_err(Error::Invalid)?;
        let dtype = config.training.precision.dtype();
        let model = match eight_bit {
            true => DecoderClassifier::load_8_bit(model_dir, device, dtype)?,
            false => DecoderClassifier::load(model_dir, device, dtype)?,
        };
        let (pad_id, from_eos) =
            model
                .config()
                .padding_id()
                .map_err(|message| Error::BadModelFile {
                    path: model_dir.join("config.json"),
                    message,
                })?;
        let note = from_eos.then(|| {
            format!(
                "{}: no pad_token_id; padding with the EOS token {pad_id}, as Hugging Face does",
                model_dir.join("config.json").display()
            )
        });
        let template = Template::parse(&config.template)?;
        let encoder = PairEncoder::new(
            model_dir,
            template,
            config.training.segments.clone(),
            pad_id,
        )?;
        let least = encoder.least_max_len();
        if config.training.max_len < least {
            let source = max_len_source.map_or(String::new(), |source| format!(" ({source})"));
            return Err(Error::Invalid(format!(
                "max_len {}{source} leaves a field of the battle no token: the template takes \
                 {} tokens of {} with its special tokens and the marks of cut fields, and the \
                 fields share the rest by segments.prompt_share ({}); raise max_len to at \
                 least {least}, or shorten the template",
                config.training.max_len,
                encoder.reserve(),
                model_dir.join("tokenizer.json").display(),
                config.training.segments.prompt_share
            )));
        }
        let member = LlmMember {
            model,
            encoder,
            config: config.clone(),
        };
        Ok((member, note))
    }

    pub fn model(&self) -> &DecoderClassifier {
        &self.model
    }

    /// A fresh adapter of the config's spec (A drawn from `seed`, B zero) and the folder's
    /// head, in place of any adapter the model has.
    pub fn start_adapter(&mut self, seed: u64) -> Result<()> {
        self.model.remove_adapter()?;
        self.model.add_lora(self.config.lora.clone(), seed)
    }

    /// A saved adapter (and its head) in place of any the model has; its own
    /// `adapter_config.json` says its rank and targets.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<()> {
        self.model.remove_adapter()?;
        self.model.apply_adapter(dir).map(|_| ())
    }

    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        self.model.save_adapter(dir)
    }

    /// Each battle in the template, in both answer orders, within `max_len` tokens (rows
    /// tokenized in parallel).
    pub fn encode(&self, pairs: &[ResponsePair]) -> Result<Vec<EncodedPair>> {
        let max_len = self.config.training.max_len;
        pairs
            .par_iter()
            .map(|pair| {
                let [as_given, swapped] = self.encoder.encode(pair, max_len)?;
                Ok(EncodedPair {
                    as_given: vec![as_given],
                    swapped: vec![swapped],
                })
            })
            .collect()
    }

    /// Swap-averaged logits of `encoded` rows (both answer orders, mirrored and averaged),
    /// batched by tokens (see [`neural::predict_logits`]).
    pub fn predict_logits<P: std::borrow::Borrow<EncodedPair>>(
        &self,
        encoded: &[P],
    ) -> Result<Vec<[f32; 3]>> {
        Ok(neural::predict_logits(
            self,
            encoded,
            self.config.training.prediction_tokens(),
        )?)
    }

    /// The padded ids and masks of views of one sequence each.
    fn batch(&self, views: &[&[Vec<u32>]]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let rows: Vec<&[u32]> = views.iter().map(|v| v[0].as_slice()).collect();
        self.encoder.pad(&rows, self.config.padding)
    }
}

/// How the shared loop and the fold-run protocol carry this member's errors: the loop's own
/// come back as they were, the member's are boxed whole.
impl From<Error> for neural::Error {
    fn from(error: Error) -> neural::Error {
        match error {
            Error::Training(error) => error,
            Error::Candle(error) => neural::Error::Candle(error),
            other => neural::Error::Member(Box::new(other)),
        }
    }
}

impl FoldModel for LlmMember {
    fn training_config(&self) -> &TrainingConfig {
        &self.config.training
    }

    fn device(&self) -> &Device {
        self.model.device()
    }

    /// The adapter and the head, at every step.
    fn trained(&self, _step: usize) -> Vec<(String, Var)> {
        let mut trained: Vec<(String, Var)> = self
            .model
            .trainable()
            .into_iter()
            .map(|(name, var)| (name, var.clone()))
            .collect();
        trained.sort_by(|a, b| a.0.cmp(&b.0));
        trained
    }

    fn learning_rate(&self, name: &str) -> f64 {
        match name == SCORE_KEY {
            true => self.config.training.head_learning_rate,
            false => self.config.training.learning_rate,
        }
    }

    /// The adapter's and the head's weights all decay.
    fn decays(&self, name: &str) -> bool {
        !name.ends_with("bias")
    }

    fn rates_to_lower(&self, _step: usize) -> Vec<Setting> {
        let training = &self.config.training;
        [
            ("learning_rate", training.learning_rate),
            ("head_learning_rate", training.head_learning_rate),
        ]
        .into_iter()
        .map(|(key, value)| Setting {
            key,
            value,
            source: None,
        })
        .collect()
    }

    fn training_logits(
        &self,
        views: &[&[Vec<u32>]],
        _step: usize,
        dropout: &DropoutRng,
    ) -> neural::Result<Tensor> {
        let (ids, mask) = self.batch(views);
        let checkpoint = self.config.training.gradient_checkpointing;
        Ok(self
            .model
            .training_logits(&ids, &mask, Some(dropout), checkpoint)?)
    }

    fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        self.model.take_checkpoint_grads()
    }

    fn prediction_logits(&self, views: &[&[Vec<u32>]]) -> neural::Result<Tensor> {
        let (ids, mask) = self.batch(views);
        Ok(self.model.logits(&ids, &mask)?)
    }

    /// The adapter and the head: the base never changes.
    fn snapshot(&self) -> neural::Result<HashMap<String, Tensor>> {
        self.model
            .trainable()
            .into_iter()
            .map(|(name, var)| Ok((name, var.as_tensor().copy()?)))
            .collect()
    }

    fn restore(&self, snapshot: &HashMap<String, Tensor>) -> neural::Result<()> {
        for (name, var) in self.model.trainable() {
            if let Some(saved) = snapshot.get(&name) {
                var.set(saved)?;
            }
        }
        Ok(())
    }

    fn training_memory(&self, rows: FoldRows) -> MemoryEstimate {
        let training = &self.config.training;
        let trained: usize = self
            .model
            .trainable()
            .iter()
            .map(|(_, var)| var.elem_count())
            .sum();
        let c = self.model.config();
        let lora = &self.config.lora;
        // Each adapted projection keeps a byte mask of its input for dropout.
        let masked_inputs = match lora.dropout > 0.0 {
            true => lora
                .target_modules
                .iter()
                .map(|module| match module.as_str() {
                    "o_proj" => c.num_heads * c.head_dim,
                    "down_proj" => c.intermediate_size,
                    _ => c.hidden_size,
                })
                .sum(),
            false => 0,
        };
        estimate(&DecoderShape {
            sequences: training.batch_size.min(rows.train),
            eval_sequences: 2 * rows.prediction_rows(training),
            len: rows.longest,
            model: c,
            masked_inputs,
            base_bytes: self.model.weight_bytes(),
            trained,
            precision: training.precision,
            checkpoint: training.gradient_checkpointing,
            accumulation: training.grad_accumulation,
            fused_attention: neural::attention_is_fused(
                self.model.device(),
                training.precision.dtype(),
                c.attn_logit_softcapping,
            ),
        })
    }
}

/// What the LLM member's training memory depends on.
struct DecoderShape<'a> {
    sequences: usize,
    eval_sequences: usize,
    len: usize,
    model: &'a crate::DecoderConfig,
    /// The summed input widths of the adapted projections, where LoRA dropout is on.
    masked_inputs: usize,
    base_bytes: usize,
    trained: usize,
    precision: Precision,
    checkpoint: bool,
    accumulation: usize,
    /// Whether attention is `neural::attention`'s fused node (`neural::attention_is_fused`),
    /// which keeps only the probabilities of each block's visible keys.
    fused_attention: bool,
}

/// Widths and sizes of one layer's activations at `sequences` rows of `shape.len` tokens.
struct LayerActivations {
    tokens: u64,
    /// Bytes per activation (the precision's).
    b: u64,
    hidden: u64,
    intermediate: u64,
    /// Query width (heads × head_dim) and key/value width.
    q: u64,
    kv: u64,
    /// Entries of the attention scores, `[sequences, heads, len, len]`.
    scores: u64,
    /// The fused attention's kept probabilities (under a causal mask), where it runs.
    fused_probs: Option<u64>,
}

impl LayerActivations {
    fn of(shape: &DecoderShape, sequences: usize) -> LayerActivations {
        let c = shape.model;
        LayerActivations {
            tokens: (sequences * shape.len) as u64,
            b: shape.precision.dtype().size_in_bytes() as u64,
            hidden: c.hidden_size as u64,
            intermediate: c.intermediate_size as u64,
            q: (c.num_heads * c.head_dim) as u64,
            kv: (c.num_kv_heads * c.head_dim) as u64,
            scores: (sequences * c.num_heads * shape.len * shape.len) as u64,
            fused_probs: shape.fused_attention.then(|| {
                (sequences * c.num_heads * neural::causal_attention_probabilities(shape.len)) as u64
            }),
        }
    }
}

/// Bytes one decoder layer keeps for the backward pass, counted node by node from `model.rs`
/// and the ops (each node keeps its inputs; BENCHMARKS.md has the count against the
/// allocator, within 3%). Per token, in the activations' dtype: the hidden-sized norm
/// outputs, sublayer outputs and residual sums (6; Gemma-2's two extra norms make 8); q and
/// k as projected, made contiguous and rotated, v as projected and made contiguous; grouped
/// keys and values repeated to every head; the context and its reshaped copy; the gated MLP's
/// gate, up and product. In f32: the scaled queries, and in half precision the f32 copies of
/// q and k besides. A byte per masked adapter input. Per attention score: the probabilities
/// in the activations' dtype, the f32 softmax besides them in half precision, and Gemma-2's
/// f32 tanh of the capped scores. The fused attention keeps neither the repeated keys and
/// values nor the scaled queries, and only its f32 probabilities.
fn kept_bytes(shape: &DecoderShape, sequences: usize) -> u64 {
    let a = LayerActivations::of(shape, sequences);
    let c = shape.model;
    let half = a.b != 4;
    let residual_stream = if c.family == Family::Gemma2 { 8 } else { 6 };
    let repeated = if c.num_heads != c.num_kv_heads && a.fused_probs.is_none() {
        2 * a.q
    } else {
        0
    };
    let per_token = (residual_stream * a.hidden
        + 3 * (a.q + a.kv)
        + 2 * a.kv
        + repeated
        + 2 * a.q
        + 3 * a.intermediate)
        * a.b
        + if a.fused_probs.is_some() { 0 } else { a.q * 4 }
        + if half { 2 * a.q * 4 } else { 0 }
        + shape.masked_inputs as u64;
    let per_score = a.b
        + if half { 4 } else { 0 }
        + if c.attn_logit_softcapping.is_some() {
            4
        } else {
            0
        };
    let probs = match a.fused_probs {
        Some(probs) => probs * 4,
        None => a.scores * per_score,
    };
    a.tokens * per_token + probs
}

/// The peak of one layer's forward pass in prediction, where nothing is kept: the residual
/// stream, its norm and the sublayer's output (one more with Gemma-2's post-norms), beside the
/// larger of the attention (q, k and v with their copies, the f32 q and k, and two f32
/// score-sized steps at a time; the fused attention's probabilities alone) and the MLP at its
/// up projection (the gate, the frozen product, the adapter's f32 update and, in half
/// precision, its cast, and their sum).
fn prediction_bytes(shape: &DecoderShape, sequences: usize) -> u64 {
    let a = LayerActivations::of(shape, sequences);
    let half = a.b != 4;
    let projected = 2 * (a.q + 2 * a.kv) * a.b + 2 * a.q * a.b;
    let attention = match a.fused_probs {
        Some(probs) => a.tokens * projected + probs * 4,
        None => a.tokens * (projected + 2 * a.q * 4) + 2 * a.scores * 4,
    };
    let mlp = a.tokens * a.intermediate * (3 * a.b + 4 + if half { a.b } else { 0 });
    let residual_stream = if shape.model.family == Family::Gemma2 {
        4
    } else {
        3
    };
    a.tokens * residual_stream * a.hidden * a.b + attention.max(mlp)
}

/// The backward pass's working memory on top of what the layers keep: candle holds every
/// kept activation to the end of the pass, so the peak is at the node whose backward pass
/// needs the most at once. In the attention that is about 3.75 f32 and 1.75 activation-dtype
/// score-sized tensors (the probabilities' gradient as candle's matmul leaves it, with its
/// zeros and history, then the softmax's f32 steps), one f32 more with soft-capping, and for
/// the fused attention three f32 `tokens × q` (the queries' gradient, and the keys' and
/// values' for every query head before their sums); in the
/// MLP about 2.5 f32 and 6 activation-dtype tensors of `tokens × intermediate` (the down
/// projection's f32 steps, the pending gradients, the activation's derivative). Fitted to the
/// allocator on the tiny fixtures and at Qwen2.5-0.5B's and Gemma-2-2B's shapes, f32 and bf16
/// (BENCHMARKS.md).
fn backward_working_bytes(shape: &DecoderShape, sequences: usize) -> u64 {
    let a = LayerActivations::of(shape, sequences);
    let b = a.b as f64;
    let f32_score_steps = if shape.model.attn_logit_softcapping.is_some() {
        4.75
    } else {
        3.75
    };
    let attention = match a.fused_probs {
        Some(_) => (3 * a.tokens * a.q * 4) as f64,
        None => (f32_score_steps * 4.0 + 1.75 * b) * a.scores as f64,
    };
    let mlp = (2.5 * 4.0 + 6.0 * b) * (a.tokens * a.intermediate) as f64;
    attention.max(mlp) as u64
}

/// The additive attention masks a forward pass holds for every layer: `[sequences, 1, len,
/// len]` in f32, and a second where layers slide and the batch is longer than the window.
fn mask_bytes(shape: &DecoderShape, sequences: usize) -> u64 {
    let c = shape.model;
    let masks = match c.sliding_layers.contains(&true) && shape.len > c.sliding_window {
        true => 2,
        false => 1,
    };
    masks * (sequences * shape.len * shape.len * 4) as u64
}

/// The estimate: the attention masks, every layer's kept activations (with checkpointing each
/// layer's input, and one layer recomputed) and the backward pass's working memory; or
/// prediction's one layer at a time at its batch, whichever is larger; AdamW's moments,
/// gradients and the best checkpoint of the adapter and head.
fn estimate(shape: &DecoderShape) -> MemoryEstimate {
    let b = shape.precision.dtype().size_in_bytes() as u64;
    let layers = shape.model.num_layers as u64;
    let tokens = (shape.sequences * shape.len) as u64;
    let hidden = shape.model.hidden_size as u64;
    let layer = kept_bytes(shape, shape.sequences);
    let working = backward_working_bytes(shape, shape.sequences);
    let training = mask_bytes(shape, shape.sequences)
        + match shape.checkpoint {
            true => layers * tokens * hidden * b + layer + working,
            false => layers * layer + working,
        };
    let prediction =
        mask_bytes(shape, shape.eval_sequences) + prediction_bytes(shape, shape.eval_sequences);
    let trained = 4 * shape.trained as u64;
    MemoryEstimate {
        weights: shape.base_bytes as u64,
        optimizer: 2 * trained,
        gradients: trained * if shape.accumulation > 1 { 2 } else { 1 },
        checkpoint: trained,
        activations: training.max(prediction),
    }
}

/// The LLM member under the fold-run protocol: the base is frozen, so it is read once (with
/// its fingerprint) and serves every fold, each with its own adapter, which a fold always
/// keeps in `fold-K/adapter/` (PEFT's format). `--predict-only` applies the adapters to the
/// same base, in 8 bits with `int8_base`.
pub struct LlmRun {
    /// The base model folder (`--model`).
    model_dir: Option<PathBuf>,
    device: Device,
    config: LlmConfig,
    /// Hold the base's projection weights in 8 bits (prediction only).
    int8_base: bool,
    /// Where `max_len` was set, named if it is too small for the template.
    max_len_source: String,
    /// The member between folds.
    member: Option<LlmMember>,
    /// The base's folder and fingerprint, once read.
    base: Option<BaseModel>,
}

impl LlmRun {
    pub fn new(
        model_dir: Option<PathBuf>,
        device: Device,
        config: LlmConfig,
        int8_base: bool,
    ) -> LlmRun {
        LlmRun {
            model_dir,
            device,
            config,
            int8_base,
            max_len_source: "the config's".into(),
            member: None,
            base: None,
        }
    }

    /// Says where the config's `max_len` was set (a flag, a config file), for the refusal of
    /// one too small for the template.
    pub fn with_max_len_source(self, max_len_source: String) -> LlmRun {
        LlmRun {
            max_len_source,
            ..self
        }
    }

    /// The member with no adapter, read on first use (8-bit base weights with `int8_base`),
    /// and its base's record.
    fn base_member(&mut self) -> Result<(LlmMember, BaseModel)> {
        if let (Some(member), Some(base)) = (self.member.take(), &self.base) {
            return Ok((member, base.clone()));
        }
        let dir = self.model_dir.clone().ok_or_else(|| {
            Error::Invalid(
                "--model is needed: the base model the LLM member's adapters were (or are to \
                 be) trained on"
                    .into(),
            )
        })?;
        let (member, note) = LlmMember::load_with(
            &dir,
            &self.device,
            &self.config,
            self.int8_base,
            Some(&self.max_len_source),
        )?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        if !member.model().head_in_folder() {
            eprintln!(
                "{}: no classification head (a causal LM's folder); the head starts at random \
                 and trains with the adapters",
                dir.display()
            );
        }
        let fingerprint = crate::base_fingerprint(&dir)?;
        let base = BaseModel { dir, fingerprint };
        self.base = Some(base.clone());
        Ok((member, base))
    }
}

impl Member for LlmRun {
    type Config = LlmConfig;
    type Model = LlmMember;

    fn config(&self) -> &LlmConfig {
        &self.config
    }

    fn encode(model: &LlmMember, pairs: &[ResponsePair]) -> neural::Result<Vec<EncodedPair>> {
        Ok(model.encode(pairs)?)
    }

    fn for_training(&mut self, fold: usize) -> neural::Result<LlmMember> {
        let (mut member, _) = self.base_member()?;
        member.start_adapter(self.config.training.seed.wrapping_add(fold as u64))?;
        Ok(member)
    }

    fn saved(&self, fold_dir: &Path) -> (PathBuf, &'static str) {
        (fold_dir.join("adapter"), "train the fold first")
    }

    fn for_prediction(
        &mut self,
        fold: usize,
        saved: &Path,
        recorded: Option<&BaseModel>,
    ) -> neural::Result<LlmMember> {
        let trained = recorded.ok_or_else(|| {
            neural::Error::Invalid(format!(
                "{}: fold {fold} records no base model; train it again",
                saved.display()
            ))
        })?;
        let (mut member, base) = self.base_member()?;
        if trained.fingerprint != base.fingerprint {
            let older = !trained.fingerprint.starts_with(neural::FINGERPRINT_SCHEME);
            let error = neural::Error::Invalid(match older {
                true => format!(
                    "{}: fold {fold} records its base's fingerprint in an older form ({}), \
                     which this version cannot compare with {}; train the fold again",
                    saved.display(),
                    trained.fingerprint,
                    base.dir.display()
                ),
                false => format!(
                    "{}: fold {fold}'s adapter was trained on {} (fingerprint {}), and {} \
                 has other files (fingerprint {}); predict with the base model it was \
                 trained on",
                    saved.display(),
                    trained.dir.display(),
                    trained.fingerprint,
                    base.dir.display(),
                    base.fingerprint
                ),
            });
            self.member = Some(member);
            return Err(error);
        }
        member.apply_adapter(saved)?;
        Ok(member)
    }

    /// An adapter is small beside its base (about 0.2 GB in f32 for Gemma-2-9B at r 16 on all
    /// seven projections, against 18 GB): always kept.
    fn save(&self, model: &LlmMember, fold_dir: &Path) -> neural::Result<()> {
        Ok(model.save_adapter(&self.saved(fold_dir).0)?)
    }

    fn base(&self) -> Option<&BaseModel> {
        self.base.as_ref()
    }

    fn give_back(&mut self, model: LlmMember) {
        self.member = Some(model);
    }
}
