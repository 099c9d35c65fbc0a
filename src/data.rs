//! Reading the Kaggle CSV files (`train.csv`, `test.csv`, plain or gzip) with polars.
//!
//! Text fields are JSON lists of turns; odd ones (null items, broken escapes, values that are
//! not lists) are kept and counted, never dropped. A training row whose id or labels are
//! malformed is an error that names the file, line and id.
use anyhow::{bail, Context, Result};
use ensemble_core::stage_file::RecordLines;
use ensemble_core::Outcome;
use features::{parse_turns, Battle, TurnsIssue};
use polars_core::prelude::*;
use polars_io::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

const TEXT_COLUMNS: [&str; 3] = ["prompt", "response_a", "response_b"];
const LABEL_COLUMNS: [&str; 3] = ensemble_core::CLASS_COLUMNS;
/// How many odd text fields the run summary quotes by id.
const ISSUE_EXAMPLES: usize = 5;

/// Battles of one file, in file order.
#[derive(Default)]
pub struct Battles {
    pub ids: Vec<String>,
    pub battles: Vec<Battle>,
    pub text_issues: TextIssues,
}

pub struct TrainSet {
    pub battles: Battles,
    pub labels: Vec<Outcome>,
}

/// Text fields that were not a clean JSON list of strings, counted by kind.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TextIssues {
    pub fields_with_null_items: usize,
    pub fields_with_lone_surrogates: usize,
    pub fields_not_a_list: usize,
    pub examples: Vec<String>,
}

impl TextIssues {
    pub fn total(&self) -> usize {
        self.fields_with_null_items + self.fields_with_lone_surrogates + self.fields_not_a_list
    }

    fn record(&mut self, id: &str, column: &str, issue: &TurnsIssue) {
        match issue {
            TurnsIssue::NullItems(_) => self.fields_with_null_items += 1,
            TurnsIssue::LoneSurrogates(_) => self.fields_with_lone_surrogates += 1,
            TurnsIssue::NotAList => self.fields_not_a_list += 1,
        }
        if self.examples.len() < ISSUE_EXAMPLES {
            self.examples.push(format!("id {id}, {column}: {issue}"));
        }
    }
}

pub fn read_train(path: &Path) -> Result<TrainSet> {
    let table = CsvTable::read(path)?;
    table.require_columns(&["id"])?;
    table.require_columns(&TEXT_COLUMNS)?;
    table.require_columns(&LABEL_COLUMNS)?;
    let ids = table.read_ids()?;
    if ids.is_empty() {
        bail!("{}: no training rows, only a header", path.display());
    }
    let winners: Vec<Vec<Option<&str>>> = LABEL_COLUMNS
        .iter()
        .map(|name| table.string_column(name))
        .collect::<Result<_>>()?;
    let mut labels = Vec::with_capacity(ids.len());
    for (record, id) in ids.iter().enumerate() {
        let cells = [winners[0][record], winners[1][record], winners[2][record]];
        match label_of(cells) {
            Some(label) => labels.push(label),
            None => bail!(
                "{}, line {} (id {id}): {} must be 0 or 1 with exactly one 1, found {:?}",
                path.display(),
                table.line(record),
                LABEL_COLUMNS.join(", "),
                cells.map(|c| c.unwrap_or(""))
            ),
        }
    }
    let battles = table.read_battles(ids)?;
    Ok(TrainSet { battles, labels })
}

pub fn read_test(path: &Path) -> Result<Battles> {
    let table = CsvTable::read(path)?;
    table.require_columns(&["id"])?;
    table.require_columns(&TEXT_COLUMNS)?;
    let ids = table.read_ids()?;
    table.read_battles(ids)
}

fn label_of(cells: [Option<&str>; 3]) -> Option<Outcome> {
    let mut winner = None;
    for (index, cell) in cells.iter().enumerate() {
        match cell.map(str::trim)?.parse::<f64>().ok()? {
            1.0 if winner.is_none() => winner = Outcome::from_index(index),
            0.0 => {}
            _ => return None,
        }
    }
    winner
}

/// A Kaggle CSV file read into text columns, with the line each record starts on.
struct CsvTable<'p> {
    path: &'p Path,
    frame: DataFrame,
    /// `record_lines[r]`: the 1-based line where data record `r` starts.
    record_lines: Vec<usize>,
}

