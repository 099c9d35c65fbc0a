//! Reports for people: plain-text tables and the feature-importance files.
use anyhow::{Context, Result};
use ensemble_core::stage_file::{self, StageFile};
use ensembles::cv::FoldImportance;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

const HEADER: [&str; 3] = ["feature", "gain", "split"];
const BY_FOLD_HEADER: [&str; 4] = ["feature", "fold", "gain", "split"];
/// The per-fold companion of `importance.csv`.
pub const BY_FOLD_FILE: &str = "importance_by_fold.csv";

/// Left-aligned first column, right-aligned numbers, columns sized to fit.
pub fn text_table(rows: &[Vec<String>]) -> String {
    let n_cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let sep = if c == 0 { "" } else { "  " };
            if c == 0 {
                write!(out, "{sep}{cell:<w$}", w = widths[c]).unwrap();
            } else {
                write!(out, "{sep}{cell:>w$}", w = widths[c]).unwrap();
            }
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * n_cols.saturating_sub(1)));
            out.push('\n');
        }
    }
    out
}

/// Feature importance averaged over the fold models, sorted by gain (largest first), with
/// each fold's own figures where known.
#[derive(Debug, PartialEq)]
pub struct Importance {
    pub rows: Vec<ImportanceRow>,
}

#[derive(Debug, PartialEq)]
pub struct ImportanceRow {
    pub name: String,
    /// Mean over the folds.
    pub gain: f64,
    pub split: f64,
    /// Per fold (empty when read from an `importance.csv` alone).
    pub fold_gain: Vec<f64>,
    pub fold_split: Vec<f64>,
}

impl Importance {
    pub fn new(names: &[String], folds: &[FoldImportance]) -> Importance {
        let n_folds = folds.len().max(1) as f64;
        let rows = names
            .iter()
            .enumerate()
            .map(|(j, name)| ImportanceRow {
                name: name.clone(),
                gain: folds.iter().map(|f| f.gain[j]).sum::<f64>() / n_folds,
                split: folds.iter().map(|f| f.split[j]).sum::<f64>() / n_folds,
                fold_gain: folds.iter().map(|f| f.gain[j]).collect(),
                fold_split: folds.iter().map(|f| f.split[j]).collect(),
            })
            .collect();
        Importance::sorted(rows)
    }

    fn sorted(mut rows: Vec<ImportanceRow>) -> Importance {
        rows.sort_by(|a, b| b.gain.total_cmp(&a.gain).then_with(|| a.name.cmp(&b.name)));
        Importance { rows }
    }

    /// Each fold's total gain over all features.
    fn fold_totals(&self) -> Vec<f64> {
        let n_folds = self.rows.first().map_or(0, |r| r.fold_gain.len());
        (0..n_folds)
            .map(|k| self.rows.iter().map(|r| r.fold_gain[k]).sum())
            .collect()
    }

