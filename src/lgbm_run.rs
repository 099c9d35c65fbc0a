//! What a feature-model run folder keeps: the fitted feature state (`features.json`), the fold
//! models (`models/fold_K.txt`, plus `fold_K.seedS.txt` for the further seeds of `--seeds`)
//! and the report (`metrics.json`). `cv` writes them, `predict`, `compare` and `blend` read
//! them back; all go through here, with the glue from feature tables to LightGBM's input.
use crate::config::LgbmRunConfig;
use crate::data::TextIssues;
use crate::report;
use crate::semantic::{self, EncoderRecord};
use anyhow::{bail, Context, Result};
use ensemble_core::folds::SharedPrompts;
use ensemble_core::stage_file::{self, write_atomically};
use ensemble_core::{metrics, Outcome};
use ensembles::cv::FoldReport;
use ensembles::lgbm::{CsrView, Model};
use features::{CsrMatrix, Extractor, ExtractorState, FeatureTable, Orientation};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const FEATURES_FILE: &str = "features.json";
pub const MODELS_DIR: &str = "models";

/// Fold `fold`'s model with seed `seed + offset`.
fn model_path(run: &Path, fold: usize, offset: usize) -> PathBuf {
    let name = match offset {
        0 => format!("fold_{fold}.txt"),
        _ => format!("fold_{fold}.seed{offset}.txt"),
    };
    run.join(MODELS_DIR).join(name)
}

/// Writes `features.json`, the model files of every fold and seed (into `models/`, which
/// exists) and, for a run with semantic features, `encoder.json`, into a new run folder (so
/// no model file of an earlier run with more folds or seeds is there to be read as this
/// run's).
pub fn write(
    run: &Path,
    extractor: &Extractor,
    models: &[Vec<String>],
    encoder: Option<&EncoderRecord>,
) -> Result<()> {
    let text = serde_json::to_string(&extractor.state())?;
    write_atomically(&run.join(FEATURES_FILE), text.as_bytes())?;
    if let Some(record) = encoder {
        write_atomically(
            &run.join(semantic::RECORD_FILE),
            serde_json::to_string_pretty(record)?.as_bytes(),
        )?;
    }
    for (fold, seeds) in models.iter().enumerate() {
        for (offset, model) in seeds.iter().enumerate() {
            write_atomically(&model_path(run, fold, offset), model.as_bytes())?;
        }
    }
    Ok(())
}

/// A saved run, ready to predict: its extractor and its fold models, checked against each
/// other (every model has the extractor's columns) and against the folds and seeds
/// `metrics.json` records.
pub struct SavedRun {
    pub extractor: Extractor,
    /// Every fold's models, all seeds, fold by fold.
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

