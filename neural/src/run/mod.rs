//! The fold-run protocol both members run under `ensemble transformer`: each fold trains (or,
//! with `predict_only`, predicts with what it kept) and writes `OUT/fold-K/` (held-out and
//! test logits, `fold.json`), so that folds can run on separate machines (`--fold K`, or a
//! scheduler's array index); the merge (after every fold, or alone) checks that the folds
//! agree and assembles `oof.csv`, `oof_logits.csv`, `submission.csv`, `test_logits.csv` and
//! `metrics.json`. A member says where its models come from and what a fold keeps
//! ([`Member`]); everything else is here.
mod files;
mod merge;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ensemble_core::{Folds, Outcome, StoppingRows};

pub use files::{fold_dir, recorded_config, BaseModel, FoldSeconds, FoldSummary};

use crate::config::MemberConfig;
use crate::train::{fit_fold, predict_logits, FoldModel, FoldResult};
use crate::{on_compute_thread, EncodedPair, Error, Precision, ResponsePair, Result};

/// A neural member as the protocol drives it: where each fold's model comes from, what a fold
/// keeps to predict again later, and how battles are tokenized.
pub trait Member {
    type Config: MemberConfig;
    type Model: FoldModel;

    /// The settings of this run.
    fn config(&self) -> &Self::Config;
    /// Battles tokenized in both answer orders by `model`'s tokenizer.
    fn encode(model: &Self::Model, pairs: &[ResponsePair]) -> Result<Vec<EncodedPair>>;
    /// The model that trains fold `fold`.
    fn for_training(&mut self, fold: usize) -> Result<Self::Model>;
    /// The folder in which a fold keeps what predicts (in `fold_dir`), and what to do when it
    /// is missing.
    fn saved(&self, fold_dir: &Path) -> (PathBuf, &'static str);
    /// The model fold `fold` kept in `saved`; `recorded` is the base its fold.json names.
    fn for_prediction(
        &mut self,
        fold: usize,
        saved: &Path,
        recorded: Option<&BaseModel>,
    ) -> Result<Self::Model>;
    /// Keeps what predicts again later in `fold_dir` (the member's `saved` folder), if it
    /// keeps anything.
    fn save(&self, model: &Self::Model, fold_dir: &Path) -> Result<()>;
    /// What fold.json records of the base the folds train on (a member that trains adapters).
    fn base(&self) -> Option<&BaseModel>;
    /// Takes a fold's model back, for a member that serves the next fold from it.
    fn give_back(&mut self, model: Self::Model);
}

/// `--fold`: one fold by number, or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldChoice {
    All,
    One(usize),
}

impl std::str::FromStr for FoldChoice {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "all" => Ok(Self::All),
            number => number
                .parse()
                .map(Self::One)
                .map_err(|_| format!("{text:?}: expected a fold number (0-based) or `all`")),
        }
    }
}

/// The training keys a run's flags may set over the config file.
#[derive(Clone, Debug, Default)]
pub struct TrainingOverrides {
    pub max_len: Option<usize>,
    pub epochs: Option<usize>,
    pub early_stopping_on: Option<StoppingRows>,
    pub precision: Option<Precision>,
    pub gradient_checkpointing: bool,
}

impl TrainingOverrides {
    fn any(&self) -> bool {
        self.max_len.is_some()
            || self.epochs.is_some()
            || self.early_stopping_on.is_some()
            || self.precision.is_some()
            || self.gradient_checkpointing
    }
}

/// Where a run's settings come from: a config file and the flags, over the member's
/// defaults.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    pub overrides: TrainingOverrides,
}

impl ConfigSources {
    /// Whether this run was given a training config: a file or a flag that sets a key.
    pub fn given(&self) -> bool {
        self.file.is_some() || self.overrides.any()
    }