impl<'p> CsvTable<'p> {
    fn read(path: &'p Path) -> Result<CsvTable<'p>> {
        let mut bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes.as_slice())
                .read_to_end(&mut plain)
                .with_context(|| {
                    format!(
                        "{}: broken gzip data (a truncated download?)",
                        path.display()
                    )
                })?;
            bytes = plain;
        }
        if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
            bytes = rest.to_vec();
        }
        let (record_lines, without_blank_lines) = check_structure(&bytes)
            .map_err(|message| anyhow::anyhow!("{}{message}", path.display()))?;
        // polars reads a blank line as a row of nulls: it gets the records alone.
        if let Some(text) = without_blank_lines {
            bytes = text;
        }
        // Every column as text: we check ids and labels ourselves, with better messages.
        let frame = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .into_reader_with_file_handle(std::io::Cursor::new(bytes))
            .finish()
            .map_err(|e| {
                // polars' own advice is for its Python users; its first line says what failed.
                let first_line = e.to_string().lines().next().unwrap_or_default().to_owned();
                anyhow::anyhow!("{}: not a readable CSV file: {first_line}", path.display())
            })?;
        if frame.height() != record_lines.len() {
            bail!(
                "{}: {} records, but the CSV reader found {} rows",
                path.display(),
                record_lines.len(),
                frame.height()
            );
        }
        Ok(CsvTable {
            path,
            frame,
            record_lines,
        })
    }

    fn line(&self, record: usize) -> usize {
        self.record_lines[record]
    }

    fn require_columns(&self, names: &[&str]) -> Result<()> {
        let present: HashSet<&str> = self
            .frame
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !present.contains(n))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: missing column(s) {}",
                self.path.display(),
                missing.join(", ")
            );
        }
        Ok(())
    }

    fn string_column(&self, name: &str) -> Result<Vec<Option<&str>>> {
        Ok(self.frame.column(name)?.str()?.iter().collect())
    }

    /// Ids, checked: present, unique, and free of characters that would break our CSV output.
    fn read_ids(&self) -> Result<Vec<String>> {
        let mut seen = HashSet::new();
        let mut ids = Vec::with_capacity(self.frame.height());
        let path = self.path.display();
        for (record, id) in self.string_column("id")?.into_iter().enumerate() {
            let id = id.map(str::trim).unwrap_or("");
            let line = self.line(record);
            if id.is_empty() {
                bail!("{path}, line {line}: the id is empty");
            }
            // Files concatenated with their headers (`cat a.csv b.csv`) bring one in as a row.
            if id == "id" {
                bail!("{path}, line {line}: a second header row (id \"id\"); remove it");
            }
            if id.contains([',', '"', '\n', '\r']) {
                bail!("{path}, line {line} (id {id:?}): ids cannot hold commas, quotes or line breaks");
            }
            if !seen.insert(id) {
                bail!("{path}, line {line} (id {id}): the id appears twice");
            }
            ids.push(id.to_owned());
        }
        Ok(ids)
    }

    fn read_battles(&self, ids: Vec<String>) -> Result<Battles> {
        let columns: Vec<Vec<Option<&str>>> = TEXT_COLUMNS
            .iter()
            .map(|name| self.string_column(name))
            .collect::<Result<_>>()?;
        let parsed: Vec<[features::Turns; 3]> = (0..ids.len())
            .into_par_iter()
            .map(|row| std::array::from_fn(|k| parse_turns(columns[k][row].unwrap_or(""))))
            .collect();
        let mut text_issues = TextIssues::default();
        let mut battles = Vec::with_capacity(parsed.len());
        for (id, fields) in ids.iter().zip(parsed) {
            for (column, field) in TEXT_COLUMNS.iter().zip(&fields) {
                if let Some(issue) = &field.issue {
                    text_issues.record(id, column, issue);
                }
            }
            let [prompt, response_a, response_b] = fields.map(|f| f.turns);
            battles.push(Battle {
                prompt,
                response_a,
                response_b,
            });
        }
        Ok(Battles {
            ids,
            battles,
            text_issues,
        })
    }
}

/// Each data record's line, and the file without its blank lines if it has any.
type Structure = (Vec<usize>, Option<Vec<u8>>);

