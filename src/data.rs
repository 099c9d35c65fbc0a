//! Reading the Kaggle CSV files (`train.csv`, `test.csv`, plain or gzip) with polars.
//!
//! Text fields are JSON lists of turns; odd ones (null items, broken escapes, values that are
//! not lists) are kept and counted, never dropped. A training row whose id or labels are
//! malformed is an error that names the file, line and id.
use anyhow::{bail, Context, Result};
use ensembles::Outcome;
use features::{parse_turns, Battle, TurnsIssue};
use polars_core::prelude::*;
use polars_io::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

const TEXT_COLUMNS: [&str; 3] = ["prompt", "response_a", "response_b"];
const LABEL_COLUMNS: [&str; 3] = ensembles::CLASS_COLUMNS;
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
    let frame = read_frame(path)?;
    require_columns(path, &frame, &["id"])?;
    require_columns(path, &frame, &TEXT_COLUMNS)?;
    require_columns(path, &frame, &LABEL_COLUMNS)?;
    let ids = read_ids(path, &frame)?;
    let winners: Vec<Vec<Option<&str>>> = LABEL_COLUMNS
        .iter()
        .map(|name| string_column(&frame, name))
        .collect::<Result<_>>()?;
    let mut labels = Vec::with_capacity(ids.len());
    for (record, id) in ids.iter().enumerate() {
        let cells = [winners[0][record], winners[1][record], winners[2][record]];
        match label_of(cells) {
            Some(label) => labels.push(label),
            None => bail!(
                "{}: {} (id {id}): {} must be 0 or 1 with exactly one 1, found {:?}",
                path.display(),
                line_of(path, record),
                LABEL_COLUMNS.join(", "),
                cells.map(|c| c.unwrap_or(""))
            ),
        }
    }
    let battles = read_battles(&frame, ids)?;
    Ok(TrainSet { battles, labels })
}

pub fn read_test(path: &Path) -> Result<Battles> {
    let frame = read_frame(path)?;
    require_columns(path, &frame, &["id"])?;
    require_columns(path, &frame, &TEXT_COLUMNS)?;
    let ids = read_ids(path, &frame)?;
    read_battles(&frame, ids)
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

fn read_frame(path: &Path) -> Result<DataFrame> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut plain)
            .with_context(|| format!("{}: broken gzip data", path.display()))?;
        bytes = plain;
    }
    // Every column as text: we check ids and labels ourselves, with better messages.
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a readable CSV file: {e}", path.display()))
}

fn require_columns(path: &Path, frame: &DataFrame, names: &[&str]) -> Result<()> {
    let present: HashSet<&str> = frame
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
            path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

fn string_column<'a>(frame: &'a DataFrame, name: &str) -> Result<Vec<Option<&'a str>>> {
    Ok(frame.column(name)?.str()?.iter().collect())
}

/// Ids, checked: present, unique, and free of characters that would break our CSV output.
fn read_ids(path: &Path, frame: &DataFrame) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(frame.height());
    for (record, id) in string_column(frame, "id")?.into_iter().enumerate() {
        let id = id.map(str::trim).unwrap_or("");
        if id.is_empty() {
            bail!(
                "{}: {}: the id is empty",
                path.display(),
                line_of(path, record)
            );
        }
        // Files concatenated with their headers (`cat a.csv b.csv`) bring one in as a row.
        if id == "id" {
            bail!(
                "{}: {}: a second header row (id \"id\"); remove it",
                path.display(),
                line_of(path, record)
            );
        }
        if id.contains([',', '"', '\n', '\r']) {
            bail!(
                "{}: {} (id {id:?}): ids cannot hold commas, quotes or line breaks",
                path.display(),
                line_of(path, record)
            );
        }
        if !seen.insert(id) {
            bail!(
                "{}: {} (id {id}): the id appears twice",
                path.display(),
                line_of(path, record)
            );
        }
        ids.push(id.to_owned());
    }
    Ok(ids)
}

fn read_battles(frame: &DataFrame, ids: Vec<String>) -> Result<Battles> {
    let columns: Vec<Vec<Option<&str>>> = TEXT_COLUMNS
        .iter()
        .map(|name| string_column(frame, name))
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

/// "line N" of the `record`-th data row (0-based), found by re-reading the file, since rows
/// can span lines. Only called on the way to an error.
fn line_of(path: &Path, record: usize) -> String {
    let Ok(mut bytes) = std::fs::read(path) else {
        return format!("row {}", record + 1);
    };
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        if flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut plain)
            .is_err()
        {
            return format!("row {}", record + 1);
        }
        bytes = plain;
    }
    let line = record_start_lines(&bytes).get(record + 1).copied();
    line.map_or_else(
        || format!("row {}", record + 1),
        |line| format!("line {line}"),
    )
}

/// The 1-based line on which each CSV record starts (the header is record 0). Quoted fields
/// may hold line breaks; a doubled quote inside quotes toggles twice and so changes nothing.
fn record_start_lines(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![1];
    let (mut line, mut in_quotes) = (1, false);
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'"' => in_quotes = !in_quotes,
            b'\n' => {
                line += 1;
                if !in_quotes && i + 1 < bytes.len() {
                    starts.push(line);
                }
            }
            _ => {}
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_skip_line_breaks_inside_quotes() {
        let csv = b"id,prompt\n1,\"a\nb\"\n2,\"say \"\"hi\"\"\nthere\"\n3,x\n";
        assert_eq!(record_start_lines(csv), vec![1, 2, 4, 6]);
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
