//! Reports for people: plain-text tables and the feature-importance files.
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

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

    /// `feature,gain,split`; feature names are quoted since n-grams can hold commas.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut text = String::from("feature,gain,split\n");
        for (name, gain, split) in &self.rows {
            writeln!(text, "\"{}\",{gain},{split}", name.replace('"', "\"\"")).unwrap();
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read_csv(path: &Path) -> Result<Importance> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, h)| h) != Some("feature,gain,split") {
            bail!(
                "{}, line 1: the header must be `feature,gain,split`",
                path.display()
            );
        }
        let mut rows = Vec::new();
        for (index, line) in lines {
            let parsed = line.rsplitn(3, ',').collect::<Vec<_>>();
            let [split, gain, name] = parsed[..] else {
                bail!(
                    "{}, line {}: expected `feature,gain,split`",
                    path.display(),
                    index + 1
                );
            };
            let number = |field: &str| {
                field.parse::<f64>().with_context(|| {
                    format!(
                        "{}, line {}: {field:?} is not a number",
                        path.display(),
                        index + 1
                    )
                })
            };
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or(name);
            rows.push((name.replace("\"\"", "\""), number(gain)?, number(split)?));
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
                .y_labels(shown.len().max(1))
                .y_label_formatter(&|y| {
                    let rank = shown.len() as f64 - y.floor() - 1.0;
                    shown
                        .get(rank as usize)
                        .map_or(String::new(), |r| r.0.clone())
                })
                .draw()?;
            chart.draw_series(shown.iter().enumerate().map(|(rank, row)| {
                let y = (shown.len() - rank - 1) as f64;
                Rectangle::new([(0.0, y + 0.15), (row.1, y + 0.85)], BLUE.mix(0.6).filled())
            }))?;
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
