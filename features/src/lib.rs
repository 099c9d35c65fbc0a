//! Text to features for pairwise preference between two chatbot responses.
//!
//! A [`Battle`] is a prompt and two responses (each a list of turns). An [`Extractor`] is
//! fitted on text only (TF-IDF vocabularies) and turns battles into a [`FeatureTable`]:
//! per-text measures for the prompt and both responses, A/B differences and log-ratios,
//! similarities, and the sparse difference of A's and B's TF-IDF vectors. The table is stored
//! once and exported as CSR in either [`Orientation`]; exporting a battle as
//! [`Orientation::Swapped`] is bit-identical to computing the features of the swapped battle.
//!
//! Columns (turns joined by a blank line; `p_` prompt, `a_`/`b_` responses):
//! - counts, as `p_x a_x b_x diff_x logratio_x` (diff = a − b, logratio = ln(1+a) − ln(1+b)):
//!   turns, chars, words (`unicode_words`), unique_words, sentences, lines, paragraphs,
//!   headers, bullets, numbered, code_blocks, code_lines, table_rows, bold, links, refusals,
//!   apologies, digits, punctuation, questions, exclamations;
//! - ratios, as `p_x a_x b_x diff_x`: ttr, hapax_ratio, mtld, uppercase_ratio,
//!   non_ascii_ratio, words_per_sentence, chars_per_word, repeated_trigram_ratio (1 − distinct
//!   word trigrams / trigrams), repeated_line_ratio (non-blank lines seen before);
//! - response vs prompt, as `a_x b_x diff_x`: prompt_overlap (share of the response's word
//!   types found in the prompt), prompt_coverage (share of the prompt's types in the
//!   response), prompt_content_coverage (the same for the prompt's non-stop-words),
//!   prompt_bigram_coverage (share of the prompt's word bigrams in the response),
//!   script_mismatch (the response's dominant writing system is not the prompt's),
//!   prompt_script_share (share of the response's letters in the prompt's writing system),
//!   sim_word_tfidf_prompt, sim_char_tfidf_prompt (cosines);
//! - A vs B: identical_ab, jaccard_words_ab, jaccard_bigrams_ab, sim_word_tfidf_ab,
//!   sim_char_tfidf_ab (symmetric), and `a_`/`b_`/`diff_words_in_other` (share of a
//!   response's word types found in the other);
//! - with `semantic` on, cosines of sentence embeddings given to [`Extractor::transform`]:
//!   `a_`/`b_`/`diff_sem_sim_prompt` (each response against the prompt) and `sem_sim_ab`;
//! - `tfidf_w:<n-gram>` and `tfidf_c:<n-gram>`: A's minus B's TF-IDF weight.

mod analysis;
mod columns;
mod quality;
mod structure;
mod table;
mod text_stats;
mod tfidf;
mod turns;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use analysis::analyze;
pub use analysis::join_turns;
use columns::{write_dense_row, ColumnKind, Schema, SemanticSimilarities, Similarities, Values};
pub use table::{CsrMatrix, FeatureTable, Orientation};
pub use tfidf::TfidfConfig;
use tfidf::{SavedVocabularies, Tfidf};
pub use turns::{parse_turns, Turns, TurnsIssue};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`FeatureConfig`] value out of range (e.g. an empty n-gram range).
    #[error("invalid feature configuration: {0}")]
    InvalidConfig(String),
    /// A saved [`ExtractorState`] that cannot be restored.
    #[error("invalid saved feature state: {0}")]
    InvalidState(String),
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

/// Settings of the feature extraction; `Default` gives the tuned defaults. Deserialises from a
/// partial document (missing fields take their defaults; unknown fields are rejected).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    pub tfidf: TfidfConfig,
    /// Columns from sentence embeddings, which the caller then passes to
    /// [`Extractor::transform`] for every battle.
    pub semantic: bool,
    /// Dense columns left out, as glob patterns over their names (`*hedges`, `a_flesch_*`):
    /// for ablations. Each pattern must match a column, and a response's `a_` and `b_`
    /// columns go together.
    pub exclude: Vec<String>,
}

/// Sentence embeddings of one battle's prompt and responses, from an encoder outside this
/// crate (any dimension, the same for all three).
#[derive(Clone, Copy, Debug)]
pub struct BattleEmbeddings<'a> {
    pub prompt: &'a [f32],
    pub response_a: &'a [f32],
    pub response_b: &'a [f32],
}

impl BattleEmbeddings<'_> {
    fn similarities(&self) -> SemanticSimilarities {
        SemanticSimilarities {
            prompt_a: cosine(self.prompt, self.response_a),
            prompt_b: cosine(self.prompt, self.response_b),
            a_b: cosine(self.response_a, self.response_b),
        }
    }
}

/// Cosine similarity, summed in index order so that `cosine(u, v)` and `cosine(v, u)` are
/// bit-identical; 0 for a zero vector.
fn cosine(u: &[f32], v: &[f32]) -> f64 {
    let (mut dot, mut uu, mut vv) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in u.iter().zip(v) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        uu += x * x;
        vv += y * y;
    }
    if uu == 0.0 || vv == 0.0 {
        0.0
    } else {
        dot / (uu * vv).sqrt()
    }
}

