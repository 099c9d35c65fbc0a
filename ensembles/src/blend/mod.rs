//! The blender: combines the out-of-fold (OOF) and test predictions of several members into one
//! submission, with weights (or a stacking model) fitted on the OOF predictions, and reports an
//! honest estimate of the blend's loss by refitting it inside the folds.
//!
//! [`run`] does everything from files to files; [`fit_blend`] is the computation on matrices.
mod members;
mod simplex;
mod stack;
mod weighted;

pub use members::{clip_renormalise, MemberMatrix, MemberSet, MemberSource, SharedFolds};
pub use stack::StackModel;
pub use weighted::{Space, WeightChoice, WeightedBlend};

use crate::{Error, Result};
use ensemble_core::metrics::{accuracy, log_loss};
use ensemble_core::predictions::Predictions;
use ensemble_core::{Folds, Outcome, Probs};
use rayon::prelude::*;
use std::fmt;
use std::path::{Path, PathBuf};

/// How the members are combined.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// A convex combination of the members, optionally followed by a fitted temperature
    /// (applied to the blended log-probabilities).
    Weighted {
        space: Space,
        weights: WeightChoice,
        calibrate: bool,
    },
    /// A multinomial logistic regression on the members' log-probabilities.
    Stack,
}

/// A blend fitted on a set of OOF rows; `blend.json` carries the one fitted on all rows
/// (its `model`), which `ensemble blend --apply` reapplies to members' new predictions.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum FittedBlend {
    Weighted(WeightedBlend),
    Stack(StackModel),
}

impl FittedBlend {
    fn fit(method: &Method, oof: &MemberMatrix, labels: &[Outcome]) -> Result<FittedBlend> {
        Ok(match method {
            Method::Weighted {
                space,
                weights,
                calibrate,
            } => FittedBlend::Weighted(WeightedBlend::fit(
                *space, weights, *calibrate, oof, labels,
            )?),
            Method::Stack => FittedBlend::Stack(StackModel::fit(oof, labels)?),
        })
    }

    fn predict(&self, members: &MemberMatrix) -> Vec<Probs> {
        match self {
            FittedBlend::Weighted(blend) => blend.predict(members),
            FittedBlend::Stack(model) => model.predict(members),
        }
    }

    /// Checks a blend read back from a file, for `n_members` members, for what a fit
    /// guarantees and a hand edit can break; the message names the field under `model`.
    fn check(&self, n_members: usize) -> std::result::Result<(), String> {
        match self {
            FittedBlend::Weighted(blend) => blend.check(n_members),
            FittedBlend::Stack(model) => model.check(n_members),
        }
    }

    /// Test predictions as the submission has them: clipped at the metric's epsilon and
    /// renormalised.
    fn predict_submission(&self, members: &MemberMatrix) -> Vec<Probs> {
        self.predict(members)
            .into_iter()
            .map(clip_renormalise)
            .collect()
    }
}

/// What fitting a blend produced.
#[derive(Clone, Debug)]
pub struct BlendFit {
    /// The members' weights (weighted blends only), fitted on all OOF rows.
    pub weights: Option<Vec<f64>>,
    /// The fitted temperature, when calibrating.
    pub temperature: Option<f64>,
    /// The blend fitted on all OOF rows, predicting those same rows.
    pub in_sample: Vec<Probs>,
    /// Each fold's rows predicted by the blend refitted on the other folds' rows.
    pub nested: Vec<Probs>,
    /// The log loss of `nested` on each fold's rows.
    pub nested_fold_losses: Vec<f64>,
    /// The test predictions of the blend fitted on all OOF rows, clipped at the metric's
    /// epsilon and renormalised.
    pub test: Vec<Probs>,
    /// The blend fitted on all OOF rows.
    pub model: FittedBlend,
}

