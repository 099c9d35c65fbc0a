//! Blend members: where their files are, reading them, and checking them against the training
//! ids and against each other before anything is fitted.
use crate::{Error, Result};
use ensemble_core::metrics::EPS;
use ensemble_core::predictions::Predictions;
use ensemble_core::{Folds, Probs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where one member's predictions are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberSource {
    pub name: String,
    /// Out-of-fold predictions for every training id.
    pub oof: PathBuf,
    /// Predictions for every test id.
    pub submission: PathBuf,
    /// The `id,fold` assignment the OOF predictions were made with, when known.
    pub folds: Option<PathBuf>,
}

impl MemberSource {
    /// The syntax of a member on the command line, for `--help`.
    pub const SYNTAX: &'static str = "A member is either a run folder `DIR` holding `oof.csv`, \
        `submission.csv` and optionally `folds.csv` (named after the folder), or explicit files \
        `NAME=OOF.csv:SUBMISSION.csv[:FOLDS.csv]` (paths must not contain `:`).";

    /// A run folder: `oof.csv`, `submission.csv` and, if present, `folds.csv`.
    pub fn run_folder(dir: &Path) -> MemberSource {
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        let folds = dir.join("folds.csv");
        MemberSource {
            name,
            oof: dir.join("oof.csv"),
            submission: dir.join("submission.csv"),
            folds: folds.is_file().then_some(folds),
        }
    }
}

impl FromStr for MemberSource {
    type Err = Error;

    /// Parses `DIR` or `NAME=OOF.csv:SUBMISSION.csv[:FOLDS.csv]`.
    fn from_str(spec: &str) -> Result<MemberSource> {
        let Some((name, files)) = spec.split_once('=') else {
            return Ok(MemberSource::run_folder(Path::new(spec)));
        };
        let invalid = |why: &str| {
            Error::Invalid(format!(
                "member `{spec}`: {why}; expected NAME=OOF.csv:SUBMISSION.csv[:FOLDS.csv]"
            ))
        };
        if name.trim().is_empty() {
            return Err(invalid("the name is empty"));
        }
        let paths: Vec<&str> = files.split(':').collect();
        if !(2..=3).contains(&paths.len()) || paths.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid(
                "give two or three non-empty paths separated by `:`",
            ));
        }
        Ok(MemberSource {
            name: name.trim().to_string(),
            oof: PathBuf::from(paths[0]),
            submission: PathBuf::from(paths[1]),
            folds: paths.get(2).map(PathBuf::from),
        })
    }
}

/// Every member's probabilities for a list of rows, stored row-major: the members' predictions
/// for row 0, then for row 1, and so on. Each prediction is clipped at [`EPS`] and renormalised,
/// exactly as the metric treats it, so that its logarithm is finite.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberMatrix {
    n_members: usize,
    probs: Vec<Probs>,
}

impl MemberMatrix {
    /// From one prediction list per member, all of the same length.
    pub fn from_members(members: &[Vec<Probs>]) -> Result<MemberMatrix> {
        let n_members = members.len();
        if n_members == 0 {
            return Err(Error::Invalid("a blend needs at least one member".into()));
        }
        let n_rows = members[0].len();
        if members.iter().any(|m| m.len() != n_rows) {
            return Err(Error::Invalid(
                "every member needs one prediction per row".into(),
            ));
        }
        let probs = (0..n_rows)
            .flat_map(|row| members.iter().map(move |m| clip_renormalise(m[row])))
            .collect();
        Ok(MemberMatrix { n_members, probs })
    }

    pub fn n_members(&self) -> usize {
        self.n_members
    }

    pub fn n_rows(&self) -> usize {
        self.probs.len() / self.n_members
    }

    /// The members' predictions for `row`.
    pub fn row(&self, row: usize) -> &[Probs] {
        &self.probs[row * self.n_members..(row + 1) * self.n_members]
    }

    /// One member's predictions for every row.
    pub fn member(&self, member: usize) -> Vec<Probs> {
        (0..self.n_rows()).map(|r| self.row(r)[member]).collect()
    }

    /// The matrix of the given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> MemberMatrix {
        MemberMatrix {
            n_members: self.n_members,
            probs: rows
                .iter()
                .flat_map(|&r| self.row(r).iter().copied())
                .collect(),
        }
    }
}

/// Clipped to [EPS, 1 − EPS] and renormalised, as the metric does.
pub fn clip_renormalise(p: Probs) -> Probs {
    let clipped = p.map(|v| v.clamp(EPS, 1.0 - EPS));
    let total: f64 = clipped.iter().sum();
    clipped.map(|v| v / total)
}

/// The members' files, read, checked and aligned: OOF rows in the training ids' order, test
/// rows in the first member's submission order.
#[derive(Clone, Debug)]
pub struct MemberSet {
    pub sources: Vec<MemberSource>,
    pub oof: MemberMatrix,
    pub test_ids: Vec<String>,
    pub test: MemberMatrix,
    /// The folds the members were trained with, where any member gives them (they all agree).
    pub folds: Option<SharedFolds>,
}

/// The folds the members share, and the first member's file they were read from.
#[derive(Clone, Debug)]
pub struct SharedFolds {
    pub folds: Folds,
    pub path: PathBuf,
    pub member: String,
}