/// Checks a CSV file's structure with the csv crate before polars reads its columns, so that
/// what is wrong is said in our words with its line: UTF-16 data, text that is not UTF-8,
/// duplicate column names, records with another number of fields than the header, a file
/// that ends inside a quoted field. Returns the line each data record starts on, and the byte
/// ranges of lines that hold only spaces or tabs: those are skipped, as empty lines are (and
/// as pandas skips both). The error message starts after the file name.
fn check_structure(bytes: &[u8]) -> std::result::Result<Structure, String> {
    if looks_like_utf16(bytes) {
        return Err(": UTF-16 text; save the file as UTF-8 CSV".into());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut lines = RecordLines::new(bytes);
    let mut record_lines = Vec::new();
    // The header's and each record's bytes, without line breaks around them.
    let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
    let mut blank_seen = false;
    let mut header_len = None;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = lines.at(record.position());
                let start = record.position().map_or(0, |p| p.byte() as usize);
                let span = without_line_breaks(bytes, start..reader.position().byte() as usize);
                if std::str::from_utf8(record.as_slice()).is_err() {
                    return Err(format!(", line {line}: not UTF-8 text (a Latin-1 or Windows file? save it as UTF-8)"));
                }
                let Some(expected_len) = header_len else {
                    header_len = Some(record.len());
                    kept.push(span);
                    let mut seen = HashSet::new();
                    if let Some(name) = record.iter().find(|name| !seen.insert(*name)) {
                        return Err(format!(
                            ", line {line}: the column {} appears twice",
                            String::from_utf8_lossy(name)
                        ));
                    }
                    continue;
                };
                if bytes[span.clone()].iter().all(u8::is_ascii_whitespace) {
                    blank_seen = true;
                } else if record.len() != expected_len {
                    let len = record.len();
                    let is_last = matches!(reader.read_byte_record(&mut record), Ok(false));
                    if is_last && odd_quotes(bytes) {
                        return Err(truncated(line));
                    }
                    return Err(format!(
                        ", line {line}: {len} fields where the header has {expected_len} (a \
                         truncated file, a quote not doubled inside a quoted field, or a comma \
                         outside one?)"
                    ));
                } else {
                    record_lines.push(line);
                    kept.push(span);
                }
            }
            Err(error) => {
                let line = lines.at(error.position());
                return Err(format!(", line {line}: {error}"));
            }
        }
    }
    if header_len.is_none() {
        return Err(": the file is empty".into());
    }
    if odd_quotes(bytes) {
        return Err(truncated(record_lines.last().copied().unwrap_or(1)));
    }
    // Empty lines give no record: they show as more than one line break between records.
    let breaks = |gap: &[u8]| gap.iter().filter(|&&b| b == b'\n').count();
    let gaps = kept
        .windows(2)
        .map(|pair| &bytes[pair[0].end..pair[1].start]);
    let trailing = &bytes[kept.last().map_or(0, |k| k.end)..];
    blank_seen |= kept.first().is_some_and(|k| k.start > 0)
        || breaks(trailing) > 1
        || gaps
            .into_iter()
            .any(|gap| breaks(gap) > 1 || gap.starts_with(b"\r\r"));
    let text = blank_seen.then(|| {
        kept.iter()
            .flat_map(|span| bytes[span.clone()].iter().chain(b"\n"))
            .copied()
            .collect()
    });
    Ok((record_lines, text))
}

/// `span` without the line breaks at its ends: a record's own bytes (a record cannot start
/// with a line break, and one at its end is outside any quotes).
fn without_line_breaks(bytes: &[u8], span: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let is_break = |b: &u8| matches!(b, b'\n' | b'\r');
    let text = &bytes[span.clone()];
    let start = span.start + text.iter().take_while(|b| is_break(b)).count();
    let end = span.end - text.iter().rev().take_while(|b| is_break(b)).count();
    start..end.max(start)
}

/// UTF-16 text: a byte-order mark, or (text in the Latin script without one) a NUL in every
/// other byte. A UTF-8 file with a few NUL or other control bytes in its fields is text, and
/// is read as it is, as pandas reads it.
fn looks_like_utf16(bytes: &[u8]) -> bool {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return true;
    }
    let head = &bytes[..bytes.len().min(4096)];
    let nuls = |parity: usize| {
        head.iter()
            .skip(parity)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let pairs = head.len() / 2;
    pairs > 0 && (2 * nuls(0) > pairs || 2 * nuls(1) > pairs)
}

/// Quotes come in pairs in a well-formed file (a quote inside a field is doubled).
fn odd_quotes(bytes: &[u8]) -> bool {
    bytes.iter().filter(|&&b| b == b'"').count() % 2 == 1
}