/// Fitted TF-IDF vocabularies plus the column layout.
#[derive(Clone, Debug)]
pub struct Extractor {
    config: FeatureConfig,
    tfidf: Tfidf,
    diff_columns: DiffColumns,
    similarities: Similarities,
    dense_kinds: Vec<ColumnKind>,
    /// Per dense column before `exclude`: whether it is kept.
    kept: Vec<bool>,
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
        Extractor::assemble(tfidf, config.clone())
    }

    /// What fitting learned, to be saved with a run: [`Extractor::restore`] rebuilds an
    /// extractor that computes bit-identical features.
    pub fn state(&self) -> ExtractorState {
        ExtractorState {
            format: ExtractorState::FORMAT,
            config: self.config.clone(),
            vocabularies: self.tfidf.saved(),
        }
    }

    /// The extractor a saved [`ExtractorState`] describes; refuses a state whose parts
    /// disagree (vocabularies against the config, lengths, idf values, hashing).
    pub fn restore(state: ExtractorState) -> Result<Extractor, Error> {
        if state.format != ExtractorState::FORMAT {
            return Err(Error::InvalidState(format!(
                "format {}, this build reads format {}",
                state.format,
                ExtractorState::FORMAT
            )));
        }
        state.config.tfidf.validate()?;
        let tfidf = Tfidf::restore(state.vocabularies, &state.config.tfidf)?;
        Extractor::assemble(tfidf, state.config)
    }

    /// The column layout of a fitted TF-IDF.
    fn assemble(tfidf: Tfidf, config: FeatureConfig) -> Result<Extractor, Error> {
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
            config.semantic.then(SemanticSimilarities::default),
        );
        let kept = kept_columns(&schema, &config.exclude)?;
        let dense_kinds = kept_items(schema.kinds, &kept);
        let mut names = kept_items(schema.names, &kept);
        let diff_columns = DiffColumns::new(&tfidf, &config.tfidf);
        for (prefix, vocabulary, n) in [
            ("tfidf_w:", &tfidf.word, diff_columns.word),
            ("tfidf_c:", &tfidf.char, diff_columns.char),
        ] {
            if let Some(vocabulary) = vocabulary {
                let kept = &vocabulary.names[..n as usize];
                names.extend(kept.iter().map(|name| format!("{prefix}{name}")));
            }
        }
        Ok(Extractor {
            config,
            tfidf,
            diff_columns,
            similarities,
            dense_kinds,
            kept,
            names,
        })
    }

    /// Computes all features for every battle, in parallel over blocks of battles. With
    /// `semantic` on, `embeddings` holds one entry per battle; otherwise it is empty.
    pub fn transform(
        &self,
        battles: &[Battle],
        embeddings: &[BattleEmbeddings],
    ) -> Result<FeatureTable, Error> {
        let expected = if self.config.semantic {
            battles.len()
        } else {
            0
        };
        if embeddings.len() != expected {
            return Err(Error::InvalidConfig(format!(
                "{} battles with {} sentence embeddings; the extractor was fitted {}",
                battles.len(),
                embeddings.len(),
                if self.config.semantic {
                    "with semantic features"
                } else {
                    "without semantic features"
                }
            )));
        }
        if let Some(first) = embeddings.first() {
            let dim = first.prompt.len();
            let same = |e: &BattleEmbeddings| {
                [e.prompt, e.response_a, e.response_b]
                    .iter()
                    .all(|v| v.len() == dim)
            };
            if !embeddings.iter().all(same) {
                return Err(Error::InvalidConfig(
                    "sentence embeddings of different dimensions".into(),
                ));
            }
        }
        // A few blocks per thread balance the load; each block keeps its own scratch buffers
        // (and word cache) for all its rows.
        let block_len = battles
            .len()
            .div_ceil(8 * rayon::current_num_threads())
            .max(1);
        let blocks: Vec<Rows> = battles
            .par_chunks(block_len)
            .enumerate()
            .map(|(block_index, block)| {
                let mut scratch = tfidf::Scratch::default();
                let mut rows = Rows::default();
                for (offset, battle) in block.iter().enumerate() {
                    let semantic = embeddings
                        .get(block_index * block_len + offset)
                        .map(BattleEmbeddings::similarities);
                    self.push_row(battle, semantic, &mut scratch, &mut rows);
                }
                rows
            })
            .collect();

        let n_rows = blocks.iter().map(|b| b.sparse_ends.len()).sum::<usize>();
        let sparse_nnz = blocks.iter().map(|b| b.sparse_indices.len()).sum();
        let mut table = FeatureTable {
            kinds: self.dense_kinds.clone(),
            n_cols: self.names.len(),
            dense: Vec::with_capacity(n_rows * self.dense_kinds.len()),
            sparse_indptr: Vec::with_capacity(n_rows + 1),
            sparse_indices: Vec::with_capacity(sparse_nnz),
            sparse_values: Vec::with_capacity(sparse_nnz),
        };
        table.sparse_indptr.push(0);
        for block in blocks {
            let offset = table.sparse_indices.len();
            table.dense.extend_from_slice(&block.dense);
            table
                .sparse_indices
                .extend_from_slice(&block.sparse_indices);
            table.sparse_values.extend_from_slice(&block.sparse_values);
            table
                .sparse_indptr
                .extend(block.sparse_ends.iter().map(|end| offset + end));
        }
        Ok(table)
    }

    /// Appends the dense values and the A − B TF-IDF differences of one battle.
    fn push_row(
        &self,
        battle: &Battle,
        semantic: Option<SemanticSimilarities>,
        scratch: &mut tfidf::Scratch,
        rows: &mut Rows,
    ) {
        let prompt = analyze(&battle.prompt, &self.tfidf, scratch);
        let a = analyze(&battle.response_a, &self.tfidf, scratch);
        let b = analyze(&battle.response_b, &self.tfidf, scratch);
        let identical = battle.response_a == battle.response_b;
        let mut dense = Values {
            row: &mut rows.dense,
            kept: &self.kept,
            column: 0,
        };
        write_dense_row(
            &mut dense,
            &prompt,
            &a,
            &b,
            identical,
            self.similarities,
            semantic,
        );

        let DiffColumns { word, char } = self.diff_columns;
        let word_offset = self.dense_kinds.len() as u32;
        let char_offset = word_offset + word;
        let (indices, values) = (&mut rows.sparse_indices, &mut rows.sparse_values);
        a.word_tfidf
            .push_difference(&b.word_tfidf, word, word_offset, indices, values);
        a.char_tfidf
            .push_difference(&b.char_tfidf, char, char_offset, indices, values);
        rows.sparse_ends.push(rows.sparse_indices.len());
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    pub fn feature_names(&self) -> &[String] {
        &self.names
    }
}