/// Fits the blend on all OOF rows (for the test predictions and the in-sample loss) and once
/// per fold on the other folds' rows (for the nested estimate).
pub fn fit_blend(
    oof: &MemberMatrix,
    test: &MemberMatrix,
    labels: &[Outcome],
    folds: &Folds,
    method: &Method,
) -> Result<BlendFit> {
    if labels.len() != oof.n_rows() {
        return Err(Error::Invalid(format!(
            "{} labels for {} OOF rows",
            labels.len(),
            oof.n_rows()
        )));
    }
    if oof.n_members() != test.n_members() {
        return Err(Error::Invalid(
            "the OOF and test predictions come from different numbers of members".into(),
        ));
    }
    // Each fold's refit starts from scratch, never from the full fit (which saw the held-out
    // fold's labels), so all K + 1 fits are independent and run side by side.
    let (full, per_fold) = rayon::join(
        || FittedBlend::fit(method, oof, labels),
        || {
            (0..folds.n_folds())
                .into_par_iter()
                .map(|fold| {
                    let (train, held_out) = folds.split(fold);
                    let train_labels: Vec<Outcome> = train.iter().map(|&r| labels[r]).collect();
                    let fitted = FittedBlend::fit(method, &oof.select(&train), &train_labels)?;
                    let predicted = fitted.predict(&oof.select(&held_out));
                    Ok((held_out, predicted))
                })
                .collect::<Result<Vec<(Vec<usize>, Vec<Probs>)>>>()
        },
    );
    let (full, per_fold) = (full?, per_fold?);
    let mut nested = vec![[0.0; 3]; oof.n_rows()];
    let mut nested_fold_losses = Vec::with_capacity(per_fold.len());
    for (held_out, predicted) in per_fold {
        let fold_labels: Vec<Outcome> = held_out.iter().map(|&r| labels[r]).collect();
        nested_fold_losses.push(log_loss(&fold_labels, &predicted));
        for (row, p) in held_out.into_iter().zip(predicted) {
            nested[row] = p;
        }
    }
    let (weights, temperature) = match &full {
        FittedBlend::Weighted(blend) => (
            Some(blend.weights.clone()),
            matches!(
                method,
                Method::Weighted {
                    calibrate: true,
                    ..
                }
            )
            .then(|| 1.0 / blend.inverse_temperature),
        ),
        FittedBlend::Stack(_) => (None, None),
    };
    Ok(BlendFit {
        weights,
        temperature,
        in_sample: full.predict(oof),
        nested,
        nested_fold_losses,
        test: full.predict_submission(test),
        model: full,
    })
}

/// Where the folds of the nested estimate come from, when no member brings a `folds.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldsChoice {
    /// An `id,fold` file; it must agree with the members' folds where they have any.
    pub file: Option<PathBuf>,
    /// Otherwise stratified folds from the labels: how many …
    pub n_folds: usize,
    /// … and the seed that shuffles them.
    pub seed: u64,
}

impl Default for FoldsChoice {
    fn default() -> FoldsChoice {
        FoldsChoice {
            file: None,
            n_folds: 10,
            seed: 42,
        }
    }
}

/// Everything `ensemble blend` needs.
#[derive(Clone, Debug)]
pub struct BlendRequest {
    pub members: Vec<MemberSource>,
    pub method: Method,
    /// The training ids and their labels, in the training file's order.
    pub train_ids: Vec<String>,
    pub labels: Vec<Outcome>,
    pub folds: FoldsChoice,
    /// The submission to write; `blend.json` goes next to it.
    pub out: PathBuf,
}

/// How the nested estimate is computed, for the report.
pub const NESTED_ESTIMATE: &str = "the blend refitted on K-1 folds' OOF rows predicts the \
    held-out fold; the held-out predictions of all K folds are pooled and scored once";

/// One member's line in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberReport {
    #[serde(flatten)]
    pub source: MemberSource,
    pub weight: Option<f64>,
    pub oof_log_loss: f64,
    pub oof_accuracy: f64,
}

