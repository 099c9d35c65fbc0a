//! The one reader and writer of the small CSV files stages hand each other (`folds.csv`,
//! `oof.csv`, `submission.csv`, logits, `importance.csv`), on the csv crate: quoted fields
//! (an id with a comma, an n-gram name with a quote) round-trip, a UTF-8 byte-order mark is
//! ignored, and every error names the file and the line.
//!
//! Writes are atomic: the text goes to a temporary file beside the target, which is then
//! renamed over it. A crash leaves the old file or the new one, never half of one, and a
//! symbolic link at the target is replaced, not written through.
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A stage file's rows after its header, each with its 1-based line number.
pub struct StageFile {
    path: PathBuf,
    rows: Vec<(usize, csv::StringRecord)>,
}

impl StageFile {
    /// Reads the file and checks its header (fields compared after trimming spaces). Blank
    /// lines are skipped; a row with another number of fields than the header is an error.
    pub fn read(path: &Path, header: &[&str]) -> Result<StageFile> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let bad = |line: u64, message: String| Error::BadFile {
            path: path.to_owned(),
            line: line as usize,
            message,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes);
        let mut lines = RecordLines::new(bytes);
        let mut records = reader.records();
        let found = match records.next() {
            None => return Err(bad(1, "the file is empty".into())),
            Some(record) => record.map_err(|e| csv_error(path, &mut lines, e))?,
        };
        if found.len() != header.len() || found.iter().zip(header).any(|(f, h)| f.trim() != *h) {
            return Err(bad(
                1,
                format!(
                    "the header must be `{}`, found `{}`",
                    header.join(","),
                    found.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        let mut rows = Vec::new();
        for record in records {
            let record = record.map_err(|e| csv_error(path, &mut lines, e))?;
            rows.push((lines.at(record.position()), record));
        }
        Ok(StageFile {
            path: path.to_owned(),
            rows,
        })
    }

    /// The rows after the header, with their line numbers.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &csv::StringRecord)> {
        self.rows.iter().map(|(line, record)| (*line, record))
    }

    /// An error about line `line` of this file.
    pub fn error(&self, line: usize, message: String) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            line,
            message,
        }
    }

    /// An error about the file as a whole (no one line is at fault).
    pub fn file_error(&self, message: String) -> Error {
        Error::Mismatch {
            path: self.path.clone(),
            message,
        }
    }
}

/// Line numbers of CSV records, from the byte offsets the csv crate reports, counted forward
/// as records are read: the line an editor shows (a quoted field may span lines). The csv
/// crate's own line numbers skip blank lines, and a record's position is where the reader
/// resumed, before any blank lines.
pub struct RecordLines<'b> {
    bytes: &'b [u8],
    counted_to: usize,
    line: usize,
}

impl<'b> RecordLines<'b> {
    pub fn new(bytes: &'b [u8]) -> RecordLines<'b> {
        RecordLines {
            bytes,
            counted_to: 0,
            line: 1,
        }
    }

    /// The line of the record (or error) at `position`; positions must not go backwards.
    /// 0 where the csv crate gives no position.
    pub fn at(&mut self, position: Option<&csv::Position>) -> usize {
        let Some(position) = position else {
            return 0;
        };
        let mut start = (position.byte() as usize).clamp(self.counted_to, self.bytes.len());
        while matches!(self.bytes.get(start), Some(b'\n' | b'\r')) {
            start += 1;
        }
        self.line += self.bytes[self.counted_to..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.counted_to = start;
        self.line
    }
}

/// The csv crate's error in our words, with the line where it has one.
fn csv_error(path: &Path, lines: &mut RecordLines, error: csv::Error) -> Error {
    let line = lines.at(error.position());
    let message = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields (as the header), found {len}"),
        csv::ErrorKind::Utf8 { .. } => {
            "not UTF-8 text (a UTF-16 or Latin-1 file? save it as UTF-8)".into()
        }
        _ => error.to_string(),
    };
    if line == 0 {
        return Error::Mismatch {
            path: path.to_owned(),
            message,
        };
    }
    Error::BadFile {
        path: path.to_owned(),
        line,
        message,
    }
}

/// Writes `header` and `rows` as CSV (fields quoted where needed), atomically.
pub fn write<R, F>(path: &Path, header: &[&str], rows: R) -> Result<()>
where
    R: IntoIterator,
    R::Item: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    let invalid = |e: csv::Error| Error::Invalid(format!("writing {}: {e}", path.display()));
    writer.write_record(header).map_err(invalid)?;
    for row in rows {
        writer.write_record(row).map_err(invalid)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let temporary = path.with_file_name(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes).map_err(Error::io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(|cause| {
        let _ = std::fs::remove_file(&temporary);
        Error::Io {
            path: path.to_owned(),
            cause,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stage-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn quoted_fields_round_trip_and_a_bom_is_ignored() {
        let path = temp_file("quoted.csv");
        let rows = [["a,b", "1"], ["say \"hi\"", "2"], ["line\nbreak", "3"]];
        write(&path, &["id", "fold"], rows).unwrap();
        let file = StageFile::read(&path, &["id", "fold"]).unwrap();
        let read: Vec<(usize, Vec<String>)> = file
            .rows()
            .map(|(line, r)| (line, r.iter().map(str::to_owned).collect()))
            .collect();
        assert_eq!(read[0], (2, vec!["a,b".to_owned(), "1".to_owned()]));
        assert_eq!(read[1].1, ["say \"hi\"", "2"]);
        assert_eq!(read[2].1, ["line\nbreak", "3"]);

        std::fs::write(&path, "\u{feff}id,fold\n7,1\n\n8,0\n").unwrap();
        let file = StageFile::read(&path, &["id", "fold"]).unwrap();
        let lines: Vec<usize> = file.rows().map(|(line, _)| line).collect();
        assert_eq!(lines, [2, 4], "blank lines skipped, line numbers kept");
    }

    #[test]
    fn structural_errors_name_file_and_line() {
        let path = temp_file("broken.csv");
        for (bytes, needle) in [
            (
                &b"id,fold\n1,0\n2,1,9\n"[..],
                "broken.csv, line 3: expected 2 fields",
            ),
            (&b"id,fold\n1,0\n\xff\xfe,1\n"[..], "line 3: not UTF-8 text"),
            (
                &b"ID,Fold\n1,0\n"[..],
                "line 1: the header must be `id,fold`",
            ),
            (&b""[..], "line 1: the file is empty"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let message = StageFile::read(&path, &["id", "fold"])
                .err()
                .unwrap()
                .to_string();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn writing_replaces_a_symlink_instead_of_writing_through_it() {
        let target = temp_file("outside.csv");
        let link = temp_file("link.csv");
        std::fs::write(&target, "precious\n").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write(&link, &["id"], [["1"]]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "id\n1\n");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
