//! K-fold assignments: made stratified and seeded, stored as `folds.csv` (`id,fold`) so that
//! every member of the ensemble holds out the same rows.
use crate::stage_file::{self, StageFile};
use crate::{Error, Outcome, Result};
use rand::{seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The fold of each training row, aligned with the training ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folds {
    assignment: Vec<usize>,
    n_folds: usize,
}

impl Folds {
    /// Stratified folds: each class is shuffled (seeded) and dealt round-robin, continuing
    /// where the previous class stopped so fold sizes differ by at most one.
    pub fn stratified(labels: &[Outcome], n_folds: usize, seed: u64) -> Result<Folds> {
        if n_folds < 2 {
            return Err(Error::Invalid(format!(
                "need at least 2 folds, got {n_folds}"
            )));
        }
        if labels.len() < n_folds {
            return Err(Error::Invalid(format!(
                "{} training rows cannot fill {n_folds} folds",
                labels.len()
            )));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut assignment = vec![0; labels.len()];
        let mut next_fold = 0;
        for class in Outcome::ALL {
            let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
            rows.shuffle(&mut rng);
            for row in rows {
                assignment[row] = next_fold;
                next_fold = (next_fold + 1) % n_folds;
            }
        }
        Ok(Folds {
            assignment,
            n_folds,
        })
    }

    /// Stratified folds that keep each group whole: rows with the same `groups` key (e.g. the
    /// same prompt) are held out together, so that no fold is scored on a prompt it trained
    /// on. Groups are taken largest first (ties in seeded order) and placed greedily to keep
    /// each class's share even across folds, as sklearn's `StratifiedGroupKFold` aims to.
    pub fn stratified_grouped<K: std::hash::Hash + Eq>(
        labels: &[Outcome],
        groups: &[K],
        n_folds: usize,
        seed: u64,
    ) -> Result<Folds> {
        if n_folds < 2 {
            return Err(Error::Invalid(format!(
                "need at least 2 folds, got {n_folds}"
            )));
        }
        if groups.len() != labels.len() {
            return Err(Error::Invalid("one group key per row is needed".into()));
        }
        let mut index: HashMap<&K, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (row, key) in groups.iter().enumerate() {
            let group = *index.entry(key).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[group].push(row);
        }
        if members.len() < n_folds {
            return Err(Error::Invalid(format!(
                "{} distinct groups cannot fill {n_folds} folds",
                members.len()
            )));
        }
        let mut class_totals = [0f64; 3];
        labels.iter().for_each(|l| class_totals[l.index()] += 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        members.shuffle(&mut rng);
        members.sort_by_key(|rows| std::cmp::Reverse(rows.len()));
        // Each fold's share of each class; a group goes where the sum of squared shares grows
        // least, which keeps every class spread evenly and the fold sizes close. Ties (a group
        // whose classes no fold holds yet) go to the fold with the fewest rows: taking the
        // first would stack groups of different classes into one fold and leave others empty.
        let mut shares = vec![[0f64; 3]; n_folds];
        let mut sizes = vec![0usize; n_folds];
        let mut assignment = vec![0; labels.len()];
        for rows in &members {
            let mut added = [0f64; 3];
            rows.iter()
                .for_each(|&r| added[labels[r].index()] += 1.0 / class_totals[labels[r].index()]);
            let growth = |fold: &[f64; 3]| -> f64 {
                (0..3).map(|c| added[c] * (2.0 * fold[c] + added[c])).sum()
            };
            let least = (0..n_folds)
                .map(|f| growth(&shares[f]))
                .fold(f64::INFINITY, f64::min);
            let fold = (0..n_folds)
                .filter(|&f| growth(&shares[f]) <= least + 1e-12)
                .min_by_key(|&f| sizes[f])
                .unwrap_or(0);
            (0..3).for_each(|c| shares[fold][c] += added[c]);
            sizes[fold] += rows.len();
            rows.iter().for_each(|&r| assignment[r] = fold);
        }
        Ok(Folds {
            assignment,
            n_folds,
        })
    }

    pub fn n_folds(&self) -> usize {
        self.n_folds
    }

    /// The number of training rows assigned.
    pub fn len(&self) -> usize {
        self.assignment.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assignment.is_empty()
    }

    /// The fold of training row `row`.
    pub fn fold_of(&self, row: usize) -> usize {
        self.assignment[row]
    }

    /// Rows trained on and rows held out in `fold`, in that order, both ascending.
    pub fn split(&self, fold: usize) -> (Vec<usize>, Vec<usize>) {
        (0..self.assignment.len()).partition(|&row| self.assignment[row] != fold)
    }

    pub fn write(&self, path: &Path, ids: &[String]) -> Result<()> {
        let rows = ids
            .iter()
            .zip(&self.assignment)
            .map(|(id, fold)| [id.clone(), fold.to_string()]);
        stage_file::write(path, &["id", "fold"], rows)
    }

    /// Reads `folds.csv` and aligns it with `ids`: every id must appear exactly once, and the
    /// folds must be numbered 0..K-1 with none empty.
    pub fn read(path: &Path, ids: &[String]) -> Result<Folds> {
        let file = StageFile::read(path, &["id", "fold"])?;
        let bad = |line: usize, message: String| file.error(line, message);
        let numbering = format!(
            "folds are numbered 0, 1, .., K-1 without gaps, with K from 2 to the {} training \
             rows",
            ids.len()
        );
        let row_of: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(row, id)| (id.as_str(), row))
            .collect();
        let mut assignment: Vec<Option<usize>> = vec![None; ids.len()];
        // The highest fold and the line it first appears on, to point at when a fold is empty.
        let mut highest: Option<(usize, usize)> = None;
        for (line_no, fields) in file.rows() {
            let (id, text) = (&fields[0], &fields[1]);
            let fold = match text.trim().parse::<usize>() {
                Ok(fold) if fold < ids.len() => fold,
                _ => {
                    return Err(bad(
                        line_no,
                        format!("id {id}: fold {text:?} is not a fold number: {numbering}"),
                    ))
                }
            };
            let &row = row_of
                .get(id)
                .ok_or_else(|| bad(line_no, format!("id {id} is not in the training data")))?;
            if assignment[row].is_some() {
                return Err(bad(line_no, format!("id {id} appears twice")));
            }
            assignment[row] = Some(fold);
            if highest.is_none_or(|(top, _)| fold > top) {
                highest = Some((fold, line_no));
            }
        }
        let assignment: Vec<usize> = assignment
            .iter()
            .enumerate()
            .map(|(row, fold)| {
                fold.ok_or_else(|| file.file_error(format!("training id {} has no fold", ids[row])))
            })
            .collect::<Result<_>>()?;
        let Some((top, top_line)) = highest else {
            return Err(file.file_error("no rows after the header".into()));
        };
        let n_folds = top + 1;
        let mut used = vec![false; n_folds];
        assignment.iter().for_each(|&fold| used[fold] = true);
        if let Some(empty) = used.iter().position(|&u| !u) {
            return Err(bad(
                top_line,
                format!("fold {top}, but fold {empty} of 0..{n_folds} holds no row: {numbering}"),
            ));
        }
        if n_folds < 2 {
            return Err(file.file_error(format!("every id is in fold 0: {numbering}")));
        }
        Ok(Folds {
            assignment,
            n_folds,
        })
    }
}

/// The rows whose loss decides when a fold's boosting stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoppingRows {
    /// The next fold (K+1 mod the number of folds), left out of training: the held-out fold
    /// is never looked at before it is predicted, so the OOF score is honest. Fold models
    /// train on K−2 folds.
    InnerFold,
    /// The held-out fold itself (the common Kaggle notebook practice): fold models train on
    /// K−1 folds, but the round count is chosen on the rows the OOF score is computed on,
    /// which flatters that score and the blender's estimate built on it.
    HeldOut,
}

impl std::str::FromStr for StoppingRows {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<StoppingRows, String> {
        match text {
            "inner-fold" => Ok(StoppingRows::InnerFold),
            "held-out" => Ok(StoppingRows::HeldOut),
            _ => Err(format!("`{text}`: expected inner-fold or held-out")),
        }
    }
}

impl Folds {
    /// The folds of the rows outside fold `fold`, renumbered 0..K-2 in order, and for each of
    /// those rows its index here: a nested CV within the other folds.
    pub fn excluding(&self, fold: usize) -> Result<(Folds, Vec<usize>)> {
        if fold >= self.n_folds {
            return Err(Error::Invalid(format!(
                "fold {fold} of {} folds",
                self.n_folds
            )));
        }
        let rows: Vec<usize> = (0..self.len())
            .filter(|&r| self.fold_of(r) != fold)
            .collect();
        let assignment = rows
            .iter()
            .map(|&r| self.fold_of(r) - usize::from(self.fold_of(r) > fold))
            .collect();
        let inner = Folds {
            assignment,
            n_folds: self.n_folds - 1,
        };
        Ok((inner, rows))
    }
}

/// The rows one fold's model trains on, watches for early stopping, and predicts.
#[derive(Debug, PartialEq)]
pub struct FoldRows {
    pub train: Vec<usize>,
    pub stopping: Vec<usize>,
    pub stopping_fold: usize,
    pub held_out: Vec<usize>,
}

impl Folds {
    /// The rows fold `fold`'s model trains on, watches for early stopping and predicts.
    /// Stopping on an inner fold needs at least 3 folds.
    pub fn rows_for(&self, fold: usize, stopping_on: StoppingRows) -> Result<FoldRows> {
        let n_folds = self.n_folds();
        let stopping_fold = match stopping_on {
            StoppingRows::InnerFold if n_folds < 3 => {
                return Err(Error::Invalid(format!(
                    "early stopping on an inner fold needs at least 3 folds (one held out, one \
                     watched, one or more trained on), not {n_folds}; or stop on the held-out \
                     fold"
                )))
            }
            StoppingRows::InnerFold => (fold + 1) % n_folds,
            StoppingRows::HeldOut => fold,
        };
        let rows = 0..self.len();
        let in_fold =
            |k: usize| -> Vec<usize> { rows.clone().filter(|&r| self.fold_of(r) == k).collect() };
        Ok(FoldRows {
            train: rows
                .clone()
                .filter(|&r| ![fold, stopping_fold].contains(&self.fold_of(r)))
                .collect(),
            stopping: in_fold(stopping_fold),
            stopping_fold,
            held_out: in_fold(fold),
        })
    }
}

/// Prompts whose battles sit in more than one fold, and how many battles they have: what
/// flatters an OOF score when a model memorises prompts (metrics.json records it).
#[derive(Clone, Copy, Serialize, Default, Debug, PartialEq)]
pub struct SharedPrompts {
    pub prompts: usize,
    pub battles: usize,
}

impl SharedPrompts {
    /// The warning a run prints when some prompt spans folds.
    pub fn warning(&self) -> Option<String> {
        (self.prompts > 0).then(|| {
            format!(
                "warning: {} prompts ({} battles) appear in more than one fold: the OOF score \
                 is flattered by prompts seen in training; --group-by prompt keeps each prompt \
                 in one fold",
                self.prompts, self.battles
            )
        })
    }
}

impl Folds {
    /// The prompts (one per row, compared whole) whose rows sit in more than one fold.
    pub fn prompts_across_folds<K: std::hash::Hash + Eq>(&self, prompts: &[K]) -> SharedPrompts {
        // Per prompt: its first fold, its rows, and whether another fold holds one of them.
        let mut folds_of: HashMap<&K, (usize, usize, bool)> = HashMap::new();
        for (row, prompt) in prompts.iter().enumerate() {
            let fold = self.fold_of(row);
            let entry = folds_of.entry(prompt).or_insert((fold, 0, false));
            entry.1 += 1;
            entry.2 |= entry.0 != fold;
        }
        let mut shared = SharedPrompts::default();
        for (_, battles, spread) in folds_of.into_values() {
            if spread {
                shared.prompts += 1;
                shared.battles += battles;
            }
        }
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups of one class each (every battle of a prompt won by the same side) still fill
    /// every fold, two groups a fold.
    #[test]
    fn single_class_groups_fill_every_fold() {
        let labels: Vec<Outcome> = (0..24).map(|i| Outcome::ALL[i % 3]).collect();
        let groups: Vec<usize> = (0..24).map(|i| i % 6).collect();
        let folds = Folds::stratified_grouped(&labels, &groups, 3, 42).unwrap();
        let mut sizes = [0; 3];
        (0..24).for_each(|row| sizes[folds.fold_of(row)] += 1);
        assert_eq!(sizes, [8, 8, 8]);
        for row in 0..24 {
            assert_eq!(folds.fold_of(row), folds.fold_of(row % 6));
        }
    }

    /// Prompt a spans folds 0 and 1 (2 battles), b sits in fold 0 twice, c alone in fold 1.
    #[test]
    fn prompts_across_folds_counts_spread_prompts_and_their_battles() {
        let folds = Folds {
            assignment: vec![0, 1, 0, 0, 1],
            n_folds: 2,
        };
        let shared = folds.prompts_across_folds(&["a", "a", "b", "b", "c"]);
        assert_eq!(
            shared,
            SharedPrompts {
                prompts: 1,
                battles: 2
            }
        );
        assert!(shared
            .warning()
            .unwrap()
            .starts_with("warning: 1 prompts (2 battles)"));
        assert_eq!(
            folds
                .prompts_across_folds(&["a", "b", "c", "d", "e"])
                .warning(),
            None
        );
    }

    fn labels(n: usize) -> Vec<Outcome> {
        (0..n).map(|i| Outcome::ALL[(i * 7 + i / 3) % 3]).collect()
    }

    #[test]
    fn stratified_folds_balance_sizes_and_classes() {
        let labels = labels(103);
        let folds = Folds::stratified(&labels, 10, 42).unwrap();
        for fold in 0..10 {
            let (train, held_out) = folds.split(fold);
            assert_eq!(train.len() + held_out.len(), 103);
            assert!(
                (10..=11).contains(&held_out.len()),
                "fold {fold}: {}",
                held_out.len()
            );
            assert!(
                train.iter().all(|r| !held_out.contains(r)),
                "no row on both sides"
            );
            for class in Outcome::ALL {
                let total = labels.iter().filter(|&&l| l == class).count() as f64;
                let held = held_out.iter().filter(|&&r| labels[r] == class).count() as f64;
                assert!(
                    (held - total / 10.0).abs() <= 1.0,
                    "class {class:?} in fold {fold}"
                );
            }
        }
        assert_eq!(folds, Folds::stratified(&labels, 10, 42).unwrap(), "seeded");
        assert_ne!(folds, Folds::stratified(&labels, 10, 43).unwrap());
    }

    #[test]
    fn grouped_folds_keep_groups_whole_and_balance_classes() {
        let labels = labels(600);
        // 150 groups of 1 to 7 rows.
        let groups: Vec<usize> = (0..600)
            .map(|i| (i * 37 % 600) / 4 + usize::from(i % 5 == 0))
            .collect();
        let folds = Folds::stratified_grouped(&labels, &groups, 5, 42).unwrap();
        for row in 0..600 {
            for other in 0..600 {
                if groups[row] == groups[other] {
                    assert_eq!(folds.fold_of(row), folds.fold_of(other), "group split");
                }
            }
        }
        for fold in 0..5 {
            let (_, held_out) = folds.split(fold);
            assert!(
                (110..=130).contains(&held_out.len()),
                "fold {fold}: {}",
                held_out.len()
            );
            for class in Outcome::ALL {
                let total = labels.iter().filter(|&&l| l == class).count() as f64;
                let held = held_out.iter().filter(|&&r| labels[r] == class).count() as f64;
                assert!(
                    (held / total - 0.2).abs() < 0.03,
                    "class {class:?} in fold {fold}"
                );
            }
        }
        assert_eq!(
            folds,
            Folds::stratified_grouped(&labels, &groups, 5, 42).unwrap(),
            "seeded"
        );
        assert_ne!(
            folds,
            Folds::stratified_grouped(&labels, &groups, 5, 43).unwrap()
        );
        let one_group = vec![0; 600];
        let error = Folds::stratified_grouped(&labels, &one_group, 5, 42).unwrap_err();
        assert!(error
            .to_string()
            .contains("1 distinct groups cannot fill 5 folds"));
    }

    #[test]
    fn folds_round_trip_through_csv_in_any_row_order() {
        let dir = std::env::temp_dir().join(format!("folds-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<String> = (0..30).map(|i| format!("{}", 1000 + i)).collect();
        let folds = Folds::stratified(&labels(30), 3, 1).unwrap();
        let path = dir.join("folds.csv");
        folds.write(&path, &ids).unwrap();
        let mut reordered = ids.clone();
        reordered.reverse();
        let back = Folds::read(&path, &reordered).unwrap();
        for (row, id) in reordered.iter().enumerate() {
            let original_row = ids.iter().position(|i| i == id).unwrap();
            assert_eq!(back.fold_of(row), folds.fold_of(original_row));
        }
    }

    #[test]
    fn reading_folds_rejects_unknown_missing_and_duplicate_ids() {
        let dir = std::env::temp_dir().join(format!("folds-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("folds.csv");
        let ids: Vec<String> = ["1", "2", "3"].map(String::from).to_vec();
        for (text, needle) in [
            (
                "id,fold\n1,0\n2,1\n9,0\n",
                "id 9 is not in the training data",
            ),
            ("id,fold\n1,0\n2,1\n", "training id 3 has no fold"),
            (
                "id,fold\n1,0\n2,1\n2,1\n3,0\n",
                "line 4: id 2 appears twice",
            ),
            (
                "id,fold\n1,0\n2,x\n3,0\n",
                "line 3: id 2: fold \"x\" is not a fold number: folds are numbered 0, 1, .., K-1 \
                 without gaps, with K from 2 to the 3 training rows",
            ),
            (
                "id,fold\n1,0\n2,18446744073709551615\n3,1\n",
                "line 3: id 2: fold \"18446744073709551615\" is not a fold number",
            ),
            (
                "id,fold\n1,0\n2,-1\n3,1\n",
                "line 3: id 2: fold \"-1\" is not",
            ),
            (
                "id,fold\n1,0\n2,1\n3,3\n",
                "line 4: id 3: fold \"3\" is not",
            ),
            (
                "id,fold\n1,0\n2,2\n3,0\n",
                "line 3: fold 2, but fold 1 of 0..3 holds no row: folds are numbered",
            ),
            (
                "id,fold\n1,0\n2,0\n3,0\n",
                "every id is in fold 0: folds are",
            ),
            ("fold,id\n", "header"),
        ] {
            std::fs::write(&path, text).unwrap();
            let message = Folds::read(&path, &ids).unwrap_err().to_string();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            assert!(message.contains("folds.csv"), "{message:?} names no file");
        }
    }

    #[test]
    fn inner_fold_stopping_never_trains_on_or_watches_the_held_out_fold() {
        let labels: Vec<Outcome> = (0..60).map(|i| Outcome::ALL[i % 3]).collect();
        let folds = Folds::stratified(&labels, 4, 5).unwrap();
        for fold in 0..4 {
            let inner = folds.rows_for(fold, StoppingRows::InnerFold).unwrap();
            assert_eq!(inner.stopping_fold, (fold + 1) % 4);
            assert!(inner.held_out.iter().all(|&r| folds.fold_of(r) == fold));
            assert!(inner
                .stopping
                .iter()
                .all(|&r| folds.fold_of(r) == inner.stopping_fold));
            for row in &inner.held_out {
                assert!(!inner.train.contains(row) && !inner.stopping.contains(row));
            }
            let mut all = [&inner.train[..], &inner.stopping, &inner.held_out].concat();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..60).collect::<Vec<_>>(),
                "every row in exactly one part"
            );

            // The peeking protocol watches the held-out fold itself, and trains on the rest.
            let peeking = folds.rows_for(fold, StoppingRows::HeldOut).unwrap();
            assert_eq!(peeking.stopping, peeking.held_out);
            assert_eq!(peeking.train.len() + peeking.held_out.len(), 60);
        }
        let two = Folds::stratified(&labels, 2, 5).unwrap();
        assert!(two.rows_for(0, StoppingRows::InnerFold).is_err());
        assert!(two.rows_for(0, StoppingRows::HeldOut).is_ok());
    }

    #[test]
    fn excluding_a_fold_renumbers_the_others() {
        let folds = Folds {
            assignment: vec![0, 2, 1, 3, 2, 0, 1, 3],
            n_folds: 4,
        };
        let (inner, rows) = folds.excluding(1).unwrap();
        assert_eq!(rows, [0, 1, 3, 4, 5, 7]);
        assert_eq!(inner.assignment, [0, 1, 2, 1, 0, 2]);
        assert_eq!(inner.n_folds(), 3);
        assert!(folds.excluding(4).is_err());
    }
}