    /// The training config: the flags over the config file, or over `recorded` (the config
    /// the folds were trained with, for `--merge` and `--predict-only`), or over the member's
    /// defaults; so that a notebook that only predicts need not restate it, and can change
    /// what it may change (`--precision`).
    pub fn resolve<C: MemberConfig>(&self, recorded: Option<serde_json::Value>) -> Result<C> {
        let mut config = match (&self.file, recorded) {
            (Some(path), _) => C::from_toml_file(path)?,
            (None, Some(recorded)) => C::from_value(recorded).map_err(|message| {
                Error::Invalid(format!("the folds' recorded training config: {message}"))
            })?,
            (None, None) => C::default(),
        };
        let overrides = &self.overrides;
        let training = config.training_mut();
        training.max_len = overrides.max_len.unwrap_or(training.max_len);
        training.epochs = overrides.epochs.unwrap_or(training.epochs);
        training.early_stopping_on = overrides
            .early_stopping_on
            .unwrap_or(training.early_stopping_on);
        training.precision = overrides.precision.unwrap_or(training.precision);
        training.gradient_checkpointing |= overrides.gradient_checkpointing;
        // A refused value is named with where it came from, when the message starts with its
        // key (as every check's does).
        config.validate().map_err(|message| {
            let first = message.split_whitespace().next().unwrap_or_default();
            let key = first.trim_end_matches([':', ',']);
            let known = serde_json::to_value(&config)
                .ok()
                .and_then(|json| key.split('.').try_fold(json, |v, k| v.get(k).cloned()))
                .is_some();
            match known {
                true => Error::Invalid(format!(
                    "{message} ({})",
                    self.source_of(C::DEFAULTS_FILE, key)
                )),
                false => Error::Invalid(message),
            }
        })?;
        Ok(config)
    }

    /// Where the setting `key` (dotted for a key of a table: `segments.prompt_share`) came
    /// from, for errors that name it: its flag, the config file when it sets the key, else
    /// the default, which `defaults` (the member's file) states.
    pub fn source_of(&self, defaults: &str, key: &str) -> String {
        let o = &self.overrides;
        let flag = match key {
            "max_len" => o.max_len.map(|_| "--max-len"),
            "epochs" => o.epochs.map(|_| "--epochs"),
            "early_stopping_on" => o.early_stopping_on.map(|_| "--early-stopping-on"),
            "precision" => o.precision.map(|_| "--precision"),
            "gradient_checkpointing" => o
                .gradient_checkpointing
                .then_some("--gradient-checkpointing"),
            _ => None,
        };
        if let Some(flag) = flag {
            return format!("set by {flag}");
        }
        let sets_key = |path: &Path| {
            let Some(table) = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
            else {
                return false;
            };
            let mut value = &toml::Value::Table(table);
            for part in key.split('.') {
                match value.get(part) {
                    Some(inner) => value = inner,
                    None => return false,
                }
            }
            true
        };
        match self.file.as_deref() {
            Some(path) if sets_key(path) => format!("set in {}", path.display()),
            Some(path) => format!("the default: {} does not set it", path.display()),
            None => format!("the default of {defaults}: no --config given"),
        }
    }
}

/// What a run does and where: the flags of `ensemble transformer` that are not settings.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// The model folder given (recorded in metrics.json).
    pub model: Option<PathBuf>,
    /// The training and test files (recorded in metrics.json, named in errors).
    pub train_file: PathBuf,
    pub test_file: PathBuf,
    /// The device as given (recorded in metrics.json).
    pub device: String,
    /// An `id,fold` file; else the run's own folds.csv when reused, else `folds` stratified
    /// folds.
    pub folds_file: Option<PathBuf>,
    pub folds: usize,
    /// New folds keep the battles of a prompt together (stratified group k-fold), so that
    /// adapters that memorise prompts do not flatter the OOF score.
    pub group_by_prompt: bool,
    pub fold: Option<FoldChoice>,
    /// Only merge the folds already in `out`.
    pub merge: bool,
    /// Predict the test rows with what each fold kept, then merge.
    pub predict_only: bool,
    pub config: ConfigSources,
}

/// The battles of a run's training file.
pub struct TrainingRows {
    pub ids: Vec<String>,
    pub labels: Vec<Outcome>,
    pub pairs: Vec<ResponsePair>,
}

/// The battles of a run's test file, in file order.
pub struct TestRows {
    pub ids: Vec<String>,
    pub pairs: Vec<ResponsePair>,
}

