//! Typed configuration: `configs/*.toml` files, overridden by command-line flags.
use anyhow::{Context, Result};
use ensembles::cv::BoosterParams;
use features::FeatureConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The feature model's configuration, as in `configs/lgbm.toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LgbmRunConfig {
    pub cv: CvSettings,
    pub features: FeatureConfig,
    pub lgbm: BoosterParams,
    pub encoder: EncoderSettings,
}

/// The sentence encoder behind the semantic features (`[encoder]`, `--encoder`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderSettings {
    /// A BERT-family sentence-encoder folder; none: no semantic features.
    pub dir: Option<PathBuf>,
    /// Tokens per text, special tokens included (the head of the text is kept).
    pub max_tokens: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Where embeddings are kept between runs (one file per encoder); empty: no cache.
    pub cache_dir: PathBuf,
}

impl EncoderSettings {
    /// The paths a run reads through these settings, each with the key that names it: a run
    /// folder must not hold them (`ensemble_core::RunFolder::begin`).
    pub fn input_paths(&self) -> [(&'static str, Option<&Path>); 2] {
        [
            ("the encoder", self.dir.as_deref()),
            ("[encoder] cache_dir", Some(self.cache_dir.as_path())),
        ]
    }
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            dir: None,
            max_tokens: 128,
            batch_size: 32,
            cache_dir: PathBuf::from("runs/encoder-cache"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CvSettings {
    pub folds: usize,
    pub seed: u64,
    pub group_by: FoldGroups,
}

impl Default for CvSettings {
    fn default() -> Self {
        CvSettings {
            folds: 10,
            seed: 42,
            group_by: FoldGroups::None,
        }
    }
}

/// Rows that must share a fold when new folds are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FoldGroups {
    /// Every row on its own (plain stratified folds).
    None,
    /// Battles with the same prompt (all turns) are held out together.
    Prompt,
}

/// Reads a TOML config; fields it leaves out keep their defaults.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_lgbm_config_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/lgbm.toml");
        let config: LgbmRunConfig = read(&path).unwrap();
        assert_eq!(config, LgbmRunConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let file = tempfile::Builder::new()
            .prefix("bad-config-")
            .suffix(".toml")
            .tempfile()
            .unwrap();
        std::fs::write(file.path(), "[lgbm]\nlearning_rat = 0.1\n").unwrap();
        let message = format!("{:#}", read::<LgbmRunConfig>(file.path()).unwrap_err());
        assert!(
            message.contains("bad-config") && message.contains("learning_rat"),
            "{message}"
        );
    }
}
