//! The training settings both neural members share, and how a member's settings (these,
//! flattened, beside its own keys) are read from TOML: each key over the member's defaults,
//! every unknown key named.
use std::path::Path;

use candle_core::DType;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::segments::SegmentBudget;
use crate::{Error, Result};
use ensemble_core::StoppingRows;

/// The dtype of the activations and matmuls. Weights, optimizer state, LayerNorm, softmax
/// and the loss stay f32 either way (mixed precision, as torch's autocast).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// bfloat16: for GPUs with bf16 tensor cores (A100, H100); slow on CPUs.
    Bf16,
    /// float16 with dynamic loss scaling: for GPUs without bf16 (T4, V100).
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// The names the config file uses, for command-line flags.
impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Precision, String> {
        match name {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            other => Err(format!("unknown precision {other:?}: f32, bf16 or f16")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
}

/// The training keys of both members. Each member's settings flatten these beside its own
/// keys (`deberta::DebertaConfig`, `llm::LlmConfig`), so a key belongs to one place only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingConfig {
    pub precision: Precision,
    /// Tokens per sequence, special tokens included.
    pub max_len: usize,
    /// Rows per micro-batch in training.
    pub batch_size: usize,
    /// Rows of `max_len` tokens per batch in prediction (each row runs in both A/B orders):
    /// batches are made by tokens ([`TrainingConfig::prediction_tokens`]), so shorter rows go
    /// more to a batch.
    pub eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accumulation: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Learning rate of the freshly initialized head.
    pub head_learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Fraction of the optimizer steps spent warming the learning rate up from zero.
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    /// Global gradient-norm clip; 0 disables it.
    pub max_grad_norm: f64,
    pub label_smoothing: f64,
    /// Probability that a training row is shown with A and B exchanged (label mirrored).
    pub swap_probability: f64,
    /// Also evaluate on the held-out rows every this many optimizer steps (0: per epoch only).
    pub eval_every_steps: usize,
    /// Evaluations without improvement before training stops.
    pub patience: usize,
    /// The rows whose loss picks the best checkpoint and stops training: the next fold, left
    /// out of training (`inner-fold`, honest OOF), or the held-out fold itself (`held-out`,
    /// which flatters the OOF score).
    pub early_stopping_on: StoppingRows,
    pub seed: u64,
    /// Recompute each trained encoder layer in the backward pass instead of keeping its
    /// activations: about half the memory for about a quarter more time (CPU, BENCHMARKS.md).
    pub gradient_checkpointing: bool,
    /// f16 only: the initial dynamic loss scale (PyTorch GradScaler's `init_scale`).
    pub loss_scale: f64,
    /// Refuse to train when the estimated training memory exceeds the device's free memory
    /// (false: try anyway, e.g. where the estimate is known to be too high).
    pub memory_check: bool,
    pub segments: SegmentBudget,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            precision: Precision::F32,
            max_len: 512,
            batch_size: 4,
            eval_batch_size: 8,
            grad_accumulation: 4,
            epochs: 2,
            learning_rate: 2e-5,
            head_learning_rate: 1e-4,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-6,
            warmup_ratio: 0.1,
            schedule: Schedule::Cosine,
            max_grad_norm: 1.0,
            label_smoothing: 0.0,
            swap_probability: 0.5,
            eval_every_steps: 0,
            patience: 2,
            early_stopping_on: StoppingRows::InnerFold,
            seed: 42,
            gradient_checkpointing: false,
            loss_scale: 65536.0,
            memory_check: true,
            segments: SegmentBudget::default(),
        }
    }
}

impl TrainingConfig {
    /// The tokens a prediction batch may hold, padding included: `eval_batch_size` rows of
    /// `max_len`. A batch of shorter rows holds more of them, and none needs more memory than
    /// `eval_batch_size` rows of `max_len` (its attention, rows × length², is at most
    /// this × `max_len` too), which the members' memory estimates count.
    pub fn prediction_tokens(&self) -> usize {
        self.eval_batch_size * self.max_len
    }