    /// `feature,gain,split`; n-gram names with commas or quotes are quoted.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let rows = self
            .rows
            .iter()
            .map(|r| [r.name.clone(), r.gain.to_string(), r.split.to_string()]);
        Ok(stage_file::write(path, &HEADER, rows)?)
    }

    /// `feature,fold,gain,split`: every feature's gain and split count in every fold.
    pub fn write_by_fold_csv(&self, path: &Path) -> Result<()> {
        let rows = self.rows.iter().flat_map(|r| {
            let per_fold = r.fold_gain.iter().zip(&r.fold_split).enumerate();
            per_fold.map(|(fold, (gain, split))| {
                [
                    r.name.clone(),
                    fold.to_string(),
                    gain.to_string(),
                    split.to_string(),
                ]
            })
        });
        Ok(stage_file::write(path, &BY_FOLD_HEADER, rows)?)
    }

    /// Reads `importance.csv`, and the per-fold figures from `importance_by_fold.csv` when
    /// `by_fold` (which must then be there and name the same features).
    pub fn read(run: &Path, by_fold: bool) -> Result<Importance> {
        let path = run.join("importance.csv");
        let file = StageFile::read(&path, &HEADER)?;
        let mut rows = Vec::new();
        for (line, fields) in file.rows() {
            rows.push(ImportanceRow {
                name: fields[0].to_string(),
                gain: parse_number(&file, line, &fields[1])?,
                split: parse_number(&file, line, &fields[2])?,
                fold_gain: Vec::new(),
                fold_split: Vec::new(),
            });
        }
        if by_fold {
            read_fold_gains(&run.join(BY_FOLD_FILE), &mut rows)?;
        }
        Ok(Importance::sorted(rows))
    }

    /// The `top` features whose names match `only` (all without it) with their rank and
    /// share of the total gain; with `by_fold`, also their share in each fold and the number
    /// of folds that use them.
    pub fn table(&self, top: usize, only: Option<&glob::Pattern>, by_fold: bool) -> String {
        let total = self.rows.iter().map(|r| r.gain).sum::<f64>();
        let fold_totals = self.fold_totals();
        let share =
            |gain: f64, total: f64| format!("{:.2}%", 100.0 * gain / total.max(f64::MIN_POSITIVE));
        let mut header = vec![
            "rank".to_owned(),
            "feature".into(),
            "gain".into(),
            "share".into(),
            "splits".into(),
        ];
        if by_fold {
            header.extend((0..fold_totals.len()).map(|k| format!("fold {k}")));
            header.push("folds used".into());
        }
        let mut rows = vec![header];
        let shown = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| only.is_none_or(|pattern| pattern.matches(&r.name)))
            .take(top);
        for (rank, r) in shown {
            let mut row = vec![
                (rank + 1).to_string(),
                r.name.clone(),
                format!("{:.1}", r.gain),
                share(r.gain, total),
                format!("{:.1}", r.split),
            ];
            if by_fold {
                row.extend(
                    r.fold_gain
                        .iter()
                        .zip(&fold_totals)
                        .map(|(&gain, &total)| share(gain, total)),
                );
                let used = r.fold_gain.iter().filter(|&&g| g > 0.0).count();
                row.push(format!("{used} of {}", r.fold_gain.len()));
            }
            rows.push(row);
        }
        text_table(&rows)
    }

    /// A horizontal bar chart of the `top` features by gain.
    pub fn write_svg(&self, path: &Path, top: usize) -> Result<()> {
        let shown = &self.rows[..top.min(self.rows.len())];
        let height = 80 + 22 * shown.len() as u32;
        let max_gain = shown.iter().map(|r| r.gain).fold(0.0, f64::max).max(1e-9);
        let root = SVGBackend::new(path, (900, height)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "Feature importance (gain, mean over folds)",
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(260)
                .build_cartesian_2d(0.0..max_gain * 1.05, 0.0..shown.len() as f64)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_label_formatter(&|_| String::new())
                .draw()?;
            chart.draw_series(shown.iter().enumerate().map(|(rank, row)| {
                let y = (shown.len() - rank - 1) as f64;
                Rectangle::new(
                    [(0.0, y + 0.15), (row.gain, y + 0.85)],
                    BLUE.mix(0.6).filled(),
                )
            }))?;
            // Names go left of the plot, right-aligned against each bar's middle.
            let label_style = ("sans-serif", 13)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Right, VPos::Center));
            for (rank, row) in shown.iter().enumerate() {
                let y = (shown.len() - rank - 1) as f64 + 0.5;
                let (x, y) = chart.backend_coord(&(0.0, y));
                root.draw(&Text::new(
                    row.name.clone(),
                    (x - 6, y),
                    label_style.clone(),
                ))?;
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
    }
}

fn parse_number(file: &StageFile, line: usize, field: &str) -> Result<f64> {
    field.trim().parse::<f64>().map_err(|_| {
        file.error(line, format!("{field:?} is not a number"))
            .into()
    })
}