/// Runs the folds this process is to run (all, one, or none with `merge`), then merges once
/// all are there.
pub fn run<M: Member + Send>(
    member: &mut M,
    options: &RunOptions,
    train: TrainingRows,
    test: TestRows,
) -> Result<()> {
    let seed = member.config().training().seed;
    let own_folds = options.out.join("folds.csv");
    // Steps that reuse a run's folds read them from that run when not given them.
    let reuses_run = options.merge || options.predict_only;
    // Prompts are compared as joined text, turn by turn.
    let prompts: Vec<&str> = train.pairs.iter().map(|p| p.prompt.as_str()).collect();
    // The run folder's own folds.csv is (re)written once a fold has trained, so that a run
    // that fails early (a bad model folder) leaves no folds.csv that looks like a run's.
    let (folds, write_own_folds) = match &options.folds_file {
        Some(path) => (Folds::read(path, &train.ids)?, true),
        None if reuses_run && own_folds.is_file() => (Folds::read(&own_folds, &train.ids)?, false),
        None if options.group_by_prompt => {
            let folds = Folds::stratified_grouped(&train.labels, &prompts, options.folds, seed)?;
            (folds, true)
        }
        None => (Folds::stratified(&train.labels, options.folds, seed)?, true),
    };
    if !options.merge {
        if let Some(warning) = folds.prompts_across_folds(&prompts).warning() {
            eprintln!("{warning}");
        }
    }
    let one_fold = if options.merge {
        None
    } else {
        one_fold(options.fold, folds.n_folds(), |name| {
            std::env::var(name).ok()
        })?
    };
    let to_run: Vec<usize> = match one_fold {
        Some(k) => vec![k],
        None if options.merge => Vec::new(),
        None => (0..folds.n_folds()).collect(),
    };
    if !to_run.is_empty() {
        let mut battles = Battles {
            train: match options.predict_only {
                true => Vec::new(),
                false => train.pairs,
            },
            test: test.pairs,
            encoded: None,
        };
        let data = RunData {
            ids: &train.ids,
            labels: &train.labels,
            test_ids: &test.ids,
        };
        let run_folds = || -> Result<()> {
            for fold in to_run {
                match options.predict_only {
                    true => predict_fold(member, options, fold, &data, &mut battles)?,
                    false => run_fold(member, options, &folds, fold, &data, &mut battles)?,
                }
            }
            Ok(())
        };
        // On the CPU, on a rayon pool thread, where candle's matmuls start in place.
        on_compute_thread(&options.device, run_folds)?;
    }
    if write_own_folds {
        std::fs::create_dir_all(&options.out).map_err(Error::io(&options.out))?;
        folds.write(&own_folds, &train.ids)?;
    }
    if one_fold.is_none() {
        merge::merge(
            options,
            member.config(),
            &folds,
            (&train.ids, &train.labels),
            &test.ids,
        )?;
    }
    Ok(())
}

/// The environment variables through which schedulers hand each task of an array its index,
/// in the order they are read: a Slurm job array, a Kubernetes Indexed Job.
pub const SCHEDULER_INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// The one fold this process trains (or predicts): `--fold K`, else the index a scheduler gave
/// this array task, else none (every fold, then the merge). `--fold all` ignores the index.
fn one_fold(
    flag: Option<FoldChoice>,
    n_folds: usize,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<usize>> {
    let (fold, source) = match flag {
        Some(FoldChoice::All) => return Ok(None),
        Some(FoldChoice::One(k)) => (k, format!("--fold {k}")),
        None => {
            let Some((name, value)) = SCHEDULER_INDEX_VARS
                .iter()
                .find_map(|name| env(name).map(|value| (*name, value)))
            else {
                return Ok(None);
            };
            let fold = value.trim().parse::<usize>().map_err(|_| {
                Error::Invalid(format!(
                    "{name}={value:?}: not a fold number; pass --fold K (or --fold all) to \
                     choose the folds yourself"
                ))
            })?;
            eprintln!("fold {fold}: from {name}; run --merge once every fold is done");
            (fold, format!("{name}={fold}"))
        }
    };
    if fold >= n_folds {
        return Err(Error::Invalid(format!(
            "{source}: the run has folds 0..{} (0-based: a Slurm array is --array=0-{})",
            n_folds - 1,
            n_folds - 1
        )));
    }
    Ok(Some(fold))
}

/// The training ids and labels and the test ids, in file order.
struct RunData<'a> {
    ids: &'a [String],
    labels: &'a [Outcome],
    test_ids: &'a [String],
}

/// The training and test battles as text, and tokenized once for all folds: every fold's
/// model comes from the same folder (or a copy of its tokenizer) with the same config, so
/// the first fold's tokenizer serves them all.
struct Battles {
    train: Vec<ResponsePair>,
    test: Vec<ResponsePair>,
    encoded: Option<(Vec<EncodedPair>, Vec<EncodedPair>)>,
}

