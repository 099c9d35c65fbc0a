//! `ensemble tune`: a seeded random search over LightGBM's main parameters, scored by nested
//! CV, that writes the winner as a config `ensemble cv --config` reads.
use super::cv::make_folds;
use crate::cli::TuneArgs;
use crate::config::{self, CvSettings, LgbmRunConfig};
use crate::data;
use crate::lgbm_run::{augmented, view, write_json};
use crate::report;
use crate::semantic;
use anyhow::{Context, Result};
use ensemble_core::stage_file;
use ensemble_core::RunFolder;
use ensembles::cv::{BoosterParams, CvInputs};
use ensembles::tune::{self, TuneProgress};
use features::{CsrMatrix, Extractor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::Instant;

/// What `tune.json` records.
#[derive(Serialize)]
struct TuneSummary {
    train_rows: usize,
    folds: usize,
    trials: usize,
    seed: u64,
    /// Each row predicted by the candidate a CV without its fold ranked first: the honest
    /// estimate of what the search delivers.
    nested_log_loss: f64,
    /// The winner's plain CV log loss: chosen on these very folds, so optimistic.
    best_cv_log_loss: f64,
    /// The starting config's plain CV log loss (candidate 0).
    base_cv_log_loss: f64,
    best_trial: usize,
    /// Per outer fold: the trial its inner CV chose.
    chosen_per_fold: Vec<usize>,
    seconds: f64,
}

const TRIALS_HEADER: [&str; 10] = [
    "trial",
    "learning_rate",
    "num_leaves",
    "min_data_in_leaf",
    "feature_fraction",
    "bagging_fraction",
    "lambda_l2",
    "max_bin",
    "cv_log_loss",
    "chosen_for_folds",
];

/// The searched parameters of a candidate, in the order of `TRIALS_HEADER` and the table.
fn searched_values(c: &BoosterParams) -> [String; 7] {
    [
        c.learning_rate.to_string(),
        c.num_leaves.to_string(),
        c.min_data_in_leaf.to_string(),
        c.feature_fraction.to_string(),
        c.bagging_fraction.to_string(),
        c.lambda_l2.to_string(),
        c.max_bin.to_string(),
    ]
}

pub fn run(args: TuneArgs) -> Result<()> {
    let started = Instant::now();
    let mut config: LgbmRunConfig = match &args.config {
        Some(path) => config::read(path)?,
        None => LgbmRunConfig::default(),
    };
    config.cv.group_by = args.group_by.unwrap_or(config.cv.group_by);
    // The search's folds; best.toml keeps the config's own count for `cv`.
    let search_folds = CvSettings {
        folds: args.folds,
        ..config.cv.clone()
    };
    config.lgbm.num_threads = args.threads.unwrap_or(config.lgbm.num_threads);
    if let Some(dir) = &args.encoder {
        config.encoder.dir = Some(dir.clone());
    }
    config.features.semantic = config.encoder.dir.is_some();
    config.lgbm.validate()?;
    let mut inputs = vec![
        ("--train", Some(args.train.as_path())),
        ("--folds-file", args.folds_file.as_deref()),
        ("--config", args.config.as_deref()),
    ];
    inputs.extend(config.encoder.input_paths());
    let run = RunFolder::begin(&args.out, &inputs)?;
    let encoder = match &config.encoder.dir {
        Some(dir) => Some(semantic::Encoder::load(dir, &config.encoder)?),
        None => None,
    };

    let train = data::read_train(&args.train)?;
    let (folds, _) = make_folds(args.folds_file.as_deref(), &search_folds, &train)?;
    // Every candidate keeps the config's stopping protocol: refuse a dishonest one before the
    // features are built.
    let checked = tune::check_protocol(std::slice::from_ref(&config.lgbm), folds.n_folds());
    match &args.config {
        Some(path) => checked.with_context(|| format!("{}: [lgbm]", path.display()))?,
        None => checked?,
    }
    let extractor = Extractor::fit(&train.battles.battles, &config.features)?;
    let embedded = encoder
        .as_ref()
        .map(|e| e.embed(&train.battles.battles))
        .transpose()?;
    let embeddings = embedded
        .as_ref()
        .map(semantic::BattleTexts::for_features)
        .unwrap_or_default();
    let table = extractor.transform(&train.battles.battles, &embeddings)?;
    let n = train.labels.len();
    let matrix = augmented(&table, &(0..n).collect::<Vec<_>>());
    drop(table);
    let empty = CsrMatrix::vstack(&[]);
    let inputs = CvInputs {
        train: view(&matrix),
        labels: &train.labels,
        test_as_given: view(&empty),
        test_swapped: view(&empty),
    };

    let candidates = tune::candidates(&config.lgbm, args.trials, args.seed);
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} models [{elapsed}, ETA {eta}]")
            .expect("a valid template"),
    );
    let output = tune::search(&inputs, &folds, candidates, |event| match event {
        TuneProgress::Fitted { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();

    let out = run.path();
    folds.write(&out.join("folds.csv"), &train.battles.ids)?;
    let rows = output.candidates.iter().enumerate().map(|(trial, c)| {
        let chosen: Vec<String> = (0..output.chosen.len())
            .filter(|&fold| output.chosen[fold] == trial)
            .map(|fold| fold.to_string())
            .collect();
        let mut row = vec![trial.to_string()];
        row.extend(searched_values(c));
        row.extend([output.cv_log_loss[trial].to_string(), chosen.join(" ")]);
        row
    });
    stage_file::write(&out.join("trials.csv"), &TRIALS_HEADER, rows)?;

    let summary = TuneSummary {
        train_rows: n,
        folds: folds.n_folds(),
        trials: output.candidates.len(),
        seed: args.seed,
        nested_log_loss: output.nested_log_loss,
        best_cv_log_loss: output.cv_log_loss[output.best],
        base_cv_log_loss: output.cv_log_loss[0],
        best_trial: output.best,
        chosen_per_fold: output.chosen.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let best = LgbmRunConfig {
        lgbm: BoosterParams {
            num_threads: config.lgbm.num_threads,
            ..output.candidates[output.best].clone()
        },
        ..config
    };
    let best_path = args.out.join("best.toml");
    let text = format!(
        "# Written by `ensemble tune` (trial {} of {}, seed {}): plain {}-fold CV log loss \
         {:.4}, chosen on those folds;\n# nested estimate {:.4}. Use: ensemble cv --config {}\n{}",
        summary.best_trial,
        summary.trials,
        summary.seed,
        summary.folds,
        summary.best_cv_log_loss,
        summary.nested_log_loss,
        best_path.display(),
        toml::to_string(&best).context("cannot write the config as TOML")?
    );
    stage_file::write_atomically(&out.join("best.toml"), text.as_bytes())?;
    write_json(&out.join("tune.json"), &summary)?;
    run.commit()?;

    let mut table = vec![vec![
        "trial".to_owned(),
        "learning rate".into(),
        "leaves".into(),
        "min data".into(),
        "feature frac.".into(),
        "bagging frac.".into(),
        "lambda l2".into(),
        "max bin".into(),
        "CV log loss".into(),
        "chosen for folds".into(),
    ]];
    let mut order: Vec<usize> = (0..output.candidates.len()).collect();
    order.sort_by(|&a, &b| output.cv_log_loss[a].total_cmp(&output.cv_log_loss[b]));
    for trial in order {
        let c = &output.candidates[trial];
        let chosen = output.chosen.iter().filter(|&&t| t == trial).count();
        let mut row = vec![trial.to_string()];
        row.extend(searched_values(c));
        row.extend([
            format!("{:.4}", output.cv_log_loss[trial]),
            chosen.to_string(),
        ]);
        table.push(row);
    }
    print!("{}", report::text_table(&table));
    println!(
        "nested log loss {:.4} (each fold scored by the trial chosen without it); best trial \
         {} CV {:.4} (chosen on these folds); starting config CV {:.4}",
        summary.nested_log_loss,
        summary.best_trial,
        summary.best_cv_log_loss,
        summary.base_cv_log_loss
    );
    println!("wrote {} ({:.0}s)", best_path.display(), summary.seconds);
    Ok(())
}
