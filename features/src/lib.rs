//! Text to features for pairwise preference between two chatbot responses.
//!
//! A [`Battle`] is a prompt and two responses (each a list of turns). An [`Extractor`] is
//! fitted on text only (TF-IDF vocabularies) and turns battles into a [`FeatureTable`]:
//! per-text measures for the prompt and both responses, A/B differences and log-ratios,
//! similarities, and the sparse difference of A's and B's TF-IDF vectors. The table is stored
//! once and exported as CSR in either [`Orientation`]; exporting a battle as
//! [`Orientation::Swapped`] is bit-identical to computing the features of the swapped battle.

mod analysis;
mod columns;
mod structure;
mod table;
mod text_stats;
mod tfidf;
mod turns;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use analysis::{analyze, join_turns};
use columns::{write_dense_row, ColumnKind, Schema, Similarities, Values};
pub use table::{CsrMatrix, FeatureTable, Orientation};
use tfidf::Tfidf;
pub use tfidf::TfidfConfig;
pub use turns::{parse_turns, Turns, TurnsIssue};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid feature configuration: {0}")]
    InvalidConfig(String),
}

/// One comparison: a prompt and two responses, each a list of turns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Battle {
    pub prompt: Vec<String>,
    pub response_a: Vec<String>,
    pub response_b: Vec<String>,
}

impl Battle {
    /// The same battle with responses A and B exchanged.
    pub fn swapped(&self) -> Battle {
        Battle {
            prompt: self.prompt.clone(),
            response_a: self.response_b.clone(),
            response_b: self.response_a.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    pub tfidf: TfidfConfig,
}

/// Fitted TF-IDF vocabularies plus the column layout.
#[derive(Clone, Debug)]
pub struct Extractor {
    tfidf: Tfidf,
    similarities: Similarities,
    dense_kinds: Vec<ColumnKind>,
    /// Dense column names, then `tfidf_w:` word n-grams, then `tfidf_c:` char n-grams.
    names: Vec<String>,
}

impl Extractor {
    /// Fits TF-IDF vocabularies and idf on the texts (prompt, A, B) of `battles`, or of an
    /// evenly spaced sample of `config.tfidf.fit_max_battles` of them. Uses no labels.
    pub fn fit(battles: &[Battle], config: &FeatureConfig) -> Result<Extractor, Error> {
        config.tfidf.validate()?;
        let sample = evenly_spaced(battles, config.tfidf.fit_max_battles);
        let documents: Vec<String> = sample
            .par_iter()
            .flat_map_iter(|battle| {
                [&battle.prompt, &battle.response_a, &battle.response_b]
                    .map(|turns| join_turns(turns).to_lowercase())
            })
            .collect();
        let tfidf = Tfidf::fit(&documents, &config.tfidf);
        let similarities = Similarities {
            word: tfidf.word.is_some(),
            char: tfidf.char.is_some(),
        };

        let mut schema = Schema::default();
        let nothing = analysis::TextAnalysis::default();
        write_dense_row(
            &mut schema,
            &nothing,
            &nothing,
            &nothing,
            false,
            similarities,
        );
        let mut names = schema.names;
        for (prefix, vocabulary) in [("tfidf_w:", &tfidf.word), ("tfidf_c:", &tfidf.char)] {
            if let Some(vocabulary) = vocabulary {
                names.extend(vocabulary.names.iter().map(|n| format!("{prefix}{n}")));
            }
        }
        Ok(Extractor {
            tfidf,
            similarities,
            dense_kinds: schema.kinds,
            names,
        })
    }

    /// Computes all features for every battle, in parallel over battles.
    pub fn transform(&self, battles: &[Battle]) -> FeatureTable {
        let n_dense = self.dense_kinds.len();
        let word_offset = n_dense as u32;
        let char_offset = word_offset + self.tfidf.word.as_ref().map_or(0, |v| v.len() as u32);
        let rows: Vec<(Vec<f32>, Vec<u32>, Vec<f32>)> = battles
            .par_iter()
            .map_init(Vec::new, |scratch, battle| {
                let prompt = analyze(&battle.prompt, &self.tfidf, scratch);
                let a = analyze(&battle.response_a, &self.tfidf, scratch);
                let b = analyze(&battle.response_b, &self.tfidf, scratch);
                let identical = battle.response_a == battle.response_b;
                let mut dense = Values(Vec::with_capacity(n_dense));
                write_dense_row(&mut dense, &prompt, &a, &b, identical, self.similarities);
                let (mut indices, mut values) = (Vec::new(), Vec::new());
                a.word_tfidf
                    .push_difference(&b.word_tfidf, word_offset, &mut indices, &mut values);
                a.char_tfidf
                    .push_difference(&b.char_tfidf, char_offset, &mut indices, &mut values);
                (dense.0, indices, values)
            })
            .collect();

        let sparse_nnz = rows.iter().map(|(_, indices, _)| indices.len()).sum();
        let mut table = FeatureTable {
            kinds: self.dense_kinds.clone(),
            n_cols: self.names.len(),
            dense: Vec::with_capacity(rows.len() * n_dense),
            sparse_indptr: Vec::with_capacity(rows.len() + 1),
            sparse_indices: Vec::with_capacity(sparse_nnz),
            sparse_values: Vec::with_capacity(sparse_nnz),
        };
        table.sparse_indptr.push(0);
        for (dense, indices, values) in rows {
            table.dense.extend_from_slice(&dense);
            table.sparse_indices.extend_from_slice(&indices);
            table.sparse_values.extend_from_slice(&values);
            table.sparse_indptr.push(table.sparse_indices.len());
        }
        table
    }

    pub fn feature_names(&self) -> &[String] {
        &self.names
    }
}

/// At most `max` items (0: all), evenly spaced and in order.
fn evenly_spaced<T>(items: &[T], max: usize) -> Vec<&T> {
    if max == 0 || items.len() <= max {
        return items.iter().collect();
    }
    (0..max).map(|i| &items[i * items.len() / max]).collect()
}