/// Fills each row's `fold_gain` and `fold_split` from `importance_by_fold.csv`: folds 0..K-1 for every feature
/// of `importance.csv`, each once.
fn read_fold_gains(path: &Path, rows: &mut [ImportanceRow]) -> Result<()> {
    let file = StageFile::read(path, &BY_FOLD_HEADER).with_context(|| {
        format!(
            "the per-fold importance needs {} (runs made before it was written must be rerun)",
            path.display()
        )
    })?;
    let index: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    for (line, fields) in file.rows() {
        let &i = index.get(&fields[0]).ok_or_else(|| {
            file.error(line, format!("{:?} is not in importance.csv", &fields[0]))
        })?;
        let fold = fields[1]
            .trim()
            .parse::<usize>()
            .map_err(|_| file.error(line, format!("fold {:?} is not a number", &fields[1])))?;
        if fold != rows[i].fold_gain.len() {
            return Err(file
                .error(line, format!("{}: fold {fold} out of order", &fields[0]))
                .into());
        }
        rows[i]
            .fold_gain
            .push(parse_number(&file, line, &fields[2])?);
        rows[i]
            .fold_split
            .push(parse_number(&file, line, &fields[3])?);
    }
    let n_folds = rows.first().map_or(0, |r| r.fold_gain.len());
    if let Some(r) = rows
        .iter()
        .find(|r| r.fold_gain.len() != n_folds || n_folds == 0)
    {
        return Err(file
            .file_error(format!(
                "{} has {} folds, {} expected",
                r.name,
                r.fold_gain.len(),
                n_folds
            ))
            .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_sorts_by_gain_and_round_trips_names_with_commas() {
        let names = [
            "a_words".to_owned(),
            "tfidf_w:yes, \"no\"".into(),
            "b_words".into(),
        ];
        let folds = [
            FoldImportance {
                gain: vec![2.0, 5.0, 3.0],
                split: vec![2.0, 8.0, 1.0],
            },
            FoldImportance {
                gain: vec![0.0, 6.0, 3.0],
                split: vec![2.0, 6.0, 1.0],
            },
        ];
        let imp = Importance::new(&names, &folds);
        let first = &imp.rows[0];
        assert_eq!(first.name, "tfidf_w:yes, \"no\"");
        assert_eq!(
            (first.gain, first.split, &first.fold_gain[..]),
            (5.5, 7.0, &[5.0, 6.0][..])
        );
        assert_eq!(imp.rows[2].name, "a_words");
        let dir = std::env::temp_dir().join(format!("imp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        imp.write_csv(&dir.join("importance.csv")).unwrap();
        imp.write_by_fold_csv(&dir.join(BY_FOLD_FILE)).unwrap();
        assert_eq!(Importance::read(&dir, true).unwrap(), imp);
        let means = Importance::read(&dir, false).unwrap();
        assert!(means.rows.iter().all(|r| r.fold_gain.is_empty()));
        imp.write_svg(&dir.join("importance.svg"), 30).unwrap();
        let svg = std::fs::read_to_string(dir.join("importance.svg")).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("b_words"),
            "labels drawn"
        );
        // Shares of the total mean gain 9.5: 5.5 -> 57.89%.
        let table = imp.table(2, None, false);
        assert!(
            table.contains("57.89%") && !table.contains("a_words"),
            "{table}"
        );
        // a_words, third by gain: 2 of fold 0's total 10, none of fold 1's 9.
        let pattern = glob::Pattern::new("a_*").unwrap();
        let table = imp.table(5, Some(&pattern), true);
        let row = table.lines().nth(2).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["3", "a_words", "1.0", "10.53%", "2.0", "20.00%", "0.00%", "1", "of", "2"]
        );
        assert_eq!(table.lines().count(), 3, "{table}");

        std::fs::write(
            dir.join(BY_FOLD_FILE),
            "feature,fold,gain,split\nb_words,1,3,1\n",
        )
        .unwrap();
        let err = format!("{:#}", Importance::read(&dir, true).unwrap_err());
        assert!(err.contains("fold 1 out of order"), "{err}");
        std::fs::remove_file(dir.join(BY_FOLD_FILE)).unwrap();
        let err = format!("{:#}", Importance::read(&dir, true).unwrap_err());
        assert!(err.contains("rerun"), "{err}");
    }

    #[test]
    fn text_table_aligns_columns() {
        let rows = vec![
            vec!["x".to_owned(), "value".into()],
            vec!["long name".into(), "1".into()],
        ];
        assert_eq!(
            text_table(&rows),
            "x          value\n----------------\nlong name      1\n"
        );
    }
}
