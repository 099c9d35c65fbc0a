//! `ensemble transformer`: fine-tunes a transformer member per fold and writes OOF and test
//! predictions that line up with the other members (same folds.csv). The model folder's
//! `model_type` picks the member: DeBERTa-v2/v3 (every weight trained, `configs/deberta.toml`)
//! or a decoder LLM, Gemma-2, Qwen2 or Llama (LoRA adapters and the head on a frozen base,
//! `configs/llm.toml`). Both train through `deberta::fit_fold` and predict both answer orders.
//!
//! Each fold writes `OUT/fold-K/` (held-out and test logits, fold.json), so folds can run on
//! separate machines with `--fold K`; the merge step (after all folds, or `--merge`) assembles
//! `oof.csv`, `oof_logits.csv`, `submission.csv`, `test_logits.csv` and `metrics.json`.
//! DeBERTa with `--save-models` writes `fold-K/model/`, the fold's fine-tuned model; the LLM
//! member always writes `fold-K/adapter/` (PEFT's format). A later `--predict-only` run
//! predicts a test file with those instead of training.
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
use llm::{LlmConfig, LlmMember};
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
    config: Option<MemberConfig>,
    /// The LLM member: the base model the adapter was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_model: Option<BaseModel>,
}

/// The base model of an LLM fold, which its adapter is applied to only.
#[derive(Clone, Serialize, Deserialize)]
struct BaseModel {
    dir: PathBuf,
    /// `llm::base_fingerprint` of its weights.
    fingerprint: String,
}

/// The settings of either member. A DeBERTa config refuses unknown keys, so the LLM member's
/// (which has `lora` and `template`) is never read as one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum MemberConfig {
    Deberta(TransformerConfig),
    Llm(LlmConfig),
}

impl MemberConfig {
    fn training(&self) -> &TransformerConfig {
        match self {
            MemberConfig::Deberta(config) => config,
            MemberConfig::Llm(config) => &config.training,
        }
    }

    fn training_mut(&mut self) -> &mut TransformerConfig {
        match self {
            MemberConfig::Deberta(config) => config,
            MemberConfig::Llm(config) => &mut config.training,
        }
    }

    fn is_llm(&self) -> bool {
        matches!(self, MemberConfig::Llm(_))
    }

    /// The file that states the defaults.
    fn defaults_file(&self) -> &'static str {
        match self {
            MemberConfig::Deberta(_) => "configs/deberta.toml",
            MemberConfig::Llm(_) => "configs/llm.toml",
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            MemberConfig::Deberta(config) => config.validate(),
            MemberConfig::Llm(config) => config.validate(),
        }
        .map_err(anyhow::Error::msg)
    }
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
    config: MemberConfig,
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

/// The training config: --config and the flags over the defaults of the member that the
/// --model folder's `model_type` picks. A --merge or --predict-only run given none takes the
/// one its folds were trained with (the lowest fold's fold.json), so that a notebook that only
/// predicts need not restate it.
fn resolve_config(args: &TransformerArgs) -> Result<MemberConfig> {
    let recorded = match args.merge || args.predict_only {
        true => recorded_config(&args.out)?,
        false => None,
    };
    let llm = match &args.model {
        Some(dir) => llm::Family::of_folder(dir).is_some(),
        None => recorded.as_ref().is_some_and(MemberConfig::is_llm),
    };
    if let (Some(recorded), Some(dir)) = (&recorded, &args.model) {
        if recorded.is_llm() != llm {
            let name = |llm: bool| if llm { "a decoder LLM's" } else { "a DeBERTa" };
            bail!(
                "--model {} is {} folder, and the folds in {} were trained with {} one",
                dir.display(),
                name(llm),
                args.out.display(),
                name(recorded.is_llm())
            );
        }
    }
    if !config_given(args) {
        if let Some(recorded) = recorded {
            return Ok(recorded);
        }
    }
    let mut config = match (llm, &args.config) {
        (false, Some(path)) => MemberConfig::Deberta(TransformerConfig::from_toml_file(path)?),
        (false, None) => MemberConfig::Deberta(TransformerConfig::default()),
        (true, Some(path)) => MemberConfig::Llm(LlmConfig::from_toml_file(path)?),
        (true, None) => MemberConfig::Llm(LlmConfig::default()),
    };
    let training = config.training_mut();
    training.max_len = args.max_len.unwrap_or(training.max_len);
    training.epochs = args.epochs.unwrap_or(training.epochs);
    training.early_stopping_on = args.early_stopping_on.unwrap_or(training.early_stopping_on);
    training.precision = args.precision.unwrap_or(training.precision);
    training.gradient_checkpointing |= args.gradient_checkpointing;
    config.validate()?;
    Ok(config)
}