impl Battles {
    /// (training, test) battles tokenized, by `model` on first use.
    fn encoded<M: Member>(
        &mut self,
        model: &M::Model,
    ) -> Result<&(Vec<EncodedPair>, Vec<EncodedPair>)> {
        let encoded = match self.encoded.take() {
            Some(encoded) => encoded,
            None => (
                M::encode(model, &self.train)?,
                M::encode(model, &self.test)?,
            ),
        };
        Ok(self.encoded.insert(encoded))
    }
}

fn run_fold<M: Member>(
    member: &mut M,
    options: &RunOptions,
    folds: &Folds,
    fold: usize,
    data: &RunData,
    battles: &mut Battles,
) -> Result<()> {
    let started = Instant::now();
    let training = member.config().training().clone();
    let mut model = member.for_training(fold)?;
    let load = started.elapsed().as_secs_f64();
    let rows = folds.rows_for(fold, training.early_stopping_on)?;
    let (train_rows, held_out) = (&rows.train, &rows.held_out);
    let labels = |rows: &[usize]| rows.iter().map(|&r| data.labels[r]).collect::<Vec<_>>();
    let tokenizing = Instant::now();
    let (train_all, test_encoded) = battles.encoded::<M>(&model)?;
    // References into the rows tokenized once for all folds: nothing is copied per fold.
    let pick =
        |rows: &[usize]| -> Vec<&EncodedPair> { rows.iter().map(|&r| &train_all[r]).collect() };
    let (train_encoded, stopping_encoded) = (pick(train_rows), pick(&rows.stopping));
    let tokenize = tokenizing.elapsed().as_secs_f64();
    eprintln!(
        "fold {fold}: training on {} rows, picking the checkpoint on {} rows of fold {}",
        train_rows.len(),
        rows.stopping.len(),
        rows.stopping_fold
    );
    let result: FoldResult = fit_fold(
        &mut model,
        &train_encoded,
        &labels(train_rows),
        &stopping_encoded,
        &labels(&rows.stopping),
        fold,
    )
    .map_err(|e| {
        e.with_setting_sources(|key| options.config.source_of(M::Config::DEFAULTS_FILE, key))
    })?;
    let batch = training.prediction_tokens();
    // The held-out fold is predicted only now, by the checkpoint the other fold picked
    // (with `held-out` stopping, the fold was the one watched and is predicted already).
    let held_out_logits = if rows.stopping_fold == fold {
        result.valid_logits.clone()
    } else {
        predict_logits(&model, &pick(held_out), batch)?
    };
    let predicting = Instant::now();
    let test_logits = predict_logits(&model, test_encoded, batch)?;
    let predict_test = predicting.elapsed().as_secs_f64();
    eprintln!(
        "fold {fold}: log loss {:.4} on the watched fold {}",
        result.best_log_loss, rows.stopping_fold
    );

    let dir = fold_dir(&options.out, fold);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let held_out_ids: Vec<&String> = held_out.iter().map(|&r| &data.ids[r]).collect();
    files::write_logits(
        &dir.join("held_out_logits.csv"),
        &held_out_ids,
        &held_out_logits,
    )?;
    files::write_logits(
        &dir.join("test_logits.csv"),
        &data.test_ids.iter().collect::<Vec<_>>(),
        &test_logits,
    )?;
    let summary = FoldSummary {
        fold,
        train_rows: train_rows.len(),
        held_out_rows: held_out.len(),
        stopping_fold: rows.stopping_fold,
        best_log_loss: result.best_log_loss,
        best_step: result.best_step,
        steps: result.steps,
        history: to_json(&result.history)?,
        loss_scale: result.loss_scale.as_ref().map(to_json).transpose()?,
        skipped_steps: result.skipped_steps,
        seconds: FoldSeconds {
            load,
            tokenize,
            train: result.train_seconds,
            evaluate: result.eval_seconds,
            predict_test,
        },
        config: Some(to_json(member.config())?),
        base_model: member.base().cloned(),
    };
    member.save(&model, &dir)?;
    member.give_back(model);
    summary.write(&dir.join("fold.json"))
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::Invalid(e.to_string()))
}

