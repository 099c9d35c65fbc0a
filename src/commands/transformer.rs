//! `ensemble transformer`: fine-tunes a DeBERTa model per fold and writes OOF and test
//! predictions that line up with the other members (same folds.csv).
//!
//! Each fold writes `OUT/fold-K/` (held-out and test logits, fold.json), so folds can run on
//! separate machines with `--fold K`; the merge step (after all folds, or `--merge`) assembles
//! `oof.csv`, `oof_logits.csv`, `submission.csv`, `test_logits.csv` and `metrics.json`.
//! With `--save-models`, `fold-K/model/` holds the fold's fine-tuned model, and a later
//! `--predict-only` run predicts a test file with those models instead of training.
use crate::cli::{FoldChoice, TransformerArgs};
use crate::data;
use anyhow::{bail, Context, Result};
use deberta::{
    fit_fold, parse_device, probs_from_logits, reuse_freed_host_memory, Classifier, Device,
    EncodedPair, FoldResult, ResponsePair, TransformerConfig,
};
use ensembles::folds::Folds;
use ensembles::predictions::Predictions;
use ensembles::stage_file::{self, StageFile};
use ensembles::{metrics, Outcome, Probs};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

const LOGIT_HEADER: [&str; 4] = ["id", "logit_a", "logit_b", "logit_tie"];

/// What a fold records in `fold-K/fold.json`.
#[derive(Serialize, Deserialize)]
struct FoldSummary {
    fold: usize,
    train_rows: usize,
    held_out_rows: usize,
    /// The fold whose rows picked the checkpoint (this fold itself with `held-out` stopping).
    #[serde(default)]
    stopping_fold: usize,
    /// The log loss of the picked checkpoint on those rows.
    best_log_loss: f64,
    best_step: usize,
    steps: usize,
    history: serde_json::Value,
    /// f16: the final dynamic loss scale and the steps skipped on overflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_scale: Option<serde_json::Value>,
    /// Optimizer steps skipped for non-finite gradients.
    #[serde(default)]
    skipped_steps: usize,
    seconds: FoldSeconds,
    /// The training config, which `--predict-only` checks its own against.
    #[serde(default)]
    config: Option<TransformerConfig>,
}

impl FoldSummary {
    /// Reads `fold-K/fold.json`: None where the fold has not written it (yet).
    fn read(path: &Path) -> Result<Option<FoldSummary>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let summary = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a fold summary", path.display()))?;
        Ok(Some(summary))
    }
}

#[derive(Serialize, Deserialize)]
struct FoldSeconds {
    load: f64,
    tokenize: f64,
    /// Fine-tuning, held-out evaluations included.
    train: f64,
    /// The held-out evaluations and checkpoints within `train`.
    evaluate: f64,
    predict_test: f64,
}

#[derive(Serialize)]
struct RunSummary {
    model: Option<PathBuf>,
    train: PathBuf,
    test: PathBuf,
    device: String,
    folds: Vec<FoldSummary>,
    oof_log_loss: f64,
    oof_accuracy: f64,
    config: TransformerConfig,
}

/// Whether this run was given a training config: a --config file or a flag that sets a key.
fn config_given(args: &TransformerArgs) -> bool {
    args.config.is_some()
        || args.max_len.is_some()
        || args.epochs.is_some()
        || args.early_stopping_on.is_some()
        || args.precision.is_some()
        || args.gradient_checkpointing
}