/// Where the training setting `key` came from, for errors that name it: the --config file
/// when it sets the key, else the default, which `defaults` (the member's file) states.
fn setting_source(config_file: Option<&Path>, defaults: &str, key: &str) -> String {
    let sets_key = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .is_some_and(|table| table.contains_key(key))
    };
    match config_file {
        Some(path) if sets_key(path) => format!("set in {}", path.display()),
        Some(path) => format!("the default: {} does not set it", path.display()),
        None => format!("the default of {defaults}: no --config given"),
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

pub fn run(mut args: TransformerArgs) -> Result<()> {
    reuse_freed_host_memory();
    args.out = match (&args.out_given, &args.model) {
        (Some(out), _) => out.clone(),
        (None, Some(model)) if llm::Family::of_folder(model).is_some() => "runs/llm".into(),
        (None, _) => "runs/deberta".into(),
    };
    let config = resolve_config(&args)?;
    if args.int8_base && !(config.is_llm() && args.predict_only) {
        bail!(
            "--int8-base is for --predict-only runs of the LLM member (8-bit base weights for \
             prediction; training needs them dense)"
        );
    }
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
            Folds::stratified(&train.labels, args.folds, config.training().seed)?,
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
        let mut models = Models {
            args: &args,
            config: &config,
            device: parse_device(&args.device)?,
            base: None,
        };
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
                predict_fold(&args, &mut models, fold, &test, &mut battles)?;
                continue;
            }
            run_fold(
                &args,
                &mut models,
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

/// A fold's model: a DeBERTa classifier, or the LLM member with the fold's adapter (boxed:
/// both are kilobytes of configs and handles).
enum Member {
    Deberta(Box<Classifier>),
    Llm(Box<LlmMember>),
}

impl Member {
    fn encode(&self, pairs: &[ResponsePair]) -> Result<Vec<EncodedPair>> {
        Ok(match self {
            Member::Deberta(classifier) => classifier.encode(pairs)?,
            Member::Llm(member) => member.encode(pairs)?,
        })
    }

    /// Swap-averaged logits: both answer orders, mirrored and averaged.
    fn predict_logits<P: std::borrow::Borrow<EncodedPair>>(
        &self,
        encoded: &[P],
    ) -> Result<Vec<[f32; 3]>> {
        Ok(match self {
            Member::Deberta(classifier) => classifier.predict_logits(encoded)?,
            Member::Llm(member) => member.predict_logits(encoded)?,
        })
    }

    /// Trains on the training rows, picking the checkpoint on `stopping`: the shared loop.
    fn fit(
        &mut self,
        train: (&[&EncodedPair], &[Outcome]),
        stopping: (&[&EncodedPair], &[Outcome]),
        fold: usize,
    ) -> deberta::Result<FoldResult> {
        match self {
            Member::Deberta(c) => {
                fit_fold(&mut **c, train.0, train.1, stopping.0, stopping.1, fold)
            }
            Member::Llm(m) => fit_fold(&mut **m, train.0, train.1, stopping.0, stopping.1, fold),
        }
    }
}

/// Where the folds' models come from. DeBERTa trains every weight, so each fold reads its
/// folder afresh; the LLM member's base is frozen, so it is read once (with its fingerprint)
/// and each fold gets its own adapter.
struct Models<'a> {
    args: &'a TransformerArgs,
    config: &'a MemberConfig,
    device: Device,
    /// The LLM member between folds, and its base's record.
    base: Option<(LlmMember, BaseModel)>,
}

impl Models<'_> {
    /// The base model folder: --model.
    fn model_dir(&self) -> Result<&Path> {
        self.args
            .model
            .as_deref()
            .with_context(|| match self.config {
                MemberConfig::Deberta(_) => "--model is needed to train".to_owned(),
                MemberConfig::Llm(_) => "--model is needed: the base model the LLM member's \
                                     adapters were (or are to be) trained on"
                    .to_owned(),
            })
    }

    /// The LLM member with no adapter, read on first use; 8-bit base weights with --int8-base.
    fn llm_base(&mut self, config: &LlmConfig) -> Result<(LlmMember, BaseModel)> {
        if let Some(base) = self.base.take() {
            return Ok(base);
        }
        let dir = self.model_dir()?.to_owned();
        let (mut member, note) = LlmMember::load(&dir, &self.device, config)?;
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
        if self.args.int8_base {
            member.quantize_base()?;
        }
        let fingerprint = llm::base_fingerprint(&dir)?;
        Ok((member, BaseModel { dir, fingerprint }))
    }

    /// The model to train fold `fold` from.
    fn for_training(&mut self, fold: usize) -> Result<(Member, Option<BaseModel>)> {
        match self.config {
            MemberConfig::Deberta(config) => {
                let classifier = Classifier::load(self.model_dir()?, &self.device, config)?;
                Ok((Member::Deberta(Box::new(classifier)), None))
            }
            MemberConfig::Llm(config) => {
                let (mut member, base) = self.llm_base(config)?;
                member.start_adapter(config.training.seed.wrapping_add(fold as u64))?;
                Ok((Member::Llm(Box::new(member)), Some(base)))
            }
        }
    }

    /// The folder in which fold `fold` (in `dir`) keeps what predicts: DeBERTa's `model/`
    /// (with --save-models), the LLM member's `adapter/`.
    fn saved(&self, fold: usize, dir: &Path) -> Result<PathBuf> {
        let (saved, advice) = match self.config {
            MemberConfig::Deberta(_) => (dir.join("model"), "train with --save-models first"),
            MemberConfig::Llm(_) => (dir.join("adapter"), "train the fold first"),
        };
        if !saved.is_dir() {
            bail!(
                "{}: no saved model for fold {fold}; {advice}",
                saved.display()
            );
        }
        Ok(saved)
    }

    /// The model fold `fold` saved in `saved`, checked against what `summary` recorded.
    fn for_prediction(
        &mut self,
        fold: usize,
        saved: &Path,
        summary: &FoldSummary,
    ) -> Result<(Member, Option<BaseModel>)> {
        match self.config {
            MemberConfig::Deberta(config) => {
                let classifier = Classifier::load(saved, &self.device, config)?;
                Ok((Member::Deberta(Box::new(classifier)), None))
            }
            MemberConfig::Llm(config) => {
                let trained = summary.base_model.as_ref().with_context(|| {
                    format!(
                        "{}: fold {fold} records no base model; train it again",
                        saved.display()
                    )
                })?;
                let (mut member, base) = self.llm_base(config)?;
                if trained.fingerprint != base.fingerprint {
                    bail!(
                        "{}: fold {fold}'s adapter was trained on {} (weights fingerprint {}), \
                         and {} has other weights (fingerprint {}); predict with the base \
                         model it was trained on",
                        saved.display(),
                        trained.dir.display(),
                        trained.fingerprint,
                        base.dir.display(),
                        base.fingerprint
                    );
                }
                member.apply_adapter(saved)?;
                Ok((Member::Llm(Box::new(member)), Some(base)))
            }
        }
    }

    /// Takes a fold's model back: the LLM member's base serves the next fold.
    fn give_back(&mut self, member: Member, base: Option<BaseModel>) {
        if let (Member::Llm(member), Some(base)) = (member, base) {
            self.base = Some((*member, base));
        }
    }
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
    /// (training, test) battles tokenized, by `member` on first use.
    fn encoded(&mut self, member: &Member) -> Result<&(Vec<EncodedPair>, Vec<EncodedPair>)> {
        if self.encoded.is_none() {
            self.encoded = Some((member.encode(&self.train)?, member.encode(&self.test)?));
        }
        Ok(self.encoded.as_ref().expect("just set"))
    }
}