/// Predicts the test rows with what fold K kept and rewrites `fold-K/test_logits.csv`.
fn predict_fold<M: Member>(
    member: &mut M,
    options: &RunOptions,
    fold: usize,
    data: &RunData,
    battles: &mut Battles,
) -> Result<()> {
    let dir = fold_dir(&options.out, fold);
    let (saved, advice) = member.saved(&dir);
    if !saved.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: no saved model for fold {fold}; {advice}",
            saved.display()
        )));
    }
    let summary = check_training_config(&dir.join("fold.json"), member.config())?;
    let started = Instant::now();
    let model = member.for_prediction(fold, &saved, summary.base_model.as_ref())?;
    let batch = member.config().training().prediction_tokens();
    let logits = predict_logits(&model, &battles.encoded::<M>(&model)?.1, batch)?;
    files::write_logits(
        &dir.join("test_logits.csv"),
        &data.test_ids.iter().collect::<Vec<_>>(),
        &logits,
    )?;
    member.give_back(model);
    eprintln!(
        "fold {fold}: predicted {} test rows in {:.1} s",
        logits.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The config keys that change what a trained model reads (each member has some of them).
/// The precision may differ: a bf16-trained run predicts in f16 or f32 on a GPU without bf16
/// (a T4), which moves the logits slightly (BENCHMARKS.md, "Prediction in another
/// precision").
const INFERENCE_KEYS: [&str; 5] = ["layout", "max_len", "segments", "template", "padding"];

/// Refuses to predict with a config that differs from the training config `fold_json`
/// recorded in a key that changes the predictions, naming the key and both values. Returns
/// the fold's summary.
fn check_training_config<C: MemberConfig>(fold_json: &Path, config: &C) -> Result<FoldSummary> {
    let summary = FoldSummary::read(fold_json)?.ok_or_else(|| {
        Error::Invalid(format!("cannot read {}: no such file", fold_json.display()))
    })?;
    let Some(trained) = &summary.config else {
        return Err(Error::Invalid(format!(
            "{}: records no training config (written by an older version); train again to \
             predict with --predict-only",
            fold_json.display()
        )));
    };
    if let Err(message) = C::from_value(trained.clone()) {
        return Err(Error::Invalid(format!(
            "{}: the fold was trained as another member than this run's (from --model or \
             --config): {message}",
            fold_json.display()
        )));
    }
    let asked = serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?;
    if trained["precision"] != asked["precision"] {
        eprintln!(
            "{}: trained in {}, predicting in {}: the logits move slightly",
            fold_json.display(),
            trained["precision"],
            asked["precision"]
        );
    }
    for key in INFERENCE_KEYS {
        if trained[key] != asked[key] {
            return Err(Error::Invalid(format!(
                "{}: the model was trained with {key} = {}, this run asks for {}; predict with \
                 the training config",
                fold_json.display(),
                trained[key],
                asked[key]
            )));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_fold_comes_from_the_flag_then_slurm_then_kubernetes() {
        let both = [("SLURM_ARRAY_TASK_ID", "2"), ("JOB_COMPLETION_INDEX", "1")];
        assert_eq!(one_fold(None, 5, env(&[])).unwrap(), None);
        assert_eq!(one_fold(None, 5, env(&both)).unwrap(), Some(2));
        assert_eq!(one_fold(None, 5, env(&both[1..])).unwrap(), Some(1));
        assert_eq!(
            one_fold(Some(FoldChoice::One(4)), 5, env(&both)).unwrap(),
            Some(4)
        );
        assert_eq!(
            one_fold(Some(FoldChoice::All), 5, env(&both)).unwrap(),
            None
        );
    }

    #[test]
    fn a_bad_array_index_is_named_with_its_variable() {
        let error = one_fold(None, 3, env(&[("SLURM_ARRAY_TASK_ID", "3")])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("SLURM_ARRAY_TASK_ID=3: the run has folds 0..2"),
            "{error}"
        );
        let error = one_fold(None, 3, env(&[("JOB_COMPLETION_INDEX", "x")])).unwrap_err();
        assert!(
            error.to_string().starts_with("JOB_COMPLETION_INDEX=\"x\""),
            "{error}"
        );
        let error = one_fold(Some(FoldChoice::One(7)), 3, env(&[])).unwrap_err();
        assert!(error.to_string().starts_with("--fold 7:"), "{error}");
    }
}