fn truncated(line: usize) -> String {
    format!(
        ": the file ends inside a quoted field (the record starting on line {line}): \
         a truncated file, e.g. an interrupted download?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_skip_line_breaks_inside_quotes_and_blank_lines() {
        let csv = b"id,prompt\n1,\"a\nb\"\n2,\"say \"\"hi\"\"\nthere\"\n\n3,x\n";
        assert_eq!(check_structure(csv).unwrap().0, vec![2, 4, 7]);
    }

    #[test]
    fn blank_lines_and_lines_of_spaces_are_skipped_anywhere() {
        let csv = b"id,prompt\n1,a\n  \n\t\n2,\"b\n \"\n \r\n\n   ";
        let (lines, text) = check_structure(csv).unwrap();
        assert_eq!(lines, vec![2, 5]);
        assert_eq!(text.unwrap(), b"id,prompt\n1,a\n2,\"b\n \"\n");
        let (lines, text) = check_structure(b"id,prompt\r\n1,a\r\n\r\n2,b\r\n").unwrap();
        assert_eq!(lines, vec![2, 4]);
        assert_eq!(text.unwrap(), b"id,prompt\n1,a\n2,b\n");
        // A file without blank lines is read as it is.
        let (_, text) = check_structure(b"id,prompt\r\n1,\"a\n\n\"\r\n2,b").unwrap();
        assert_eq!(text, None);
    }

    #[test]
    fn nul_and_control_bytes_in_fields_are_text_but_utf16_is_refused() {
        let csv = b"id,prompt\n1,\"a\x00b\x01\x1b[0m\x7f\"\n2,\x00\n";
        assert_eq!(check_structure(csv).unwrap().0, vec![2, 3]);
        let header = "id,prompt\n1,a\n";
        let little: Vec<u8> = header.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let big: Vec<u8> = header.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for utf16 in [little, big] {
            assert_eq!(
                check_structure(&utf16).unwrap_err(),
                ": UTF-16 text; save the file as UTF-8 CSV"
            );
        }
    }

    /// polars and the csv crate agree on the rows of a file with blank lines, lines of
    /// spaces and NUL bytes, and every row keeps its own text.
    #[test]
    fn hostile_but_readable_files_keep_every_row_and_its_text() {
        let dir = std::env::temp_dir().join(format!("data-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.csv");
        std::fs::write(
            &path,
            "id,prompt,response_a,response_b\n\
             1,\"[\"\"nul \x00 here\"\"]\",\"[\"\"bell \x07\"\"]\",\"[\"\"b\"\"]\"\n\
             \x20\x20\n\
             \n\
             2,\"[\"\"two\"\"]\",\"[\"\"a2\"\"]\",\"[\"\"b2\"\"]\"\n\
             \t\n \r\n\n",
        )
        .unwrap();
        let battles = read_test(&path).unwrap();
        assert_eq!(battles.ids, ["1", "2"]);
        assert_eq!(battles.battles[0].prompt, ["nul \0 here"]);
        assert_eq!(battles.battles[0].response_a, ["bell \x07"]);
        assert_eq!(battles.battles[1].response_b, ["b2"]);
        assert_eq!(battles.text_issues.total(), 0);

        // A training file with a header and no rows names itself.
        let train = dir.join("train.csv");
        std::fs::write(
            &train,
            "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n\n",
        )
        .unwrap();
        let message = format!("{:#}", read_train(&train).err().unwrap());
        assert_eq!(
            message,
            format!("{}: no training rows, only a header", train.display())
        );
    }

    #[test]
    fn structural_problems_are_named_with_their_line() {
        for (bytes, expected) in [
            (
                &b"id,prompt\n1,a\n2,b,c\n"[..],
                ", line 3: 3 fields where the header has 2",
            ),
            (
                &b"id,prompt\n1,a\n2,\"b\xff\"\n"[..],
                ", line 3: not UTF-8 text",
            ),
            (
                &b"id,prompt,prompt\n1,a,b\n"[..],
                ", line 1: the column prompt appears twice",
            ),
            (
                &b"id,prompt\n1,a\n2,\"trunc"[..],
                "the file ends inside a quoted field (the record starting on line 3)",
            ),
            (&b"\xff\xfei\x00d\x00"[..], ": UTF-16 text"),
            (&b""[..], ": the file is empty"),
        ] {
            let message = check_structure(bytes).unwrap_err();
            assert!(
                message.starts_with(expected) || message.contains(expected),
                "{message:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn labels_need_exactly_one_winner() {
        assert_eq!(
            label_of([Some("0"), Some("1"), Some("0")]),
            Some(Outcome::B)
        );
        assert_eq!(
            label_of([Some("0"), Some("0"), Some(" 1 ")]),
            Some(Outcome::Tie)
        );
        assert_eq!(label_of([Some("1"), Some("1"), Some("0")]), None);
        assert_eq!(label_of([Some("0"), Some("0"), Some("0")]), None);
        assert_eq!(label_of([Some("0"), Some("2"), Some("1")]), None);
        assert_eq!(label_of([None, Some("1"), Some("0")]), None);
    }
}
