//! `ensemble transformer`: picks the member by the model folder's `model_type` (DeBERTa-v2/v3,
//! `configs/deberta.toml`; or a decoder LLM, Gemma-2, Qwen2 or Llama, `configs/llm.toml`),
//! reads the data and hands over to the fold-run protocol (`neural::run`), which trains or
//! predicts each fold and merges them.
use crate::cli::TransformerArgs;
use crate::config::FoldGroups;
use crate::data;
use anyhow::{bail, Result};
use deberta::{DebertaConfig, DebertaRun};
use llm::{LlmConfig, LlmRun};
use neural::run::{self, ConfigSources, RunOptions, TestRows, TrainingOverrides, TrainingRows};
use neural::{
    check_precision, parse_device, reuse_freed_host_memory, Device, MemberConfig, Precision,
    ResponsePair,
};
use std::path::{Path, PathBuf};

pub fn run(args: TransformerArgs) -> Result<()> {
    reuse_freed_host_memory();
    let llm_folder = args.model.as_deref().map(is_llm_folder).transpose()?;
    let out = match (&args.out_given, llm_folder) {
        (Some(out), _) => out.clone(),
        (None, Some(true)) => "runs/llm".into(),
        (None, _) => "runs/deberta".into(),
    };
    let sources = ConfigSources {
        file: args.config.clone(),
        overrides: TrainingOverrides {
            max_len: args.max_len,
            epochs: args.epochs,
            early_stopping_on: args.early_stopping_on,
            precision: args.precision,
            gradient_checkpointing: args.gradient_checkpointing,
        },
    };
    // A --merge or --predict-only run given no config takes its folds' (and, given no
    // --model, their member).
    let recorded = match args.merge || args.predict_only {
        true => run::recorded_config(&out)?,
        false => None,
    };
    let recorded_llm = recorded
        .as_ref()
        .map(|config| LlmConfig::from_value(config.clone()).is_ok());
    if let (Some(dir), Some(folder), Some(folds)) = (&args.model, llm_folder, recorded_llm) {
        if folder != folds {
            let name = |llm: bool| if llm { "a decoder LLM's" } else { "a DeBERTa" };
            bail!(
                "--model {} is {} folder, and the folds in {} were trained with {} one",
                dir.display(),
                name(folder),
                out.display(),
                name(folds)
            );
        }
    }
    let options = RunOptions {
        out,
        model: args.model.clone(),
        train_file: args.train.clone(),
        test_file: args.test.clone(),
        device: args.device.clone(),
        folds_file: args.folds_file.clone(),
        folds: args.folds,
        group_by_prompt: args.group_by == Some(FoldGroups::Prompt),
        fold: args.fold,
        merge: args.merge,
        predict_only: args.predict_only,
        config: sources,
    };
    let model_dir: Option<PathBuf> = args.model.clone();
    // A merge runs no model: its device is not opened. A GPU that cannot run the precision
    // (bf16 below compute capability 8.0) is refused before any work.
    let device = |precision: Precision| -> Result<Device> {
        if args.merge {
            return Ok(Device::Cpu);
        }
        let device = parse_device(&args.device)?;
        check_precision(&args.device, &device, precision)?;
        Ok(device)
    };
    if llm_folder.or(recorded_llm).unwrap_or(false) {
        let max_len_source = match (&options.config.file, &recorded, args.max_len) {
            (None, Some(_), None) => "as the folds were trained".to_owned(),
            _ => options
                .config
                .source_of(LlmConfig::DEFAULTS_FILE, "max_len"),
        };
        let config: LlmConfig = options.config.resolve(recorded)?;
        let (train, test) = read_battles(&args)?;
        let device = device(config.training.precision)?;
        let mut member = LlmRun::new(model_dir, device, config, args.int8_base)
            .with_max_len_source(max_len_source);
        run::run(&mut member, &options, train, test)?;
    } else {
        let config: DebertaConfig = options.config.resolve(recorded)?;
        if args.int8_base {
            bail!(
                "--int8-base is for --predict-only runs of the LLM member (8-bit base weights \
                 for prediction; training needs them dense)"
            );
        }
        let (train, test) = read_battles(&args)?;
        let mut member = DebertaRun::new(
            model_dir,
            device(config.training.precision)?,
            config,
            args.save_models,
        );
        run::run(&mut member, &options, train, test)?;
    }
    Ok(())
}

/// Whether a model folder's `config.json` names a decoder LLM (gemma2, qwen2, llama: the LLM
/// member) rather than DeBERTa-v2/v3; any other `model_type` is refused here, before a config
/// file is read as the wrong member's. A folder without a readable `config.json` or a
/// `model_type` goes to DeBERTa's loader, which names what is missing.
fn is_llm_folder(dir: &Path) -> Result<bool> {
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => bail!("{}: cannot read: {e}", path.display()),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a JSON config: {e}", path.display()))?;
    match json.get("model_type").and_then(|kind| kind.as_str()) {
        None => Ok(false),
        Some(kind) if kind.starts_with("deberta") => Ok(false),
        Some(kind) if llm::Family::from_model_type(kind).is_some() => Ok(true),
        Some(kind) => bail!(
            "{}: model_type {kind:?} is not one `transformer` trains: DeBERTa-v2/v3 \
             (deberta-v2) or a decoder LLM (gemma2, qwen2, llama)",
            path.display()
        ),
    }
}

/// The training and test files as the protocol takes them.
fn read_battles(args: &TransformerArgs) -> Result<(TrainingRows, TestRows)> {
    let train = data::read_train(&args.train)?;
    let test = data::read_test(&args.test)?;
    let train = TrainingRows {
        pairs: response_pairs(&train.battles.battles),
        ids: train.battles.ids,
        labels: train.labels,
    };
    let test = TestRows {
        pairs: response_pairs(&test.battles),
        ids: test.ids,
    };
    Ok((train, test))
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
