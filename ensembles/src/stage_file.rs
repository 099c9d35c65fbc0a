//! The shared reading of small stage files (`folds.csv`, `oof.csv`, `submission.csv`).
use crate::{Error, Result};
use std::path::Path;

/// A stage file's text, its header checked.
pub(crate) struct StageFile<'p> {
    path: &'p Path,
    text: String,
}

impl<'p> StageFile<'p> {
    pub fn read(path: &'p Path, header: &str) -> Result<StageFile<'p>> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let file = StageFile { path, text };
        match file.text.lines().next() {
            Some(found) if found.trim() == header => Ok(file),
            Some(found) => {
                Err(file.error(1, format!("the header must be `{header}`, found `{found}`")))
            }
            None => Err(file.error(1, "the file is empty".into())),
        }
    }

    /// The non-empty lines after the header, with their 1-based line numbers.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &str)> {
        self.text
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| (index + 1, line))
    }

    /// An error about line `line` of this file (0: the file as a whole).
    pub fn error(&self, line: usize, message: String) -> Error {
        Error::BadFile {
            path: self.path.to_owned(),
            line,
            message,
        }
    }
}