fn run_fold(
    args: &TransformerArgs,
    models: &mut Models,
    folds: &Folds,
    fold: usize,
    train: &data::TrainSet,
    test: &data::Battles,
    battles: &mut Battles,
) -> Result<()> {
    let started = Instant::now();
    let config = models.config;
    let (mut member, base_model) = models.for_training(fold)?;
    let load = started.elapsed().as_secs_f64();
    let rows = folds.rows_for(fold, config.training().early_stopping_on)?;
    let (train_rows, held_out) = (&rows.train, &rows.held_out);
    let labels = |rows: &[usize]| {
        rows.iter()
            .map(|&r| train.labels[r])
            .collect::<Vec<Outcome>>()
    };
    let tokenizing = Instant::now();
    let (train_all, test_encoded) = battles.encoded(&member)?;
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
    let result: FoldResult = member
        .fit(
            (&train_encoded, &labels(train_rows)),
            (&stopping_encoded, &labels(&rows.stopping)),
            fold,
        )
        .map_err(|e| {
            e.with_setting_sources(|key| {
                setting_source(args.config.as_deref(), config.defaults_file(), key)
            })
        })?;
    // The held-out fold is predicted only now, by the checkpoint the other fold picked
    // (with `held-out` stopping, the fold was the one watched and is predicted already).
    let held_out_logits = if rows.stopping_fold == fold {
        result.valid_logits.clone()
    } else {
        member.predict_logits(&pick(held_out))?
    };
    let predicting = Instant::now();
    let test_logits = member.predict_logits(test_encoded)?;
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
        base_model: base_model.clone(),
    };
    match &member {
        Member::Deberta(classifier) if args.save_models => {
            classifier.save_pretrained(&dir.join("model"))?
        }
        Member::Deberta(_) => {}
        // An adapter is small beside its base (about 0.2 GB in f32 for Gemma-2-9B at r 16 on
        // all seven projections, against 18 GB): always kept.
        Member::Llm(member) => member.save_adapter(&dir.join("adapter"))?,
    }
    models.give_back(member, base_model);
    let text = serde_json::to_string_pretty(&summary)?;
    Ok(stage_file::write_atomically(
        &dir.join("fold.json"),
        text.as_bytes(),
    )?)
}

