//! Prediction files in the submission's columns: `id,winner_model_a,winner_model_b,winner_tie`.
//! Every member writes `oof.csv` and `submission.csv` in this format; the blender reads them.
use crate::stage_file::StageFile;
use crate::{Error, Probs, Result, CLASS_COLUMNS};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// Rows sum to 1 within this tolerance in any prediction file we accept.
pub const SUM_TOLERANCE: f64 = 1e-4;

/// Probabilities of the three outcomes for a list of battle ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    pub ids: Vec<String>,
    pub probs: Vec<Probs>,
}

impl Predictions {
    pub fn new(ids: Vec<String>, probs: Vec<Probs>) -> Predictions {
        assert_eq!(ids.len(), probs.len(), "one row of probabilities per id");
        Predictions { ids, probs }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Writes the file with full precision, so that reading it back gives the same numbers.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = format!("id,{}\n", CLASS_COLUMNS.join(","));
        for (id, p) in self.ids.iter().zip(&self.probs) {
            writeln!(text, "{id},{},{},{}", p[0], p[1], p[2]).expect("writing to a String");
        }
        std::fs::write(path, text).map_err(Error::io(path))
    }

    /// Reads and checks a prediction file: the exact header, unique ids, finite probabilities
    /// in [0, 1] that sum to 1 within [`SUM_TOLERANCE`]. Errors name the file, line and id.
    pub fn read(path: &Path) -> Result<Predictions> {
        let file = StageFile::read(path, &format!("id,{}", CLASS_COLUMNS.join(",")))?;
        let bad = |line: usize, message: String| file.error(line, message);
        let mut seen = HashSet::new();
        let (mut ids, mut probs) = (Vec::new(), Vec::new());
        for (line_no, line) in file.rows() {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != 4 {
                return Err(bad(
                    line_no,
                    format!("expected 4 fields, found {}", fields.len()),
                ));
            }
            let id = fields[0].to_string();
            let mut p = [0.0; 3];
            for (k, field) in fields[1..].iter().enumerate() {
                p[k] = field
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && (0.0..=1.0).contains(v))
                    .ok_or_else(|| {
                        bad(
                            line_no,
                            format!(
                                "id {id}: {} = {field:?} is not a probability",
                                CLASS_COLUMNS[k]
                            ),
                        )
                    })?;
            }
            let sum: f64 = p.iter().sum();
            if (sum - 1.0).abs() > SUM_TOLERANCE {
                return Err(bad(
                    line_no,
                    format!("id {id}: probabilities sum to {sum}, not 1"),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(bad(line_no, format!("id {id} appears twice")));
            }
            ids.push(id);
            probs.push(p);
        }
        Ok(Predictions { ids, probs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("predictions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn predictions_round_trip_exactly() {
        let path = temp_file("rt.csv");
        let p = Predictions::new(
            vec!["7".into(), "136060".into()],
            vec![[0.1, 0.2, 0.7], [1.0 / 3.0, 0.5, 1.0 / 6.0]],
        );
        p.write(&path).unwrap();
        assert_eq!(Predictions::read(&path).unwrap(), p);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("id,winner_model_a,winner_model_b,winner_tie\n7,0.1,0.2,0.7\n"));
    }

    #[test]
    fn bad_prediction_files_are_rejected_with_line_and_id() {
        let path = temp_file("bad.csv");
        let header = "id,winner_model_a,winner_model_b,winner_tie\n";
        for (body, needle) in [
            (
                "1,0.5,0.5,0\n2,0.5,0.6,0\n",
                "line 3: id 2: probabilities sum to 1.1",
            ),
            ("1,0.5,0.5,0\n1,0.5,0.5,0\n", "line 3: id 1 appears twice"),
            (
                "1,NaN,0.5,0.5\n",
                "id 1: winner_model_a = \"NaN\" is not a probability",
            ),
            ("1,1.5,-0.5,0\n", "is not a probability"),
            ("1,0.5,0.5\n", "expected 4 fields, found 3"),
        ] {
            std::fs::write(&path, format!("{header}{body}")).unwrap();
            let message = Predictions::read(&path).unwrap_err().to_string();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            assert!(message.contains("bad.csv"));
        }
        std::fs::write(&path, "id,a,b,c\n").unwrap();
        let message = Predictions::read(&path).unwrap_err().to_string();
        assert!(message.contains("line 1: the header must be"), "{message}");
    }
}
