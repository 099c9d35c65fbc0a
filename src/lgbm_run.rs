//! What a feature-model run folder keeps for predicting later: the fitted feature state
//! (`features.json`) and the fold models (`models/fold_K.txt`). `cv` writes them, `predict`
//! reads them back; both go through here.
use crate::semantic::{self, EncoderRecord};
use anyhow::{bail, Context, Result};
use ensembles::lgbm::Model;
use ensembles::stage_file::write_atomically;
use features::{Extractor, ExtractorState};
use std::path::{Path, PathBuf};

pub const FEATURES_FILE: &str = "features.json";
pub const MODELS_DIR: &str = "models";

fn model_path(run: &Path, fold: usize) -> PathBuf {
    run.join(MODELS_DIR).join(format!("fold_{fold}.txt"))
}

/// Writes `features.json`, one model file per fold (into `models/`, which exists) and, for a
/// run with semantic features, `encoder.json`.
pub fn write(
    run: &Path,
    extractor: &Extractor,
    models: &[String],
    encoder: Option<&EncoderRecord>,
) -> Result<()> {
    let text = serde_json::to_string(&extractor.state())?;
    write_atomically(&run.join(FEATURES_FILE), text.as_bytes())?;
    let encoder_file = run.join(semantic::RECORD_FILE);
    match encoder {
        Some(record) => write_atomically(
            &encoder_file,
            serde_json::to_string_pretty(record)?.as_bytes(),
        )?,
        None if encoder_file.exists() => std::fs::remove_file(&encoder_file)
            .with_context(|| format!("cannot remove the earlier {}", encoder_file.display()))?,
        None => {}
    }
    for (fold, model) in models.iter().enumerate() {
        write_atomically(&model_path(run, fold), model.as_bytes())?;
    }
    // Model files of an earlier run with more folds would be read as this run's.
    for fold in models.len().. {
        let stale = model_path(run, fold);
        if !stale.exists() {
            break;
        }
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove the earlier {}", stale.display()))?;
    }
    Ok(())
}

/// A saved run, ready to predict: its extractor and its fold models, checked against each
/// other (every model has the extractor's columns) and against the folds `metrics.json`
/// records.
pub struct SavedRun {
    pub extractor: Extractor,
    pub models: Vec<Model>,
    /// The sentence encoder of a run with semantic features.
    pub encoder: Option<EncoderRecord>,
}

impl SavedRun {
    pub fn read(run: &Path) -> Result<SavedRun> {
        if !run.is_dir() {
            bail!("{}: no such run folder", run.display());
        }
        let path = run.join(FEATURES_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: the run folder lacks the fitted feature state that \
                 `ensemble cv` saves (runs made before it did must be rerun)",
                path.display()
            )
        })?;
        let state: ExtractorState = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a saved feature state", path.display()))?;
        let extractor = Extractor::restore(state).with_context(|| path.display().to_string())?;
        let n_columns = extractor.feature_names().len();

        let expected_folds = recorded_folds(run)?;
        let mut models = Vec::new();
        loop {
            let path = model_path(run, models.len());
            if !path.exists() {
                break;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let model = Model::from_string(&text)
                .with_context(|| format!("{}: not a LightGBM model", path.display()))?;
            let n_features = model.n_features()?;
            if n_features != n_columns {
                bail!(
                    "{}: the model has {n_features} features but {} describes {n_columns}",
                    path.display(),
                    FEATURES_FILE
                );
            }
            models.push(model);
        }
        if models.len() != expected_folds {
            bail!(
                "{}: metrics.json records {expected_folds} folds but {} has {} model files \
                 (fold_0.txt, fold_1.txt, ...)",
                run.display(),
                MODELS_DIR,
                models.len()
            );
        }
        let encoder = semantic::read_record(run)?;
        if encoder.is_some() != extractor.config().semantic {
            bail!(
                "{}: {} says the run {} semantic features, but {} is {}",
                run.display(),
                FEATURES_FILE,
                if extractor.config().semantic {
                    "has"
                } else {
                    "has no"
                },
                semantic::RECORD_FILE,
                if encoder.is_some() {
                    "there"
                } else {
                    "missing"
                }
            );
        }
        Ok(SavedRun {
            extractor,
            models,
            encoder,
        })
    }
}

/// The number of folds the run's `metrics.json` reports.
fn recorded_folds(run: &Path) -> Result<usize> {
    let path = run.join("metrics.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let metrics: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    match metrics.get("folds").and_then(|f| f.as_array()) {
        Some(folds) if !folds.is_empty() => Ok(folds.len()),
        _ => bail!(
            "{}: no `folds` list (not a feature-model run)",
            path.display()
        ),
    }
}