/// Predicts the test rows with fold K's saved model (DeBERTa) or adapter (LLM) and rewrites
/// `fold-K/test_logits.csv`.
fn predict_fold(
    args: &TransformerArgs,
    models: &mut Models,
    fold: usize,
    test: &data::Battles,
    battles: &mut Battles,
) -> Result<()> {
    let dir = fold_dir(&args.out, fold);
    let saved = models.saved(fold, &dir)?;
    let summary = check_training_config(&dir.join("fold.json"), models.config)?;
    let started = Instant::now();
    let (member, base_model) = models.for_prediction(fold, &saved, &summary)?;
    let logits = member.predict_logits(&battles.encoded(&member)?.1)?;
    write_logits(
        &dir.join("test_logits.csv"),
        &test.ids.iter().collect::<Vec<_>>(),
        &logits,
    )?;
    models.give_back(member, base_model);
    eprintln!(
        "fold {fold}: predicted {} test rows in {:.1} s",
        logits.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The config keys that change what a trained model predicts (the last two: the LLM
/// member's).
const INFERENCE_KEYS: [&str; 6] = [
    "layout",
    "precision",
    "max_len",
    "segments",
    "template",
    "padding",
];

/// Refuses to predict with a config that differs from the training config `fold_json`
/// recorded in a key that changes the predictions, naming the key and both values. Returns
/// the fold's summary.
fn check_training_config(fold_json: &Path, config: &MemberConfig) -> Result<FoldSummary> {
    let summary = FoldSummary::read(fold_json)?
        .with_context(|| format!("cannot read {}: no such file", fold_json.display()))?;
    let Some(trained) = &summary.config else {
        bail!(
            "{}: records no training config (written by an older version); train again to \
             predict with --predict-only",
            fold_json.display()
        );
    };
    if trained.is_llm() != config.is_llm() {
        let name = |c: &MemberConfig| {
            if c.is_llm() {
                "the LLM member"
            } else {
                "DeBERTa"
            }
        };
        bail!(
            "{}: the fold was trained as {}, and this run is {}'s (from --model or --config)",
            fold_json.display(),
            name(trained),
            name(config)
        );
    }
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
    Ok(summary)
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
fn recorded_config(out: &Path) -> Result<Option<MemberConfig>> {
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
    config: Option<&MemberConfig>,
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
    config: &MemberConfig,
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
