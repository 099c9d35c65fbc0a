//! The merge: every fold's outputs, checked to be one run's, assembled into the run's files.
use std::collections::HashMap;
use std::path::Path;

use ensemble_core::stage_file;
use ensemble_core::{metrics, probs_from_logits, Folds, Outcome, Predictions, Probs};
use serde::Serialize;

use super::files::{
    config_differences, fold_dir, read_logits, write_logits, BaseModel, FoldSummary,
};
use super::RunOptions;
use crate::config::MemberConfig;
use crate::{Error, Result};

/// What `metrics.json` holds.
#[derive(Serialize)]
struct RunSummary<'a, C> {
    model: &'a Option<std::path::PathBuf>,
    train: &'a Path,
    test: &'a Path,
    device: &'a str,
    folds: Vec<FoldSummary>,
    oof_log_loss: f64,
    oof_accuracy: f64,
    config: &'a C,
}

/// Every fold's `fold.json`, once all are there and were trained with one config: `config`
/// where given (this run trains, or was given a config), else the first fold's. Otherwise one
/// error names every fold that is missing and every key a fold was trained with otherwise, so
/// that a merge never mixes folds of different runs.
fn fold_summaries(
    out: &Path,
    n_folds: usize,
    config: Option<serde_json::Value>,
) -> Result<Vec<FoldSummary>> {
    let mut reference = config.map(|config| ("this run".to_owned(), config));
    // The first fold that records its base; every other that does must record the same.
    let mut first_base: Option<(usize, BaseModel)> = None;
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
                let (label, asked) =
                    reference.get_or_insert_with(|| (format!("fold {fold}"), trained.clone()));
                let keys = config_differences(trained, asked, label);
                if !keys.is_empty() {
                    mismatched.push(format!("fold {fold} was trained with {}", keys.join(", ")));
                }
            }
        }
        if let Some(base) = &summary.base_model {
            match &first_base {
                None => first_base = Some((fold, base.clone())),
                Some((first, seen)) if seen.fingerprint != base.fingerprint => {
                    mismatched.push(format!(
                        "fold {fold} was trained on {} (fingerprint {}), fold {first} on {} \
                         (fingerprint {})",
                        base.dir.display(),
                        base.fingerprint,
                        seen.dir.display(),
                        seen.fingerprint
                    ))
                }
                Some(_) => {}
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
        return Err(Error::Invalid(format!(
            "cannot merge {}: {}",
            out.display(),
            problems.join("; ")
        )));
    }
    Ok(summaries)
}

/// Assembles the fold outputs: OOF rows in training-file order, test probabilities averaged
/// over the folds in test-file order.
pub(super) fn merge<C: MemberConfig>(
    options: &RunOptions,
    config: &C,
    folds: &Folds,
    (ids, labels): (&[String], &[Outcome]),
    test_ids: &[String],
) -> Result<()> {
    let position: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut oof: Vec<Option<[f32; 3]>> = vec![None; ids.len()];
    let mut test_sum = vec![[0f64; 3]; test_ids.len()];
    // Folds only predicted again are checked against each other: --predict-only has checked
    // the keys that change predictions against each fold already.
    let checks_against_this_run =
        !options.predict_only && (options.config.given() || !options.merge);
    let reference = match checks_against_this_run {
        true => Some(serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?),
        false => None,
    };
    let summaries = fold_summaries(&options.out, folds.n_folds(), reference)?;
    for fold in 0..folds.n_folds() {
        let dir = fold_dir(&options.out, fold);
        for (id, logits) in read_logits(&dir.join("held_out_logits.csv"))? {
            let row = *position.get(id.as_str()).ok_or_else(|| {
                Error::Invalid(format!(
                    "fold {fold}: id {id} is not in {}",
                    options.train_file.display()
                ))
            })?;
            if folds.fold_of(row) != fold {
                return Err(Error::Invalid(format!(
                    "fold {fold}: id {id} belongs to fold {}",
                    folds.fold_of(row)
                )));
            }
            oof[row] = Some(logits);
        }
        let test_logits = read_logits(&dir.join("test_logits.csv"))?;
        if test_logits.len() != test_ids.len()
            || test_logits.iter().zip(test_ids).any(|((a, _), b)| a != b)
        {
            return Err(Error::Invalid(format!(
                "fold {fold}: test_logits.csv does not list the test ids in file order"
            )));
        }
        for (sum, (_, logits)) in test_sum.iter_mut().zip(&test_logits) {
            let p = probs_from_logits(logits);
            (0..3).for_each(|c| sum[c] += p[c]);
        }
    }
    let oof: Vec<[f32; 3]> = oof
        .into_iter()
        .enumerate()
        .map(|(row, l)| {
            l.ok_or_else(|| Error::Invalid(format!("id {} has no held-out prediction", ids[row])))
        })
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
    let out = &options.out;
    Predictions::new(ids.to_vec(), oof_probs.clone()).write(&out.join("oof.csv"))?;
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
        model: &options.model,
        train: &options.train_file,
        test: &options.test_file,
        device: &options.device,
        oof_log_loss: metrics::log_loss(labels, &oof_probs),
        oof_accuracy: metrics::accuracy(labels, &oof_probs),
        folds: summaries,
        config,
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
    stage_file::write_atomically(&out.join("metrics.json"), text.as_bytes())?;
    println!(
        "transformer: OOF log loss {:.4} over {} folds; wrote {}",
        summary.oof_log_loss,
        folds.n_folds(),
        out.display()
    );
    Ok(())
}
