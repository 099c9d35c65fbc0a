//! `ensemble cv`: features, then K-fold LightGBM, then the run folder.
use crate::cli::CvArgs;
use crate::config::{self, CvSettings, FoldGroups, LgbmRunConfig};
use crate::data::{self, TrainSet};
use crate::example;
use crate::lgbm_run;
use crate::report;
use crate::semantic;
use anyhow::{bail, Context, Result};
use ensemble_core::folds::{Folds, SharedPrompts};
use ensemble_core::metrics;
use ensemble_core::predictions::Predictions;
use ensemble_core::RunFolder;
use ensembles::cv::{self, Auto, CvInputs, Progress};
use features::{Extractor, Orientation};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn resolve_config(args: &CvArgs) -> Result<LgbmRunConfig> {
    let mut config: LgbmRunConfig = match &args.config {
        Some(path) => config::read(path)?,
        None => LgbmRunConfig::default(),
    };
    if let Some(folds) = args.folds {
        config.cv.folds = folds;
    }
    config.cv.group_by = args.group_by.unwrap_or(config.cv.group_by);
    if let Some(seed) = args.seed {
        config.cv.seed = seed;
        config.lgbm.seed = seed;
    }
    let lgbm = &mut config.lgbm;
    lgbm.learning_rate = args.learning_rate.map_or(lgbm.learning_rate, Auto::Set);
    lgbm.num_leaves = args.num_leaves.unwrap_or(lgbm.num_leaves);
    lgbm.max_rounds = args.max_rounds.unwrap_or(lgbm.max_rounds);
    lgbm.early_stopping_rounds = args
        .early_stopping
        .map_or(lgbm.early_stopping_rounds, Auto::Set);
    lgbm.early_stopping_on = args.early_stopping_on.unwrap_or(lgbm.early_stopping_on);
    lgbm.refit = args.refit.unwrap_or(lgbm.refit);
    lgbm.num_threads = args.threads.unwrap_or(lgbm.num_threads);
    lgbm.seeds = args.seeds.unwrap_or(lgbm.seeds);
    if let Some(dir) = &args.encoder {
        config.encoder.dir = Some(dir.clone());
    }
    config.features.semantic = config.encoder.dir.is_some();
    if args.no_tfidf {
        config.features.tfidf.word = false;
        config.features.tfidf.char = false;
    }
    Ok(config)
}

/// The train and test files: given (the test file optional), or the generated example, written
/// into the run folder being staged.
fn resolve_inputs(args: &CvArgs, run: &RunFolder) -> Result<(PathBuf, Option<PathBuf>)> {
    match (&args.train, &args.test) {
        (Some(train), test) => Ok((train.clone(), test.clone())),
        (None, Some(_)) => bail!("--test needs --train"),
        (None, None) => {
            let dir = run.path().join("example");
            example::write(&dir, example::TRAIN_ROWS, example::TEST_ROWS, example::SEED)?;
            eprintln!(
                "No --train given: using the generated example, kept in {}",
                args.out.join("example").display()
            );
            Ok((dir.join("train.csv"), Some(dir.join("test.csv"))))
        }
    }
}

/// The `cv` flags that override `[lgbm]` keys, so that a refused value is named as given.
fn lgbm_flag(args: &CvArgs, key: &str) -> Option<&'static str> {
    let (given, flag) = match key {
        "learning_rate" => (args.learning_rate.is_some(), "--learning-rate"),
        "num_leaves" => (args.num_leaves.is_some(), "--num-leaves"),
        "max_rounds" => (args.max_rounds.is_some(), "--max-rounds"),
        "early_stopping_rounds" => (args.early_stopping.is_some(), "--early-stopping"),
        "seeds" => (args.seeds.is_some(), "--seeds"),
        _ => return None,
    };
    given.then_some(flag)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

