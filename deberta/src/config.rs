//! The DeBERTa member's settings (`configs/deberta.toml`): the shared training keys and its
//! own, the layout, layer-wise learning rates and staged unfreezing.
use neural::{MemberConfig, TrainingConfig};
use serde::{Deserialize, Serialize};

use crate::model::Layout;

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
#[serde(default)]
pub struct DebertaConfig {
    #[serde(flatten)]
    pub training: TrainingConfig,
    pub layout: Layout,
    /// Layer-wise decay: the top encoder layer trains at `learning_rate`, each layer below at
    /// this factor times the one above, the embeddings below the lowest layer. 1 turns it off.
    pub layer_lr_decay: f64,
    pub unfreeze: Unfreeze,
}

impl Default for DebertaConfig {
    fn default() -> Self {
        DebertaConfig {
            training: TrainingConfig::default(),
            layout: Layout::Cross,
            layer_lr_decay: 1.0,
            unfreeze: Unfreeze::default(),
        }
    }
}

impl MemberConfig for DebertaConfig {
    const DEFAULTS_FILE: &'static str = "configs/deberta.toml";

    fn training(&self) -> &TrainingConfig {
        &self.training
    }

    fn training_mut(&mut self) -> &mut TrainingConfig {
        &mut self.training
    }

    /// Every check of the DeBERTa member's settings.
    fn validate(&self) -> std::result::Result<(), String> {
        self.training.validate()?;
        if !(self.layer_lr_decay > 0.0 && self.layer_lr_decay <= 1.0) {
            return Err(format!(
                "layer_lr_decay {} is outside (0, 1]",
                self.layer_lr_decay
            ));
        }
        // Special tokens of the layout, then a token for each segment with a share: below
        // that, a segment would read alike in every row.
        let segments = &self.training.segments;
        let (specials, room) = match self.layout {
            Layout::Cross => (4, segments.least_room(&segments.battle_shares())),
            Layout::Siamese => (3, segments.least_room(&segments.pair_shares())),
        };
        let least = specials + room;
        if self.training.max_len < least {
            return Err(format!(
                "max_len {} leaves a segment of the battle no token: with {specials} special \
                 tokens and segments.prompt_share {}, it must be at least {least}",
                self.training.max_len, segments.prompt_share
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A config of `text`'s keys over the defaults, unchecked (the tests make invalid ones).
    fn parse(text: &str) -> DebertaConfig {
        DebertaConfig::merged(text.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_shipped_config_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/deberta.toml");
        let config = DebertaConfig::from_toml_file(&path).unwrap();
        // The file documents the defaults, so it must state exactly them.
        assert_eq!(config, DebertaConfig::default());
    }

    #[test]
    fn precision_flags_use_the_config_names() {
        for precision in [
            neural::Precision::F32,
            neural::Precision::Bf16,
            neural::Precision::F16,
        ] {
            let name = serde_json::to_value(precision).unwrap();
            assert_eq!(
                name.as_str().unwrap().parse::<neural::Precision>(),
                Ok(precision)
            );
        }
        assert!("fp16".parse::<neural::Precision>().is_err());
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
            let config = parse(text);
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
            let mut config = parse(text);
            config.training.max_len = least;
            assert_eq!(config.validate(), Ok(()), "{text}");
            config.training.max_len = least - 1;
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
        let error = DebertaConfig::from_value(serde_json::json!({"max_lenght": 3})).unwrap_err();
        assert!(error.starts_with("unknown key max_lenght"), "{error}");
    }
}