/// The training config: --config and the flags over the defaults. A --merge or --predict-only
/// run given none takes the one its folds were trained with (the lowest fold's fold.json), so
/// that a notebook that only predicts need not restate it.
fn resolve_config(args: &TransformerArgs) -> Result<TransformerConfig> {
    if (args.merge || args.predict_only) && !config_given(args) {
        if let Some(recorded) = recorded_config(&args.out)? {
            return Ok(recorded);
        }
    }
    let mut config = match &args.config {
        Some(path) => TransformerConfig::from_toml_file(path)?,
        None => TransformerConfig::default(),
    };
    config.max_len = args.max_len.unwrap_or(config.max_len);
    config.epochs = args.epochs.unwrap_or(config.epochs);
    config.early_stopping_on = args.early_stopping_on.unwrap_or(config.early_stopping_on);
    config.precision = args.precision.unwrap_or(config.precision);
    config.gradient_checkpointing |= args.gradient_checkpointing;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Where the training setting `key` came from, for errors that name it: the --config file
/// when it sets the key, else the default, which configs/deberta.toml states.
fn setting_source(config_file: Option<&Path>, key: &str) -> String {
    let sets_key = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .is_some_and(|table| table.contains_key(key))
    };
    match config_file {
        Some(path) if sets_key(path) => format!("set in {}", path.display()),
        Some(path) => format!("the default: {} does not set it", path.display()),
        None => "the default of configs/deberta.toml: no --config given".into(),
    }
}

/// Multi-turn fields joined turn by turn, one text per segment.
fn response_pairs(battles: &[features::Battle]) -> Vec<ResponsePair> {
    battles
        .iter()
        .map(|b| ResponsePair {
            prompt: b.prompt.join("\n"),
            response_a: b.response_a.join("\n"),
            response_b: b.response_b.join("\n"),
        })
        .collect()
}

pub fn run(args: TransformerArgs) -> Result<()> {
    reuse_freed_host_memory();
    let config = resolve_config(&args)?;
    let train = data::read_train(&args.train)?;
    let test = data::read_test(&args.test)?;
    let ids = &train.battles.ids;
    let own_folds = args.out.join("folds.csv");
    // Steps that reuse a run's folds read them from that run when not given them.
    let reuses_run = args.merge || args.predict_only;
    // The run folder's own folds.csv is (re)written once a fold has trained, so that a run
    // that fails early (a bad model folder) leaves no folds.csv that looks like a run's.
    let (folds, write_own_folds) = match &args.folds_file {
        Some(path) => (Folds::read(path, ids)?, true),
        None if reuses_run && own_folds.is_file() => (Folds::read(&own_folds, ids)?, false),
        None => (
            Folds::stratified(&train.labels, args.folds, config.seed)?,
            true,
        ),
    };
    let one_fold = if args.merge {
        None
    } else {
        one_fold(args.fold, folds.n_folds(), |name| std::env::var(name).ok())?
    };
    let to_run: Vec<usize> = match one_fold {
        Some(k) => vec![k],
        None if args.merge => Vec::new(),
        None => (0..folds.n_folds()).collect(),
    };
    if !to_run.is_empty() {
        let device = parse_device(&args.device)?;
        let mut battles = Battles {
            train: if args.predict_only {
                Vec::new()
            } else {
                response_pairs(&train.battles.battles)
            },
            test: response_pairs(&test.battles),
            encoded: None,
        };
        for fold in to_run {
            if args.predict_only {
                predict_fold(&args, &config, &device, fold, &test, &mut battles)?;
                continue;
            }
            run_fold(
                &args,
                &config,
                &device,
                &folds,
                fold,
                &train,
                &test,
                &mut battles,
            )?;
        }
    }
    if write_own_folds {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        folds.write(&own_folds, ids)?;
    }
    if one_fold.is_none() {
        merge(&args, &config, &folds, &train, &test.ids)?;
    }
    Ok(())
}