pub fn run(args: CvArgs) -> Result<()> {
    let started = Instant::now();
    let mut config = resolve_config(&args)?;
    config.lgbm.validate_naming(|key| {
        lgbm_flag(&args, key).map_or_else(|| format!("[lgbm] {key}"), str::to_owned)
    })?;
    if config.lgbm.num_threads > 0 {
        // Features use rayon's global pool; size it like LightGBM's.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(config.lgbm.num_threads)
            .build_global();
    }
    // A bad encoder folder fails here, before any reading or computing.
    let encoder = match &config.encoder.dir {
        Some(dir) => Some(semantic::Encoder::load(dir, &config.encoder)?),
        None => None,
    };
    let mut inputs = vec![
        ("--train", args.train.as_deref()),
        ("--test", args.test.as_deref()),
        ("--folds-file", args.folds_file.as_deref()),
        ("--config", args.config.as_deref()),
    ];
    inputs.extend(config.encoder.input_paths());
    let run = RunFolder::begin(&args.out, &inputs)?;
    let (train_path, test_path) = resolve_inputs(&args, &run)?;
    let mut timings = lgbm_run::Timings::default();

    let bar = spinner("reading CSV files");
    let train = data::read_train(&train_path)?;
    let test = match &test_path {
        Some(path) => data::read_test(path)?,
        None => data::Battles::default(),
    };
    timings.read = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (n_train, n_test) = (train.labels.len(), test.ids.len());
    eprintln!(
        "read {n_train} training and {n_test} test battles in {:.1}s",
        timings.read
    );
    // metrics.json records the values chosen, and which keys were `auto`.
    let auto_keys = config.lgbm.auto_keys();
    config.lgbm = config.lgbm.for_rows(n_train);
    if !auto_keys.is_empty() {
        eprintln!(
            "learning rate {}, early stopping after {} rounds, {} bins per feature ({} auto \
             for {n_train} battles; set them in [lgbm] to choose)",
            config.lgbm.learning_rate,
            config.lgbm.early_stopping_rounds,
            config.lgbm.max_bin,
            auto_keys.join(", ")
        );
    }
    for (file, issues) in [
        (Some(&train_path), &train.battles.text_issues),
        (test_path.as_ref(), &test.text_issues),
    ] {
        let Some(file) = file else { continue };
        if issues.total() > 0 {
            eprintln!(
                "{}: {} text fields kept as they were: {}",
                file.display(),
                issues.total(),
                issues.examples.join("; ")
            );
        }
    }

    let (folds, shared_prompts) = make_folds(args.folds_file.as_deref(), &config.cv, &train)?;

    let features_started = Instant::now();
    let bar = spinner("computing features");
    let (train_ids, labels, train_issues) =
        (train.battles.ids, train.labels, train.battles.text_issues);
    let (test_ids, test_issues) = (test.ids, test.text_issues);
    // Train and test text together: TF-IDF is fitted on text alone, never on labels.
    let mut battles = train.battles.battles;
    battles.extend(test.battles);
    let extractor = Extractor::fit(&battles, &config.features)?;
    let embedded = encoder.as_ref().map(|e| e.embed(&battles)).transpose()?;
    let embeddings = embedded
        .as_ref()
        .map(semantic::BattleTexts::for_features)
        .unwrap_or_default();
    let table = extractor.transform(&battles, &embeddings)?;
    drop((battles, embeddings));
    let train_rows: Vec<usize> = (0..n_train).collect();
    let test_rows: Vec<usize> = (n_train..n_train + n_test).collect();
    let augmented = lgbm_run::augmented(&table, &train_rows);
    let test_as_given = table.csr(&test_rows, Orientation::AsGiven);
    let test_swapped = table.csr(&test_rows, Orientation::Swapped);
    drop(table);
    timings.features = features_started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let names = extractor.feature_names();
    eprintln!(
        "{} features, {:.0} non-zeros per row, in {:.1}s",
        names.len(),
        augmented.values.len() as f64 / augmented.n_rows().max(1) as f64,
        timings.features
    );

    let cv_started = Instant::now();
    let inputs = CvInputs {
        train: lgbm_run::view(&augmented),
        labels: &labels,
        test_as_given: lgbm_run::view(&test_as_given),
        test_swapped: lgbm_run::view(&test_swapped),
    };
    let bar = ProgressBar::new(folds.n_folds() as u64).with_style(
        ProgressStyle::with_template("{bar:30} fold {pos}/{len} {msg} [{elapsed}]")
            .expect("a valid template"),
    );
    let output = cv::cross_validate(&inputs, &folds, &config.lgbm, |event| match event {
        Progress::FoldStarted { .. } => {}
        Progress::Round {
            round, valid_loss, ..
        } => bar.set_message(format!("round {round}, watched log loss {valid_loss:.4}")),
        Progress::FoldFinished(report) => {
            bar.inc(1);
            bar.suspend(|| {
                eprintln!(
                    "fold {}: log loss {:.4} after {} rounds",
                    report.fold,
                    report.log_loss,
                    lgbm_run::rounds(&report.best_iterations)
                )
            });
        }
    })?;
    bar.finish_and_clear();
    timings.cv = cv_started.elapsed().as_secs_f64();
    timings.cv_stages = output.seconds.clone();

    // Every input was read and checked and every fold trained: only now are the run's files
    // written, into the staging folder that replaces the run folder as a whole.
    let out = run.path();
    std::fs::create_dir_all(out.join(lgbm_run::MODELS_DIR))
        .with_context(|| format!("cannot create {}", out.display()))?;
    folds.write(&out.join("folds.csv"), &train_ids)?;
    Predictions::new(train_ids, output.oof.clone()).write(&out.join("oof.csv"))?;
    if test_path.is_some() {
        Predictions::new(test_ids, output.test.clone()).write(&out.join("submission.csv"))?;
    }
    let encoder_record = encoder.as_ref().map(semantic::Encoder::record);
    lgbm_run::write(out, &extractor, &output.models, encoder_record)?;
    let importance = report::Importance::new(names, &output.importance);
    importance.write_csv(&out.join("importance.csv"))?;
    importance.write_by_fold_csv(&out.join(report::BY_FOLD_FILE))?;
    importance.write_svg(&out.join("importance.svg"), 30)?;

    timings.total = started.elapsed().as_secs_f64();
    let summary = lgbm_run::RunSummary {
        // Absolute, so that `ensemble blend` finds the labels from any directory.
        train: run.recorded_path(&train_path),
        test: test_path.map(|p| run.recorded_path(&p)),
        train_rows: n_train,
        test_rows: n_test,
        features: names.len(),
        oof_log_loss: metrics::log_loss(&labels, &output.oof),
        oof_accuracy: metrics::accuracy(&labels, &output.oof),
        prior_log_loss: lgbm_run::prior_log_loss(&labels),
        folds: output.folds,
        seconds: timings,
        config,
        auto_keys,
        prompts_across_folds: shared_prompts,
        encoder: encoder_record.cloned(),
        embedding: embedded.map(|e| e.stats),
        train_text_issues: train_issues,
        test_text_issues: test_issues,
    };
    lgbm_run::write_json(&out.join("metrics.json"), &summary)?;
    run.commit()?;
    println!("{}", summary.table());
    println!("{}", importance.table(10, None, false));
    println!("wrote {}", args.out.display());
    if summary.test.is_none() {
        println!("no --test given: out-of-fold predictions only, no submission.csv");
    }
    Ok(())
}

/// The folds `--folds-file` gives, or new ones as `[cv]` says; warns when prompts repeat
/// across them.
pub(super) fn make_folds(
    folds_file: Option<&Path>,
    settings: &CvSettings,
    train: &TrainSet,
) -> Result<(Folds, SharedPrompts)> {
    let (labels, battles) = (&train.labels, &train.battles.battles);
    let folds = match folds_file {
        Some(path) => Folds::read(path, &train.battles.ids)?,
        None => match settings.group_by {
            FoldGroups::None => Folds::stratified(labels, settings.folds, settings.seed)?,
            FoldGroups::Prompt => {
                let prompts: Vec<&Vec<String>> = battles.iter().map(|b| &b.prompt).collect();
                Folds::stratified_grouped(labels, &prompts, settings.folds, settings.seed)?
            }
        },
    };
    let prompts: Vec<&[String]> = battles.iter().map(|b| b.prompt.as_slice()).collect();
    let shared_prompts = folds.prompts_across_folds(&prompts);
    if let Some(warning) = shared_prompts.warning() {
        eprintln!("{warning}");
    }
    Ok((folds, shared_prompts))
}
