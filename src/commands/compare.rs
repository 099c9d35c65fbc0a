//! `ensemble compare`: is a change to the feature model better than fold-to-fold noise?
//! Pairs the per-fold log losses of runs made on the same folds, with standard errors
//! corrected for the folds' overlapping training sets (`PairedDifference`).
use crate::cli::CompareArgs;
use crate::lgbm_run;
use crate::report;
use anyhow::{bail, Context, Result};
use ensemble_core::folds::Folds;
use ensemble_core::metrics::PairedDifference;
use ensemble_core::stage_file::StageFile;
use std::path::Path;

pub fn run(args: CompareArgs) -> Result<()> {
    let base_folds_file = args.base.join("folds.csv");
    let ids: Vec<String> = StageFile::read(&base_folds_file, &["id", "fold"])?
        .rows()
        .map(|(_, fields)| fields[0].to_string())
        .collect();
    let base_folds = Folds::read(&base_folds_file, &ids)?;
    let base = lgbm_run::recorded_scores(&args.base)?;
    let base_losses = base.fold_losses();

    let mut rows = vec![vec![
        "run".to_owned(),
        "OOF".into(),
        "Δ OOF".into(),
        "Δ per fold".into(),
        "sd".into(),
        "std. error".into(),
        "Δ / std. error".into(),
        "naive s.e.".into(),
        "folds better".into(),
        "verdict".into(),
    ]];
    rows.push(vec![
        args.base.display().to_string(),
        format!("{:.4}", base.oof_log_loss),
        "base".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    for run in &args.runs {
        check_same_folds(run, &ids, &base_folds, &args.base)?;
        let scores = lgbm_run::recorded_scores(run)?;
        // The run that trained on fewer rows per held-out row sets the (wider) error.
        let ratio = base.test_train_ratio().max(scores.test_train_ratio());
        let d = PairedDifference::new(&base_losses, &scores.fold_losses(), ratio)
            .with_context(|| format!("{}: cannot pair its folds with the base's", run.display()))?;
        let t = d.standard_errors();
        let verdict = match t {
            t if t < -2.0 => "better (> 2 std. errors)",
            t if t < -1.0 => "better by 1-2 std. errors",
            t if t > 2.0 => "worse (> 2 std. errors)",
            t if t > 1.0 => "worse by 1-2 std. errors",
            _ => "within 1 std. error",
        };
        rows.push(vec![
            run.display().to_string(),
            format!("{:.4}", scores.oof_log_loss),
            format!("{:+.4}", scores.oof_log_loss - base.oof_log_loss),
            format!("{:+.4}", d.mean),
            format!("{:.4}", d.sd),
            format!("{:.4}", d.standard_error),
            format!("{t:+.1}"),
            format!("{:.4}", d.naive_standard_error),
            format!("{} of {}", d.better, d.folds),
            verdict.into(),
        ]);
    }
    print!("{}", report::text_table(&rows));
    Ok(())
}

/// Runs compare only when they held out the same rows.
fn check_same_folds(run: &Path, ids: &[String], base_folds: &Folds, base: &Path) -> Result<()> {
    let path = run.join("folds.csv");
    let folds = Folds::read(&path, ids).with_context(|| {
        format!(
            "{} and {} hold out different rows",
            run.display(),
            base.display()
        )
    })?;
    if &folds != base_folds {
        bail!(
            "{} and {} assign rows to different folds: make the runs with --folds-file {}",
            run.display(),
            base.display(),
            base.join("folds.csv").display()
        );
    }
    Ok(())
}