/// The environment variables through which schedulers hand each task of an array its index,
/// in the order they are read: a Slurm job array, a Kubernetes Indexed Job.
const SCHEDULER_INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

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
                anyhow::anyhow!(
                    "{name}={value:?}: not a fold number; pass --fold K (or --fold all) to \
                     choose the folds yourself"
                )
            })?;
            eprintln!("fold {fold}: from {name}; run --merge once every fold is done");
            (fold, format!("{name}={fold}"))
        }
    };
    if fold >= n_folds {
        bail!(
            "{source}: the run has folds 0..{} (0-based: a Slurm array is --array=0-{})",
            n_folds - 1,
            n_folds - 1
        );
    }
    Ok(Some(fold))
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
    /// (training, test) battles tokenized, by `classifier` on first use.
    fn encoded(
        &mut self,
        classifier: &Classifier,
    ) -> Result<&(Vec<EncodedPair>, Vec<EncodedPair>)> {
        if self.encoded.is_none() {
            self.encoded = Some((
                classifier.encode(&self.train)?,
                classifier.encode(&self.test)?,
            ));
        }
        Ok(self.encoded.as_ref().expect("just set"))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_fold(
    args: &TransformerArgs,
    config: &TransformerConfig,
    device: &Device,
    folds: &Folds,
    fold: usize,
    train: &data::TrainSet,
    test: &data::Battles,
    battles: &mut Battles,
) -> Result<()> {
    let started = Instant::now();
    let model = args
        .model
        .as_deref()
        .context("--model is needed to train")?;
    let mut classifier = Classifier::load(model, device, config)?;
    let load = started.elapsed().as_secs_f64();
    let rows = folds.rows_for(fold, config.early_stopping_on)?;
    let (train_rows, held_out) = (&rows.train, &rows.held_out);
    let labels = |rows: &[usize]| {
        rows.iter()
            .map(|&r| train.labels[r])
            .collect::<Vec<Outcome>>()
    };
    let tokenizing = Instant::now();
    let (train_all, test_encoded) = battles.encoded(&classifier)?;
    let pick = |rows: &[usize]| -> Vec<EncodedPair> {
        rows.iter().map(|&r| train_all[r].clone()).collect()
    };
    let (train_encoded, stopping_encoded) = (pick(train_rows), pick(&rows.stopping));
    let tokenize = tokenizing.elapsed().as_secs_f64();
    eprintln!(
        "fold {fold}: training on {} rows, picking the checkpoint on {} rows of fold {}",
        train_rows.len(),
        rows.stopping.len(),
        rows.stopping_fold
    );
    let result: FoldResult = fit_fold(
        &mut classifier,
        &train_encoded,
        &labels(train_rows),
        &stopping_encoded,
        &labels(&rows.stopping),
        fold,
    )
    .map_err(|e| e.with_setting_sources(|key| setting_source(args.config.as_deref(), key)))?;
    // The held-out fold is predicted only now, by the checkpoint the other fold picked
    // (with `held-out` stopping, the fold was the one watched and is predicted already).
    let held_out_logits = if rows.stopping_fold == fold {
        result.valid_logits.clone()
    } else {
        classifier.predict_logits(&pick(held_out))?
    };
    let predicting = Instant::now();
    let test_logits = classifier.predict_logits(test_encoded)?;
    let predict_test = predicting.elapsed().as_secs_f64();
    eprintln!(
        "fold {fold}: log loss {:.4} on the watched fold {}",
        result.best_log_loss, rows.stopping_fold
    );

    let dir = fold_dir(&args.out, fold);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let held_out_ids: Vec<&String> = held_out.iter().map(|&r| &train.battles.ids[r]).collect();
    write_logits(
        &dir.join("held_out_logits.csv"),
        &held_out_ids,
        &held_out_logits,
    )?;
    write_logits(
        &dir.join("test_logits.csv"),
        &test.ids.iter().collect::<Vec<_>>(),
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
        history: serde_json::to_value(&result.history)?,
        loss_scale: result
            .loss_scale
            .as_ref()
            .map(serde_json::to_value)
            .transpose()?,
        skipped_steps: result.skipped_steps,
        seconds: FoldSeconds {
            load,
            tokenize,
            train: result.train_seconds,
            evaluate: result.eval_seconds,
            predict_test,
        },
        config: Some(config.clone()),
    };
    if args.save_models {
        classifier.save_pretrained(&dir.join("model"))?;
    }
    let text = serde_json::to_string_pretty(&summary)?;
    Ok(stage_file::write_atomically(
        &dir.join("fold.json"),
        text.as_bytes(),
    )?)
}

/// Predicts the test rows with fold K's saved model and rewrites `fold-K/test_logits.csv`.
fn predict_fold(
    args: &TransformerArgs,
    config: &TransformerConfig,
    device: &Device,
    fold: usize,
    test: &data::Battles,
    battles: &mut Battles,
) -> Result<()> {
    let dir = fold_dir(&args.out, fold);
    let model_dir = dir.join("model");
    if !model_dir.is_dir() {
        bail!(
            "{}: no saved model for fold {fold}; train with --save-models first",
            model_dir.display()
        );
    }
    check_training_config(&dir.join("fold.json"), config)?;
    let started = Instant::now();
    let classifier = Classifier::load(&model_dir, device, config)?;
    let logits = classifier.predict_logits(&battles.encoded(&classifier)?.1)?;
    write_logits(
        &dir.join("test_logits.csv"),
        &test.ids.iter().collect::<Vec<_>>(),
        &logits,
    )?;
    eprintln!(
        "fold {fold}: predicted {} test rows in {:.1} s",
        logits.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The config keys that change what a trained model predicts.
const INFERENCE_KEYS: [&str; 4] = ["layout", "precision", "max_len", "segments"];

/// Refuses to predict with a config that differs from the training config `fold_json`
/// recorded in a key that changes the predictions, naming the key and both values.
fn check_training_config(fold_json: &Path, config: &TransformerConfig) -> Result<()> {
    let summary = FoldSummary::read(fold_json)?
        .with_context(|| format!("cannot read {}: no such file", fold_json.display()))?;
    let Some(trained) = summary.config else {
        bail!(
            "{}: records no training config (written by an older version); train again to \
             predict with --predict-only",
            fold_json.display()
        );
    };
    let (trained, asked) = (
        serde_json::to_value(trained)?,
        serde_json::to_value(config)?,
    );
    for key in INFERENCE_KEYS {
        if trained[key] != asked[key] {
            bail!(
                "{}: the model was trained with {key} = {}, this run asks for {}; predict with \
                 the training config",
                fold_json.display(),
                trained[key],
                asked[key]
            );
        }
    }
    Ok(())
}

fn fold_dir(out: &Path, fold: usize) -> PathBuf {
    out.join(format!("fold-{fold}"))
}

fn write_logits(path: &Path, ids: &[&String], logits: &[[f32; 3]]) -> Result<()> {
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

fn read_logits(path: &Path) -> Result<Vec<(String, [f32; 3])>> {
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

/// The training config recorded by the lowest-numbered fold in `out`, if any fold is there.
fn recorded_config(out: &Path) -> Result<Option<TransformerConfig>> {
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

/// Every fold's `fold.json`, once all are there and were trained with one config: `config`
/// where given (this run trains, or was given a config), else the first fold's. Otherwise one
/// error names every fold that is missing and every key a fold was trained with otherwise, so
/// that a merge never mixes folds of different runs.
fn fold_summaries(
    out: &Path,
    n_folds: usize,
    config: Option<&TransformerConfig>,
) -> Result<Vec<FoldSummary>> {
    let mut reference = match config {
        Some(config) => Some(("this run".to_owned(), serde_json::to_value(config)?)),
        None => None,
    };
    let (mut summaries, mut missing, mut mismatched) = (Vec::new(), Vec::new(), Vec::new());
    for fold in 0..n_folds {
        let path = fold_dir(out, fold).join("fold.json");
        let Some(summary) = FoldSummary::read(&path)? else {
            missing.push(fold.to_string());
            continue;
        };
        match &summary.config {
            None => mismatched.push(format!("fold {fold} records no training config")),
            Some(trained) => {
                let trained = serde_json::to_value(trained)?;
                let (label, asked) =
                    reference.get_or_insert_with(|| (format!("fold {fold}"), trained.clone()));
                let keys = config_differences(&trained, asked, label);
                if !keys.is_empty() {
                    mismatched.push(format!("fold {fold} was trained with {}", keys.join(", ")));
                }
            }
        }
        summaries.push(summary);
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "fold{} {} not trained yet (no fold-K/fold.json in {}): run {} with --fold K",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            out.display(),
            if missing.len() == 1 { "it" } else { "each" },
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "{}; merge with the config and flags the folds were trained with",
            mismatched.join("; ")
        ));
    }
    if !problems.is_empty() {
        bail!("cannot merge {}: {}", out.display(), problems.join("; "));
    }
    Ok(summaries)
}

/// `key = trained value (LABEL: asked value)` for each config key that differs.
fn config_differences(
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

/// Assembles the fold outputs: OOF rows in training-file order, test probabilities averaged
/// over the folds in test-file order.
fn merge(
    args: &TransformerArgs,
    config: &TransformerConfig,
    folds: &Folds,
    train: &data::TrainSet,
    test_ids: &[String],
) -> Result<()> {
    let ids = &train.battles.ids;
    let position: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut oof: Vec<Option<[f32; 3]>> = vec![None; ids.len()];
    let mut test_sum = vec![[0f64; 3]; test_ids.len()];
    // Folds only predicted again are checked against each other: --predict-only has checked
    // the keys that change predictions against each fold already.
    let reference = (!args.predict_only && (config_given(args) || !args.merge)).then_some(config);
    let summaries = fold_summaries(&args.out, folds.n_folds(), reference)?;
    for fold in 0..folds.n_folds() {
        let dir = fold_dir(&args.out, fold);
        for (id, logits) in read_logits(&dir.join("held_out_logits.csv"))? {
            let row = *position.get(id.as_str()).with_context(|| {
                format!("fold {fold}: id {id} is not in {}", args.train.display())
            })?;
            if folds.fold_of(row) != fold {
                bail!(
                    "fold {fold}: id {id} belongs to fold {}",
                    folds.fold_of(row)
                );
            }
            oof[row] = Some(logits);
        }
        let test_logits = read_logits(&dir.join("test_logits.csv"))?;
        if test_logits.len() != test_ids.len()
            || test_logits.iter().zip(test_ids).any(|((a, _), b)| a != b)
        {
            bail!("fold {fold}: test_logits.csv does not list the test ids in file order");
        }
        for (sum, (_, logits)) in test_sum.iter_mut().zip(&test_logits) {
            let p = probs_from_logits(logits);
            (0..3).for_each(|c| sum[c] += p[c]);
        }
    }
    let oof: Vec<[f32; 3]> = oof
        .into_iter()
        .enumerate()
        .map(|(row, l)| l.with_context(|| format!("id {} has no held-out prediction", ids[row])))
        .collect::<Result<_>>()?;
    let oof_probs: Vec<Probs> = oof.iter().map(probs_from_logits).collect();
    let test_probs: Vec<Probs> = test_sum
        .iter()
        .map(|s| {
            let total = s[0] + s[1] + s[2];
            s.map(|p| p / total)
        })
        .collect();
    let test_logits: Vec<[f32; 3]> = test_probs
        .iter()
        .map(|p| p.map(|v| v.ln() as f32))
        .collect();
    let out = &args.out;
    Predictions::new(ids.clone(), oof_probs.clone()).write(&out.join("oof.csv"))?;
    write_logits(
        &out.join("oof_logits.csv"),
        &ids.iter().collect::<Vec<_>>(),
        &oof,
    )?;
    Predictions::new(test_ids.to_vec(), test_probs).write(&out.join("submission.csv"))?;
    write_logits(
        &out.join("test_logits.csv"),
        &test_ids.iter().collect::<Vec<_>>(),
        &test_logits,
    )?;
    let summary = RunSummary {
        model: args.model.clone(),
        train: args.train.clone(),
        test: args.test.clone(),
        device: args.device.clone(),
        oof_log_loss: metrics::log_loss(&train.labels, &oof_probs),
        oof_accuracy: metrics::accuracy(&train.labels, &oof_probs),
        folds: summaries,
        config: config.clone(),
    };
    let text = serde_json::to_string_pretty(&summary)?;
    stage_file::write_atomically(&out.join("metrics.json"), text.as_bytes())?;
    println!(
        "transformer: OOF log loss {:.4} over {} folds; wrote {}",
        summary.oof_log_loss,
        folds.n_folds(),
        out.display()
    );
    Ok(())
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
