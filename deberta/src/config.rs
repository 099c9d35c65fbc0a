//! Training and input settings of the transformer member (`configs/deberta.toml`).
use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::model::Layout;
use crate::tokenizer::SegmentBudget;
use crate::{Error, Result};

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

/// Staged unfreezing, counted in optimizer steps: first the head alone, then the top layers
/// with it, then everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Unfreeze {
    pub head_only_steps: usize,
    pub top_layers: usize,
    pub top_layers_steps: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    pub layout: Layout,
    pub precision: Precision,
    /// Tokens per sequence, special tokens included.
    pub max_len: usize,
    /// Rows per micro-batch in training.
    pub batch_size: usize,
    /// Rows per batch in prediction (each row runs in both A/B orders).
    pub eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accumulation: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Learning rate of the freshly initialized pooler and classifier.
    pub head_learning_rate: f64,
    /// Layer-wise decay: the top encoder layer trains at `learning_rate`, each layer below at
    /// this factor times the one above, the embeddings below the lowest layer. 1 turns it off.
    pub layer_lr_decay: f64,
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
    pub early_stopping_on: ensembles::folds::StoppingRows,
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
    pub unfreeze: Unfreeze,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            layout: Layout::Cross,
            precision: Precision::F32,
            max_len: 512,
            batch_size: 4,
            eval_batch_size: 8,
            grad_accumulation: 4,
            epochs: 2,
            learning_rate: 2e-5,
            head_learning_rate: 1e-4,
            layer_lr_decay: 1.0,
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
            early_stopping_on: ensembles::folds::StoppingRows::InnerFold,
            seed: 42,
            gradient_checkpointing: false,
            loss_scale: 65536.0,
            memory_check: true,
            segments: SegmentBudget::default(),
            unfreeze: Unfreeze::default(),
        }
    }
}

impl TransformerConfig {
    pub fn from_toml_file(path: &Path) -> Result<TransformerConfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let config: TransformerConfig =
            toml::from_str(&text).map_err(|e| Error::bad_model_file(path, e.to_string()))?;
        config
            .validate()
            .map_err(|m| Error::bad_model_file(path, m))?;
        Ok(config)
    }

    /// Every check of the DeBERTa member's settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.validate_shared()?;
        // Special tokens of the layout, then a token for each segment with a share: below
        // that, a segment would read alike in every row.
        let segments = &self.segments;
        let (specials, room) = match self.layout {
            Layout::Cross => (4, segments.least_room(&segments.battle_shares())),
            Layout::Siamese => (3, segments.least_room(&segments.pair_shares())),
        };
        let least = specials + room;
        if self.max_len < least {
            return Err(format!(
                "max_len {} leaves a segment of the battle no token: with {specials} special \
                 tokens and segments.prompt_share {}, it must be at least {least}",
                self.max_len, segments.prompt_share
            ));
        }
        Ok(())
    }

    /// The checks of the keys the LLM member shares; it checks `max_len` against its own
    /// template when it loads its tokenizer.
    pub fn validate_shared(&self) -> std::result::Result<(), String> {
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
        if !(self.layer_lr_decay > 0.0 && self.layer_lr_decay <= 1.0) {
            return Err(format!(
                "layer_lr_decay {} is outside (0, 1]",
                self.layer_lr_decay
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/deberta.toml");
        let config = TransformerConfig::from_toml_file(&path).unwrap();
        // The file documents the defaults, so it must state exactly them.
        assert_eq!(config, TransformerConfig::default());
    }

    #[test]
    fn precision_flags_use_the_config_names() {
        for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
            let name = serde_json::to_value(precision).unwrap();
            assert_eq!(name.as_str().unwrap().parse::<Precision>(), Ok(precision));
        }
        assert!("fp16".parse::<Precision>().is_err());
    }

    #[test]
    fn non_finite_or_negative_rates_are_rejected_by_name() {
        for (text, key) in [
            ("learning_rate = nan", "learning_rate"),
            ("learning_rate = -1e-5", "learning_rate"),
            ("head_learning_rate = inf", "head_learning_rate"),
            ("weight_decay = -0.1", "weight_decay"),
            ("adam_beta2 = 1.0", "adam_beta2"),
            ("max_grad_norm = nan", "max_grad_norm"),
        ] {
            let config: TransformerConfig = toml::from_str(text).unwrap();
            let error = config.validate().unwrap_err();
            assert!(error.starts_with(key), "{text}: {error}");
        }
    }

    /// The least `max_len` holds the layout's special tokens and a token of each segment.
    #[test]
    fn a_max_len_that_leaves_a_segment_no_token_is_refused() {
        for (text, least) in [
            ("", 9),
            ("layout = \"siamese\"", 8),
            ("[segments]\nprompt_share = 0.05\nhead_share = 0.5", 24),
        ] {
            let mut config: TransformerConfig = toml::from_str(text).unwrap();
            config.max_len = least;
            assert_eq!(config.validate(), Ok(()), "{text}");
            config.max_len = least - 1;
            let error = config.validate().unwrap_err();
            assert!(
                error.starts_with(&format!("max_len {} leaves a segment", least - 1))
                    && error.ends_with(&format!("at least {least}")),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<TransformerConfig>("max_lenght = 3").is_err());
    }
}