    /// The checks of the shared keys; each member checks `max_len` against its own layout or
    /// template.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // NaN or negative rates train to constant predictions or uphill without failing.
        let positive = [
            ("learning_rate", self.learning_rate),
            ("head_learning_rate", self.head_learning_rate),
            ("adam_eps", self.adam_eps),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{key} {value} must be a finite number above 0"));
            }
        }
        let non_negative = [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{key} {value} must be a finite number ≥ 0"));
            }
        }
        for (key, value) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(format!("{key} {value} is outside [0, 1)"));
            }
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 || self.grad_accumulation == 0 {
            return Err(
                "batch_size, eval_batch_size and grad_accumulation must be positive".into(),
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing {} is outside [0, 1)",
                self.label_smoothing
            ));
        }
        if !(0.0..=1.0).contains(&self.swap_probability)
            || !(0.0..=1.0).contains(&self.warmup_ratio)
        {
            return Err("swap_probability and warmup_ratio must lie in [0, 1]".into());
        }
        if !(self.loss_scale.is_finite() && self.loss_scale >= 1.0) {
            return Err(format!(
                "loss_scale {} must be a finite number ≥ 1",
                self.loss_scale
            ));
        }
        let segments = &self.segments;
        if !(0.0..1.0).contains(&segments.prompt_share)
            || !(0.0..=1.0).contains(&segments.head_share)
            || segments
                .prompt_head_share
                .is_some_and(|share| !(0.0..=1.0).contains(&share))
        {
            return Err(
                "segments.prompt_share must lie in [0, 1), head_share and prompt_head_share in \
                 [0, 1]"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A member's settings: the shared training keys and the member's own, and how they are read.
pub trait MemberConfig: Clone + Default + Serialize + DeserializeOwned {
    /// The shipped file that states the defaults (`configs/NAME.toml`), named in errors.
    const DEFAULTS_FILE: &'static str;

    fn training(&self) -> &TrainingConfig;
    fn training_mut(&mut self) -> &mut TrainingConfig;
    /// Every check of the settings; errors name the key.
    fn validate(&self) -> std::result::Result<(), String>;

    /// Reads a TOML file: its keys over the defaults, checked; errors name the file.
    fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let bad = |message: String| Error::BadModelFile {
            path: path.to_owned(),
            message,
        };
        let given: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        Self::from_table(given).map_err(bad)
    }

    /// Settings recorded as JSON (a fold's `fold.json`), read as [`MemberConfig::from_table`]
    /// reads a file's.
    fn from_value(given: serde_json::Value) -> std::result::Result<Self, String> {
        let given = toml::Table::try_from(given).map_err(|e| e.to_string())?;
        Self::from_table(given)
    }

    /// `given` over the defaults, tables merged key by key, checked.
    fn from_table(given: toml::Table) -> std::result::Result<Self, String> {
        let config = Self::merged(given)?;
        config.validate()?;
        Ok(config)
    }

    /// `given` over the defaults, tables merged key by key, not yet checked. An unknown key is
    /// refused by name: serde's own `deny_unknown_fields` does not work through the
    /// `#[serde(flatten)]` that composes the shared keys with the member's. Merged as TOML,
    /// which, unlike JSON, holds a `nan` or `inf` for the checks to name.
    fn merged(given: toml::Table) -> std::result::Result<Self, String> {
        let mut merged = toml::Table::try_from(Self::default()).map_err(|e| e.to_string())?;
        for (key, value) in given {
            match (merged.get_mut(&key), value) {
                (None, _) => {
                    return Err(format!(
                        "unknown key {key} ({} lists the member's keys)",
                        Self::DEFAULTS_FILE
                    ))
                }
                (Some(toml::Value::Table(into)), toml::Value::Table(from)) => into.extend(from),
                (Some(slot), value) => *slot = value,
            }
        }
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())
    }
}
