//! Prediction files in the submission's columns: `id,winner_model_a,winner_model_b,winner_tie`.
//! Every member writes `oof.csv` and `submission.csv` in this format; the blender reads them.
use crate::stage_file::{self, StageFile};
use crate::{Probs, Result, CLASS_COLUMNS};
use std::collections::HashSet;
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
        let rows = self.ids.iter().zip(&self.probs).map(|(id, p)| {
            [
                id.clone(),
                p[0].to_string(),
                p[1].to_string(),
                p[2].to_string(),
            ]
        });
        stage_file::write(path, &header(), rows)
    }

    /// Reads and checks a prediction file: the exact header, unique ids, finite probabilities
    /// in [0, 1] that sum to 1 within [`SUM_TOLERANCE`]. Errors name the file, line and id.
    pub fn read(path: &Path) -> Result<Predictions> {
        let file = StageFile::read(path, &header())?;
        let bad = |line: usize, message: String| file.error(line, message);
        let mut seen = HashSet::new();
        let (mut ids, mut probs) = (Vec::new(), Vec::new());
        for (line_no, fields) in file.rows() {
            let id = fields[0].to_string();
            if id.trim().is_empty() {
                return Err(bad(line_no, "the id is empty".into()));
            }
            let mut p = [0.0; 3];
            for (k, field) in fields.iter().skip(1).enumerate() {
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

/// `id,winner_model_a,winner_model_b,winner_tie`.
fn header() -> [&'static str; 4] {
    ["id", CLASS_COLUMNS[0], CLASS_COLUMNS[1], CLASS_COLUMNS[2]]
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
    fn ids_with_commas_and_quotes_round_trip() {
        let path = temp_file("quoted.csv");
        let p = Predictions::new(
            vec!["a,1".into(), "say \"x\"".into()],
            vec![[0.5, 0.5, 0.0]; 2],
        );
        p.write(&path).unwrap();
        assert_eq!(Predictions::read(&path).unwrap(), p);
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
            (
                "1,0.5,0.5\n",
                "line 2: expected 4 fields (as the header), found 3",
            ),
            ("\"\",0.5,0.5,0\n", "line 2: the id is empty"),
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