        let recorded = recorded_scores(run)?;
        let (n_folds, seeds) = (recorded.folds.len(), recorded.config.lgbm.seeds);
        let mut models = Vec::new();
        for fold in 0..n_folds {
            for offset in 0..seeds {
                let path = model_path(run, fold, offset);
                if !path.exists() {
                    bail!(
                        "{}: metrics.json records {n_folds} folds with {seeds} model(s) each \
                         (one per seed), but {} is missing",
                        run.display(),
                        path.display()
                    );
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

/// What a run's `metrics.json` reports about its folds and score.
#[derive(serde::Deserialize)]
pub struct RecordedScores {
    pub oof_log_loss: f64,
    pub folds: Vec<RecordedFold>,
    config: RecordedConfig,
}

/// The part of a fold report (`ensembles::cv::FoldReport`) read back.
#[derive(serde::Deserialize)]
pub struct RecordedFold {
    pub log_loss: f64,
    /// Rows the fold's models trained on, and rows they were scored on.
    pub train_rows: usize,
    pub held_out_rows: usize,
}

#[derive(serde::Deserialize)]
struct RecordedConfig {
    lgbm: RecordedBooster,
}

#[derive(serde::Deserialize)]
struct RecordedBooster {
    /// Runs made before `--seeds` existed have one model per fold.
    #[serde(default = "one")]
    seeds: usize,
}

fn one() -> usize {
    1
}

impl RecordedScores {
    pub fn fold_losses(&self) -> Vec<f64> {
        self.folds.iter().map(|f| f.log_loss).collect()
    }

    /// Held-out rows over training rows, summed over the folds: the `n_test/n_train` of the
    /// corrected standard error (`ensemble_core::metrics::PairedDifference`).
    pub fn test_train_ratio(&self) -> f64 {
        let sum = |rows: fn(&RecordedFold) -> usize| -> f64 {
            self.folds.iter().map(|f| rows(f) as f64).sum()
        };
        sum(|f| f.held_out_rows) / sum(|f| f.train_rows)
    }
}

/// Reads a run's `metrics.json`: its OOF log loss and a report per fold.
pub fn recorded_scores(run: &Path) -> Result<RecordedScores> {
    let path = run.join("metrics.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let scores: RecordedScores = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: no OOF log loss and fold reports (not a feature-model run)",
            path.display()
        )
    })?;
    if scores.folds.is_empty() {
        bail!("{}: the `folds` list is empty", path.display());
    }
    Ok(scores)
}

/// Everything `metrics.json` records about a `cv` run (read back by [`recorded_scores`]).
#[derive(Serialize)]
pub struct RunSummary {
    pub train: PathBuf,
    /// None for an OOF-only run (no --test).
    pub test: Option<PathBuf>,
    pub train_rows: usize,
    pub test_rows: usize,
    pub features: usize,
    pub folds: Vec<FoldReport>,
    pub oof_log_loss: f64,
    pub oof_accuracy: f64,
    pub prior_log_loss: f64,
    pub seconds: Timings,
    /// With every `auto` setting replaced by the value chosen for these rows.
    pub config: LgbmRunConfig,
    /// The `[lgbm]` keys that were `auto`.
    pub auto_keys: Vec<&'static str>,
    /// Prompts that appear in more than one fold (0 with --group-by prompt).
    pub prompts_across_folds: SharedPrompts,
    /// The sentence encoder and what embedding cost, with --encoder.
    pub encoder: Option<semantic::EncoderRecord>,
    pub embedding: Option<serde_json::Value>,
    pub train_text_issues: TextIssues,
    pub test_text_issues: TextIssues,
}

#[derive(Serialize, Default)]
pub struct Timings {
    pub read: f64,
    pub features: f64,
    pub cv: f64,
    /// The parts of `cv`.
    pub cv_stages: ensembles::cv::CvTimings,
    pub total: f64,
}

/// The log loss of predicting the class rates for every row.
pub fn prior_log_loss(labels: &[Outcome]) -> f64 {
    let prior = metrics::class_prior(labels);
    metrics::log_loss(labels, &vec![prior; labels.len()])
}

/// Writes a run report (`metrics.json`, `tune.json`, `predict.json`) atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(stage_file::write_atomically(path, text.as_bytes())?)
}

/// The training rows as given, then the same rows with A and B exchanged.
pub fn augmented(table: &FeatureTable, train_rows: &[usize]) -> CsrMatrix {
    CsrMatrix::vstack(&[
        table.csr(train_rows, Orientation::AsGiven),
        table.csr(train_rows, Orientation::Swapped),
    ])
}

/// A matrix as LightGBM's CSR input borrows it.
pub fn view(csr: &CsrMatrix) -> CsrView<'_> {
    CsrView {
        indptr: &csr.indptr,
        indices: &csr.indices,
        values: &csr.values,
        n_cols: csr.n_cols,
    }
}

/// Boosting rounds of a fold's models, one per seed: `53` or `53/61/48`.
pub fn rounds(best_iterations: &[usize]) -> String {
    let rounds: Vec<String> = best_iterations.iter().map(usize::to_string).collect();
    rounds.join("/")
}

impl RunSummary {
    /// The per-fold table `cv` prints.
    pub fn table(&self) -> String {
        let summary = self;
        let mut rows = vec![vec![
            "fold".to_owned(),
            "train".into(),
            "held out".into(),
            "rounds".into(),
            "log loss".into(),
            "accuracy".into(),
            "seconds".into(),
        ]];
        for f in &summary.folds {
            rows.push(vec![
                f.fold.to_string(),
                f.train_rows.to_string(),
                f.held_out_rows.to_string(),
                rounds(&f.best_iterations),
                format!("{:.4}", f.log_loss),
                format!("{:.3}", f.accuracy),
                format!("{:.1}", f.seconds),
            ]);
        }
        rows.push(vec![
            "OOF".into(),
            String::new(),
            summary.train_rows.to_string(),
            String::new(),
            format!("{:.4}", summary.oof_log_loss),
            format!("{:.3}", summary.oof_accuracy),
            format!("{:.1}", summary.seconds.cv),
        ]);
        rows.push(vec![
            "prior".into(),
            String::new(),
            String::new(),
            String::new(),
            format!("{:.4}", summary.prior_log_loss),
            String::new(),
            String::new(),
        ]);
        report::text_table(&rows)
    }
}