/// What `ensemble blend` did: written as `blend.json` and printed as a table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlendReport {
    /// `weighted` or `stack`.
    pub method: &'static str,
    pub space: Option<Space>,
    /// `auto` or `fixed` for weighted blends.
    pub weights: Option<&'static str>,
    pub temperature: Option<f64>,
    pub members: Vec<MemberReport>,
    pub in_sample_log_loss: f64,
    pub in_sample_accuracy: f64,
    pub nested_log_loss: f64,
    pub nested_accuracy: f64,
    pub nested_fold_log_losses: Vec<f64>,
    pub nested_estimate: &'static str,
    pub n_folds: usize,
    pub folds_origin: String,
    pub n_train: usize,
    pub n_test: usize,
    pub submission: PathBuf,
    pub report: PathBuf,
    /// The blend fitted on all OOF rows, for `ensemble blend --apply`.
    pub model: FittedBlend,
}

/// Reads and checks the members, fits the blend, writes the submission and `blend.json` next
/// to it, and returns the report.
pub fn run(request: &BlendRequest) -> Result<BlendReport> {
    if request.labels.len() != request.train_ids.len() {
        return Err(Error::Invalid(format!(
            "{} labels for {} training ids",
            request.labels.len(),
            request.train_ids.len()
        )));
    }
    let members = MemberSet::load(&request.members, &request.train_ids)?;
    let (folds, folds_origin) = resolve_folds(&members, &request.folds, request)?;
    let fit = fit_blend(
        &members.oof,
        &members.test,
        &request.labels,
        &folds,
        &request.method,
    )?;

    let report_path = request.out.with_file_name("blend.json");
    if let Some(dir) = request.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    Predictions::new(members.test_ids.clone(), fit.test.clone()).write(&request.out)?;

    let labels = &request.labels;
    let member_reports = members
        .sources
        .iter()
        .enumerate()
        .map(|(k, source)| {
            let probs = members.oof.member(k);
            MemberReport {
                source: source.clone(),
                weight: fit.weights.as_ref().map(|w| w[k]),
                oof_log_loss: log_loss(labels, &probs),
                oof_accuracy: accuracy(labels, &probs),
            }
        })
        .collect();
    let (method, space, weights) = match &request.method {
        Method::Weighted { space, weights, .. } => (
            "weighted",
            Some(*space),
            Some(match weights {
                WeightChoice::Auto => "auto",
                WeightChoice::Fixed(_) => "fixed",
            }),
        ),
        Method::Stack => ("stack", None, None),
    };
    let report = BlendReport {
        method,
        space,
        weights,
        temperature: fit.temperature,
        members: member_reports,
        in_sample_log_loss: log_loss(labels, &fit.in_sample),
        in_sample_accuracy: accuracy(labels, &fit.in_sample),
        nested_log_loss: log_loss(labels, &fit.nested),
        nested_accuracy: accuracy(labels, &fit.nested),
        nested_fold_log_losses: fit.nested_fold_losses,
        nested_estimate: NESTED_ESTIMATE,
        n_folds: folds.n_folds(),
        folds_origin,
        n_train: labels.len(),
        n_test: members.test_ids.len(),
        submission: request.out.clone(),
        report: report_path.clone(),
        model: fit.model,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Invalid(format!("serialising the report: {e}")))?;
    std::fs::write(&report_path, json + "\n").map_err(Error::io(&report_path))?;
    Ok(report)
}

/// What `ensemble blend --apply` reads back from a `blend.json`.
#[derive(serde::Deserialize)]
struct SavedBlend {
    members: Vec<SavedMember>,
    model: FittedBlend,
}

#[derive(serde::Deserialize)]
struct SavedMember {
    name: String,
}

/// Applies the blend a `blend.json` saved to the members' (new) test predictions, without
/// OOF files or labels: the members must be those the blend was fitted on, in the same order
/// (checked by name). Writes the submission to `out` and returns the number of rows.
pub fn apply(saved_blend: &Path, members: &[MemberSource], out: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(saved_blend).map_err(Error::io(saved_blend))?;
    let saved: SavedBlend =
        serde_json::from_str(&text).map_err(|e| ensemble_core::Error::BadFile {
            path: saved_blend.to_owned(),
            line: e.line(),
            message: format!("not a blend.json of this version: {e}"),
        })?;
    let mismatch = |message: String| Error::Mismatch {
        path: saved_blend.to_owned(),
        message,
    };
    let recorded: Vec<&str> = saved.members.iter().map(|m| m.name.as_str()).collect();
    let given: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if recorded != given {
        return Err(mismatch(format!(
            "the blend was fitted on members {recorded:?}, in that order; --members gives {given:?}"
        )));
    }
    saved.model.check(members.len()).map_err(mismatch)?;
    let (test_ids, test) = MemberSet::load_test(members)?;
    let probs = saved.model.predict_submission(&test);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    Predictions::new(test_ids, probs).write(out)?;
    Ok(test.n_rows())
}

