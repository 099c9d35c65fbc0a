//! Reports for people: plain-text tables and the feature-importance files.
use anyhow::Result;
use ensembles::stage_file::{self, StageFile};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt::Write as _;
use std::path::Path;

const HEADER: [&str; 3] = ["feature", "gain", "split"];

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

/// Feature importance averaged over the fold models, sorted by gain (largest first).
#[derive(Debug, PartialEq)]
pub struct Importance {
    pub rows: Vec<(String, f64, f64)>,
}

impl Importance {
    pub fn new(names: &[String], gain: &[f64], split: &[f64]) -> Importance {
        let mut rows: Vec<(String, f64, f64)> = names
            .iter()
            .zip(gain.iter().zip(split))
            .map(|(name, (&g, &s))| (name.clone(), g, s))
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Importance { rows }
    }

    /// `feature,gain,split`; n-gram names with commas or quotes are quoted.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let rows = self
            .rows
            .iter()
            .map(|(name, gain, split)| [name.clone(), gain.to_string(), split.to_string()]);
        Ok(stage_file::write(path, &HEADER, rows)?)
    }

    pub fn read_csv(path: &Path) -> Result<Importance> {
        let file = StageFile::read(path, &HEADER)?;
        let mut rows = Vec::new();
        for (line, fields) in file.rows() {
            let number = |field: &str| {
                field
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| file.error(line, format!("{field:?} is not a number")))
            };
            rows.push((
                fields[0].to_string(),
                number(&fields[1])?,
                number(&fields[2])?,
            ));
        }
        Ok(Importance { rows })
    }

    /// The `top` features with their share of the total gain.
    pub fn table(&self, top: usize) -> String {
        let total: f64 = self
            .rows
            .iter()
            .map(|r| r.1)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        let mut rows = vec![vec![
            "feature".to_owned(),
            "gain".into(),
            "share".into(),
            "splits".into(),
        ]];
        for (name, gain, split) in self.rows.iter().take(top) {
            rows.push(vec![
                name.clone(),
                format!("{gain:.1}"),
                format!("{:.1}%", 100.0 * gain / total),
                format!("{split:.1}"),
            ]);
        }
        text_table(&rows)
    }

    /// A horizontal bar chart of the `top` features by gain.
    pub fn write_svg(&self, path: &Path, top: usize) -> Result<()> {
        let shown = &self.rows[..top.min(self.rows.len())];
        let height = 80 + 22 * shown.len() as u32;
        let max_gain = shown.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
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
                Rectangle::new([(0.0, y + 0.15), (row.1, y + 0.85)], BLUE.mix(0.6).filled())
            }))?;
            // Names go left of the plot, right-aligned against each bar's middle.
            let label_style = ("sans-serif", 13)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Right, VPos::Center));
            for (rank, row) in shown.iter().enumerate() {
                let y = (shown.len() - rank - 1) as f64 + 0.5;
                let (x, y) = chart.backend_coord(&(0.0, y));
                root.draw(&Text::new(row.0.clone(), (x - 6, y), label_style.clone()))?;
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
    }
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
        let imp = Importance::new(&names, &[1.0, 5.5, 3.0], &[2.0, 7.0, 1.0]);
        assert_eq!(imp.rows[0], ("tfidf_w:yes, \"no\"".to_owned(), 5.5, 7.0));
        assert_eq!(imp.rows[2].0, "a_words");
        let dir = std::env::temp_dir().join(format!("imp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        imp.write_csv(&dir.join("importance.csv")).unwrap();
        assert_eq!(
            Importance::read_csv(&dir.join("importance.csv")).unwrap(),
            imp
        );
        imp.write_svg(&dir.join("importance.svg"), 30).unwrap();
        let svg = std::fs::read_to_string(dir.join("importance.svg")).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("b_words"),
            "labels drawn"
        );
        let table = imp.table(2);
        assert!(
            table.contains("57.9%") && !table.contains("a_words"),
            "{table}"
        );
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
