//! The files of a fold-run folder: each fold's `fold-K/fold.json` and logits files, and what
//! the folds recorded of their training config.
use std::path::{Path, PathBuf};

use ensemble_core::stage_file::{self, StageFile};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const LOGIT_HEADER: [&str; 4] = ["id", "logit_a", "logit_b", "logit_tie"];

/// What a fold records in `fold-K/fold.json`.
#[derive(Serialize, Deserialize)]
pub struct FoldSummary {
    pub fold: usize,
    pub train_rows: usize,
    pub held_out_rows: usize,
    /// The fold whose rows picked the checkpoint (this fold itself with `held-out` stopping).
    #[serde(default)]
    pub stopping_fold: usize,
    /// The log loss of the picked checkpoint on those rows.
    pub best_log_loss: f64,
    pub best_step: usize,
    pub steps: usize,
    pub history: serde_json::Value,
    /// f16: the final dynamic loss scale and the steps skipped on overflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<serde_json::Value>,
    /// Optimizer steps skipped for non-finite gradients.
    #[serde(default)]
    pub skipped_steps: usize,
    pub seconds: FoldSeconds,
    /// The member's training config, which `--predict-only` checks its own against.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The model folder the fold was trained from (DeBERTa's, or the LLM member's base, to
    /// which its adapter is applied only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<BaseModel>,
}

/// The model folder a fold was trained from, and its fingerprint (`crate::fingerprint_files`).
#[derive(Clone, Serialize, Deserialize)]
pub struct BaseModel {
    pub dir: PathBuf,
    /// The member's fingerprint of its weights.
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
pub struct FoldSeconds {
    pub load: f64,
    pub tokenize: f64,
    /// Fine-tuning, held-out evaluations included.
    pub train: f64,
    /// The held-out evaluations and checkpoints within `train`.
    pub evaluate: f64,
    pub predict_test: f64,
}

impl FoldSummary {
    /// Reads `fold-K/fold.json`: None where the fold has not written it (yet).
    pub fn read(path: &Path) -> Result<Option<FoldSummary>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path)(e)),
        };
        let summary = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not a fold summary: {e}", path.display())))?;
        Ok(Some(summary))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(stage_file::write_atomically(path, text.as_bytes())?)
    }
}

pub fn fold_dir(out: &Path, fold: usize) -> PathBuf {
    out.join(format!("fold-{fold}"))
}

/// Writes `id,logit_a,logit_b,logit_tie`, a row per id.
pub fn write_logits(path: &Path, ids: &[&String], logits: &[[f32; 3]]) -> Result<()> {
    let rows = ids.iter().zip(logits).map(|(id, l)| {
        [
            (*id).clone(),
            l[0].to_string(),
            l[1].to_string(),
            l[2].to_string(),
        ]
    });
    Ok(stage_file::write(path, &LOGIT_HEADER, rows)?)
}

pub fn read_logits(path: &Path) -> Result<Vec<(String, [f32; 3])>> {
    let file = StageFile::read(path, &LOGIT_HEADER)?;
    file.rows()
        .map(|(line, fields)| {
            // NaN or infinite logits would become NaN probabilities in the submission.
            let parse = |s: &str| s.trim().parse::<f32>().ok().filter(|v| v.is_finite());
            match (parse(&fields[1]), parse(&fields[2]), parse(&fields[3])) {
                (Some(a), Some(b), Some(t)) => Ok((fields[0].to_string(), [a, b, t])),
                _ => Err(file
                    .error(
                        line,
                        format!("id {}: logits must be finite numbers", &fields[0]),
                    )
                    .into()),
            }
        })
        .collect()
}

/// The training config recorded by the lowest-numbered fold in `out`, if any fold is there:
/// how a `--merge` or `--predict-only` run that is given no config finds its folds' (and the
/// binary, which member trained them).
pub fn recorded_config(out: &Path) -> Result<Option<serde_json::Value>> {
    let mut folds: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let k = path
                .file_name()?
                .to_str()?
                .strip_prefix("fold-")?
                .parse()
                .ok()?;
            Some((k, path.join("fold.json")))
        })
        .filter(|(_, path)| path.is_file())
        .collect();
    folds.sort();
    match folds.first() {
        Some((_, path)) => Ok(FoldSummary::read(path)?.and_then(|summary| summary.config)),
        None => Ok(None),
    }
}

/// `key = trained value (LABEL: asked value)` for each config key that differs.
pub fn config_differences(
    trained: &serde_json::Value,
    asked: &serde_json::Value,
    label: &str,
) -> Vec<String> {
    let (Some(trained), Some(asked)) = (trained.as_object(), asked.as_object()) else {
        return vec![format!("{trained} ({label}: {asked})")];
    };
    let mut keys: Vec<&String> = trained.keys().chain(asked.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| trained.get(*key) != asked.get(*key))
        .map(|key| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("nothing".into(), |v| v.to_string());
            format!(
                "{key} = {} ({label}: {})",
                show(trained.get(key)),
                show(asked.get(key))
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_differences_name_each_key_with_both_values() {
        let trained = serde_json::json!({"epochs": 1, "precision": "bf16", "seed": 42});
        let asked = serde_json::json!({"epochs": 2, "precision": "bf16", "max_len": 64});
        assert_eq!(
            config_differences(&trained, &asked, "fold 0"),
            [
                "epochs = 1 (fold 0: 2)",
                "max_len = nothing (fold 0: 64)",
                "seed = 42 (fold 0: nothing)"
            ]
        );
        assert!(config_differences(&trained, &trained, "this run").is_empty());
    }
}