/// The members' folds (checked against `--folds-file` when both exist), else the folds file,
/// else stratified folds; with a description of where they came from.
fn resolve_folds(
    members: &MemberSet,
    choice: &FoldsChoice,
    request: &BlendRequest,
) -> Result<(Folds, String)> {
    let ids = &request.train_ids;
    let from_file = |path: &Path| Folds::read(path, ids);
    match (&members.folds, &choice.file) {
        (Some(shared), Some(path)) => {
            let given = from_file(path)?;
            let owner = format!("member {}", shared.member);
            members::check_same_folds(&shared.folds, &shared.path, &owner, &given, path, ids)?;
            Ok((shared.folds.clone(), describe_member_folds(shared)))
        }
        (Some(shared), None) => Ok((shared.folds.clone(), describe_member_folds(shared))),
        (None, Some(path)) => Ok((from_file(path)?, format!("--folds-file {}", path.display()))),
        (None, None) => Ok((
            Folds::stratified(&request.labels, choice.n_folds, choice.seed)?,
            format!("stratified from the labels, seed {}", choice.seed),
        )),
    }
}

fn describe_member_folds(shared: &SharedFolds) -> String {
    format!(
        "the members' folds.csv (member {}: {})",
        shared.member,
        shared.path.display()
    )
}

impl fmt::Display for BlendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match (self.method, self.space) {
            ("stack", _) => "stacked (multinomial logistic regression on log-probabilities)".into(),
            (_, Some(Space::Logit)) => format!(
                "weighted mean of log-probabilities, weights {}",
                self.weights.unwrap_or("auto")
            ),
            _ => format!(
                "weighted mean of probabilities, weights {}",
                self.weights.unwrap_or("auto")
            ),
        };
        writeln!(f, "Blend of {} member(s): {how}", self.members.len())?;
        if let Some(t) = self.temperature {
            writeln!(
                f,
                "Temperature {t:.4} (fitted on the blended log-probabilities)"
            )?;
        }
        writeln!(
            f,
            "{} training rows, {} test rows; {} folds from {}",
            self.n_train, self.n_test, self.n_folds, self.folds_origin
        )?;
        let nested_label = format!("blend, nested ({} folds)", self.n_folds);
        let width = self
            .members
            .iter()
            .map(|m| m.source.name.len())
            .chain([nested_label.len(), "member".len()])
            .max()
            .unwrap_or(0);
        writeln!(f)?;
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>12}  {:>8}",
            "member", "weight", "OOF log loss", "accuracy"
        )?;
        for member in &self.members {
            let weight = member.weight.map_or("-".into(), |w| format!("{w:.4}"));
            writeln!(
                f,
                "{:<width$}  {weight:>8}  {:>12.5}  {:>8.4}",
                member.source.name, member.oof_log_loss, member.oof_accuracy
            )?;
        }
        for (label, loss, acc) in [
            (
                "blend, in-sample",
                self.in_sample_log_loss,
                self.in_sample_accuracy,
            ),
            (
                nested_label.as_str(),
                self.nested_log_loss,
                self.nested_accuracy,
            ),
        ] {
            writeln!(f, "{label:<width$}  {:>8}  {loss:>12.5}  {acc:>8.4}", "")?;
        }
        writeln!(f)?;
        let nested = self.nested_estimate.replacen("; ", ";\n  ", 1);
        writeln!(f, "Nested estimate: {nested}.")?;
        write!(
            f,
            "Wrote {} and {}",
            self.submission.display(),
            self.report.display()
        )
    }
}

#[cfg(test)]
mod tests;
