//! `ensemble predict`: a saved feature-model run applied to a new test file.
use crate::cli::PredictArgs;
use crate::data;
use crate::lgbm_run::SavedRun;
use crate::semantic;
use anyhow::{bail, Result};
use ensemble_core::predictions::Predictions;
use ensemble_core::RunFolder;
use ensembles::cv::predict_mean;
use features::Orientation;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What `predict.json` records.
#[derive(Serialize)]
struct PredictSummary {
    run: PathBuf,
    test: PathBuf,
    test_rows: usize,
    models: usize,
    features: usize,
    seconds: f64,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let started = Instant::now();
    let inputs = [
        ("--run", Some(args.run.as_path())),
        ("--test", Some(args.test.as_path())),
        ("--encoder", args.encoder.as_deref()),
    ];
    let out = RunFolder::begin(&args.out, &inputs)?;
    if args.threads > 0 {
        // Features use rayon's global pool; size it like LightGBM's.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads)
            .build_global();
    }
    let saved = SavedRun::read(&args.run)?;
    let test = data::read_test(&args.test)?;
    if test.text_issues.total() > 0 {
        eprintln!(
            "{}: {} text fields kept as they were: {}",
            args.test.display(),
            test.text_issues.total(),
            test.text_issues.examples.join("; ")
        );
    }
    let embedded = match (&saved.encoder, &args.encoder) {
        (Some(record), dir) => {
            let encoder = semantic::load_recorded(&args.run, record, dir.as_deref())?;
            Some(encoder.embed(&test.battles)?)
        }
        (None, Some(dir)) => bail!(
            "--encoder {}: the run {} was made without an encoder",
            dir.display(),
            args.run.display()
        ),
        (None, None) => None,
    };
    let embeddings = embedded
        .as_ref()
        .map(semantic::BattleTexts::for_features)
        .unwrap_or_default();
    let table = saved.extractor.transform(&test.battles, &embeddings)?;
    let rows: Vec<usize> = (0..test.ids.len()).collect();
    let (as_given, swapped) = (
        table.csr(&rows, Orientation::AsGiven),
        table.csr(&rows, Orientation::Swapped),
    );
    let probs = predict_mean(
        &saved.models,
        crate::lgbm_run::view(&as_given),
        crate::lgbm_run::view(&swapped),
        args.threads,
    )?;

    let n_test = test.ids.len();
    Predictions::new(test.ids, probs).write(&out.path().join("submission.csv"))?;
    let summary = PredictSummary {
        run: std::fs::canonicalize(&args.run).unwrap_or(args.run),
        test: std::fs::canonicalize(&args.test).unwrap_or(args.test),
        test_rows: n_test,
        models: saved.models.len(),
        features: saved.extractor.feature_names().len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::lgbm_run::write_json(&out.path().join("predict.json"), &summary)?;
    out.commit()?;
    println!(
        "predicted {n_test} battles with {} fold models in {:.1}s: wrote {}",
        summary.models,
        summary.seconds,
        args.out.join("submission.csv").display()
    );
    Ok(())
}