impl MemberSet {
    /// Reads every member and checks it against `train_ids` and the first member: the same OOF
    /// ids (the training ids), the same test ids, the same folds where folds are given. Every
    /// error names the member, the file and the id.
    pub fn load(sources: &[MemberSource], train_ids: &[String]) -> Result<MemberSet> {
        if sources.is_empty() {
            return Err(Error::Invalid("a blend needs at least one member".into()));
        }
        for (i, source) in sources.iter().enumerate() {
            if sources[..i].iter().any(|s| s.name == source.name) {
                return Err(Error::Invalid(format!(
                    "two members are named {}; name them with NAME=OOF.csv:SUBMISSION.csv",
                    source.name
                )));
            }
        }
        let train_row = index_ids(train_ids)
            .map_err(|id| Error::Invalid(format!("training id {id} appears twice")))?;
        let mut oof = Vec::with_capacity(sources.len());
        let mut shared: Option<SharedFolds> = None;
        for source in sources {
            let member_oof = read_aligned(&source.oof, train_ids, &train_row, "training ids")
                .map_err(Error::in_member(&source.name))?;
            oof.push(member_oof);
            if let Some(path) = &source.folds {
                let member_folds =
                    Folds::read(path, train_ids).map_err(Error::in_member(&source.name))?;
                if let Some(agreed) = &shared {
                    let owner = format!("member {}", agreed.member);
                    check_same_folds(
                        &agreed.folds,
                        &agreed.path,
                        &owner,
                        &member_folds,
                        path,
                        train_ids,
                    )
                    .map_err(Error::in_member(&source.name))?;
                } else {
                    shared = Some(SharedFolds {
                        folds: member_folds,
                        path: path.clone(),
                        member: source.name.clone(),
                    });
                }
            }
        }
        let (test_ids, test) = MemberSet::load_test(sources)?;
        Ok(MemberSet {
            sources: sources.to_vec(),
            oof: MemberMatrix::from_members(&oof)?,
            test_ids,
            test,
            folds: shared,
        })
    }

    /// The members' test predictions alone, rows in the first member's order; every member
    /// must cover exactly the first member's test ids.
    pub fn load_test(sources: &[MemberSource]) -> Result<(Vec<String>, MemberMatrix)> {
        let Some(first_source) = sources.first() else {
            return Err(Error::Invalid("a blend needs at least one member".into()));
        };
        let Predictions { ids, probs } = Predictions::read(&first_source.submission)
            .map_err(Error::in_member(&first_source.name))?;
        let test_row = index_ids(&ids).expect("ids checked unique on reading");
        let reference = format!(
            "test ids of member {}'s {}",
            first_source.name,
            first_source.submission.display()
        );
        let mut test = vec![probs];
        for source in &sources[1..] {
            let member_test = read_aligned(&source.submission, &ids, &test_row, &reference)
                .map_err(Error::in_member(&source.name))?;
            test.push(member_test);
        }
        Ok((ids, MemberMatrix::from_members(&test)?))
    }
}

/// Fails with `found` folds (from `found_path`) unless they put every id where `agreed` does.
pub(crate) fn check_same_folds(
    agreed: &Folds,
    agreed_path: &Path,
    agreed_owner: &str,
    found: &Folds,
    found_path: &Path,
    ids: &[String],
) -> Result<()> {
    match (0..ids.len()).find(|&row| agreed.fold_of(row) != found.fold_of(row)) {
        None => Ok(()),
        Some(row) => Err(Error::Mismatch {
            path: found_path.to_owned(),
            message: format!(
                "id {} is in fold {}, but in fold {} in {agreed_owner}'s {}; all members must \
                 share the same folds",
                ids[row],
                found.fold_of(row),
                agreed.fold_of(row),
                agreed_path.display()
            ),
        }),
    }
}

/// Position of each id; fails with the first id that appears twice.
fn index_ids(ids: &[String]) -> Result<HashMap<&str, usize>, String> {
    let mut index = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if index.insert(id.as_str(), row).is_some() {
            return Err(id.clone());
        }
    }
    Ok(index)
}

/// Reads a prediction file and puts its rows in the order of `ids` (described as `reference`),
/// which it must cover exactly.
fn read_aligned(
    path: &Path,
    ids: &[String],
    row_of: &HashMap<&str, usize>,
    reference: &str,
) -> Result<Vec<Probs>> {
    let predictions = Predictions::read(path)?;
    let mismatch = |message: String| Error::Mismatch {
        path: path.to_owned(),
        message,
    };
    let mut aligned: Vec<Option<Probs>> = vec![None; ids.len()];
    for (id, p) in predictions.ids.iter().zip(&predictions.probs) {
        let &row = row_of
            .get(id.as_str())
            .ok_or_else(|| mismatch(format!("id {id} is not among the {reference}")))?;
        aligned[row] = Some(*p);
    }
    aligned
        .into_iter()
        .zip(ids)
        .map(|(p, id)| {
            p.ok_or_else(|| {
                mismatch(format!(
                    "id {id}, one of the {reference}, has no prediction"
                ))
            })
        })
        .collect()
}