/// An [`Extractor`]'s fitted state as saved with a run (the run folder's `features.json`):
/// the feature config and the TF-IDF vocabularies with their idf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorState {
    /// Bumped whenever the features computed from the same state change.
    format: u32,
    config: FeatureConfig,
    vocabularies: SavedVocabularies,
}

impl ExtractorState {
    const FORMAT: u32 = 2;
}

/// How many n-grams of each vocabulary (its first, most frequent ones) become A−B columns.
#[derive(Clone, Copy, Debug)]
struct DiffColumns {
    word: u32,
    char: u32,
}

impl DiffColumns {
    fn new(tfidf: &Tfidf, config: &TfidfConfig) -> DiffColumns {
        let kept = |vocabulary: &Option<tfidf::Vocabulary>, wanted: usize| {
            vocabulary
                .as_ref()
                .map_or(0, |v| v.len().min(wanted) as u32)
        };
        DiffColumns {
            word: kept(&tfidf.word, config.word_diff_columns),
            char: kept(&tfidf.char, config.char_diff_columns),
        }
    }
}

/// Feature rows of a block of battles, concatenated into a [`FeatureTable`] afterwards.
#[derive(Default)]
struct Rows {
    dense: Vec<f32>,
    /// End of each row in `sparse_indices`/`sparse_values`.
    sparse_ends: Vec<usize>,
    sparse_indices: Vec<u32>,
    sparse_values: Vec<f32>,
}

/// Which of the schema's columns survive the `exclude` patterns; refuses a pattern that is not
/// a glob or matches nothing, and a response column left without its other side.
fn kept_columns(schema: &Schema, exclude: &[String]) -> Result<Vec<bool>, Error> {
    let mut kept = vec![true; schema.names.len()];
    for text in exclude {
        let pattern = glob::Pattern::new(text)
            .map_err(|e| Error::InvalidConfig(format!("exclude pattern {text:?}: {e}")))?;
        let mut matched = false;
        for (keep, name) in kept.iter_mut().zip(&schema.names) {
            if pattern.matches(name) {
                *keep = false;
                matched = true;
            }
        }
        if !matched {
            return Err(Error::InvalidConfig(format!(
                "exclude pattern {text:?} matches no dense column"
            )));
        }
    }
    for (i, kind) in schema.kinds.iter().enumerate() {
        // A side-A column is always followed by its side-B partner (see `ColumnKind`).
        if *kind == ColumnKind::SideA && kept[i] != kept[i + 1] {
            return Err(Error::InvalidConfig(format!(
                "exclude leaves out one of {} and {}: a swap needs both or neither",
                schema.names[i],
                schema.names[i + 1]
            )));
        }
    }
    Ok(kept)
}

fn kept_items<T>(items: Vec<T>, kept: &[bool]) -> Vec<T> {
    items
        .into_iter()
        .zip(kept)
        .filter_map(|(item, &keep)| keep.then_some(item))
        .collect()
}

/// At most `max` items (0: all), evenly spaced and in order.
fn evenly_spaced<T>(items: &[T], max: usize) -> Vec<&T> {
    if max == 0 || items.len() <= max {
        return items.iter().collect();
    }
    (0..max).map(|i| &items[i * items.len() / max]).collect()
}
