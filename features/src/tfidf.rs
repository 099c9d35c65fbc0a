//! TF-IDF over word n-grams and within-word character n-grams, like scikit-learn's
//! `TfidfVectorizer(sublinear_tf=True, smooth_idf=True, norm="l2")` with `analyzer="word"` and
//! `analyzer="char_wb"`.
//!
//! Tokens are the lowercased `unicode_words` of a text. N-grams are identified by 64-bit hashes,
//! so the hot path allocates no strings; only the selected vocabulary entries get a name.

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::text_stats::{hash_bytes, Words};
use crate::Error;

/// TF-IDF settings. `*_max_features` keep the n-grams with the highest document frequency in
/// the fitting corpus (ties broken by hash, so the choice is deterministic).
///
/// The defaults keep rows sparse: on the alpaca preference data (responses of ~1.5 KB) they
/// give ~310 non-zero TF-IDF differences per battle (~140 word, ~170 char) next to ~90
/// non-zero dense features. Character n-grams are the expensive part: every document hits
/// most frequent ones, hence the small `char_max_features` and the `max_df` cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TfidfConfig {
    /// Word n-gram features on/off.
    pub word: bool,
    /// Character n-gram features on/off.
    pub char: bool,
    pub word_ngram_min: usize,
    pub word_ngram_max: usize,
    /// Vocabulary size for word n-grams.
    pub word_max_features: usize,
    /// How many word n-grams (highest document frequency first) also enter the model as
    /// A−B difference columns; the whole vocabulary serves the cosine similarities.
    pub word_diff_columns: usize,
    /// Character n-grams are taken within each word padded with one space on both sides.
    pub char_ngram_min: usize,
    pub char_ngram_max: usize,
    /// Vocabulary size for character n-grams.
    pub char_max_features: usize,
    /// As `word_diff_columns`, for character n-grams.
    pub char_diff_columns: usize,
    /// N-grams found in fewer fitting documents than this are never selected.
    pub min_df: usize,
    /// N-grams found in more than this fraction of fitting documents are never selected
    /// (as scikit-learn's float `max_df`). Near-universal n-grams are dropped because they
    /// add a non-zero to almost every row while separating little.
    pub max_df: f64,
    /// Only the first this many characters of each text enter TF-IDF (0: no limit). Bounds the
    /// cost of very long answers; the length and structure features still see the whole text.
    pub max_chars_per_text: usize,
    /// Fit on at most this many battles (evenly spaced; 0: all). Each battle gives three
    /// documents (prompt, A, B). Document frequencies and idf come from this sample.
    pub fit_max_battles: usize,
}

impl Default for TfidfConfig {
    fn default() -> Self {
        TfidfConfig {
            word: true,
            char: true,
            word_ngram_min: 1,
            word_ngram_max: 2,
            word_max_features: 3_000,
            word_diff_columns: 100,
            char_ngram_min: 3,
            char_ngram_max: 5,
            char_max_features: 500,
            char_diff_columns: 0,
            min_df: 2,
            max_df: 0.2,
            max_chars_per_text: 2_000,
            fit_max_battles: 5_000,
        }
    }
}

impl TfidfConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |what: &str| Err(Error::InvalidConfig(what.to_string()));
        if self.word && !(1 <= self.word_ngram_min && self.word_ngram_min <= self.word_ngram_max) {
            return invalid("tfidf word n-gram range needs 1 <= word_ngram_min <= word_ngram_max");
        }
        if self.char && !(1 <= self.char_ngram_min && self.char_ngram_min <= self.char_ngram_max) {
            return invalid("tfidf char n-gram range needs 1 <= char_ngram_min <= char_ngram_max");
        }
        if !(self.max_df > 0.0 && self.max_df <= 1.0) {
            return invalid("tfidf max_df must be in (0, 1]");
        }
        // CSR column indices are i32; leave room for the dense columns.
        let tfidf_columns = self
            .word_max_features
            .saturating_add(self.char_max_features);
        if tfidf_columns > i32::MAX as usize / 2 {
            return invalid("tfidf word_max_features + char_max_features must be below 2^30");
        }
        Ok(())
    }
}

/// The fitted word and character vocabularies (each absent when switched off).
#[derive(Clone, Debug)]
pub(crate) struct Tfidf {
    pub word: Option<Vocabulary>,
    pub char: Option<Vocabulary>,
    max_chars_per_text: usize,
}

/// The (word, char) vocabulary specs of a config; `None` for a switched-off analyzer.
fn specs(config: &TfidfConfig) -> [Option<VocabularySpec>; 2] {
    [
        config.word.then_some(VocabularySpec {
            analyzer: Analyzer::Word {
                min: config.word_ngram_min,
                max: config.word_ngram_max,
            },
            max_features: config.word_max_features,
        }),
        config.char.then_some(VocabularySpec {
            analyzer: Analyzer::Char {
                min: config.char_ngram_min,
                max: config.char_ngram_max,
            },
            max_features: config.char_max_features,
        }),
    ]
}

impl Tfidf {
    /// Fits on lowercased documents; the config must have been validated.
    pub fn fit(lowercase_documents: &[String], config: &TfidfConfig) -> Tfidf {
        let [word, char] = specs(config);
        let mut vocabularies = Vocabulary::fit_all(
            lowercase_documents,
            &[word, char].into_iter().flatten().collect::<Vec<_>>(),
            (config.min_df, config.max_df),
            config.max_chars_per_text,
        )
        .into_iter();
        Tfidf {
            word: word.and_then(|_| vocabularies.next()),
            char: char.and_then(|_| vocabularies.next()),
            max_chars_per_text: config.max_chars_per_text,
        }
    }

    /// The fitted vocabularies, to be saved (see [`SavedVocabularies`]).
    pub fn saved(&self) -> SavedVocabularies {
        SavedVocabularies {
            hash_probe: hash_probe(),
            word: self.word.as_ref().map(Vocabulary::saved),
            char: self.char.as_ref().map(Vocabulary::saved),
        }
    }

    /// Rebuilds the fitted TF-IDF from saved vocabularies and the (validated) config they were
    /// fitted with, checking that they agree.
    pub fn restore(saved: SavedVocabularies, config: &TfidfConfig) -> Result<Tfidf, Error> {
        if saved.hash_probe != hash_probe() {
            return Err(Error::InvalidState(
                "it was written by a build that hashes n-grams differently; refit".into(),
            ));
        }
        let [word_spec, char_spec] = specs(config);
        let restore =
            |what: &str, spec: Option<VocabularySpec>, saved: Option<SavedVocabulary>| match (
                spec, saved,
            ) {
                (None, None) => Ok(None),
                (Some(spec), Some(saved)) => Vocabulary::restore(spec, saved)
                    .map(Some)
                    .map_err(|e| Error::InvalidState(format!("{what} vocabulary: {e}"))),
                (spec, _) => Err(Error::InvalidState(format!(
                    "the config has {what} n-grams {}, the saved vocabularies {}",
                    if spec.is_some() { "on" } else { "off" },
                    if spec.is_some() {
                        "have none"
                    } else {
                        "have them"
                    },
                ))),
            };
        Ok(Tfidf {
            word: restore("word", word_spec, saved.word)?,
            char: restore("char", char_spec, saved.char)?,
            max_chars_per_text: config.max_chars_per_text,
        })
    }

    /// (word, char) TF-IDF vectors of one document; empty for a switched-off analyzer.
    pub fn transform(&self, words: &Words<'_>, scratch: &mut Scratch) -> (SparseVec, SparseVec) {
        let tokens = words.tokens(self.max_chars_per_text);
        let vectorize = |vocabulary: &Option<Vocabulary>, scratch: &mut Scratch| {
            vocabulary
                .as_ref()
                .map(|v| v.transform(&tokens, scratch))
                .unwrap_or_default()
        };
        (
            vectorize(&self.word, scratch),
            vectorize(&self.char, scratch),
        )
    }
}

/// Which n-grams a vocabulary is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Analyzer {
    Word { min: usize, max: usize },
    Char { min: usize, max: usize },
}

/// The tokens of one document that TF-IDF looks at: words (lowercase) and their hashes.
pub(crate) struct Tokens<'a> {
    pub words: &'a [&'a str],
    pub hashes: &'a [u64],
}

impl Words<'_> {
    /// The words that lie within the first `max_chars` characters of `text` (0: all).
    pub fn tokens(&self, max_chars: usize) -> Tokens<'_> {
        let mut n_words = self.words.len();
        if max_chars > 0 {
            if let Some((cut, _)) = self.text.char_indices().nth(max_chars) {
                let text_start = self.text.as_ptr() as usize;
                n_words = self.words.partition_point(|word| {
                    word.as_ptr() as usize + word.len() - text_start <= cut
                });
            }
        }
        Tokens {
            words: &self.words[..n_words],
            hashes: &self.hashes[..n_words],
        }
    }
}

impl Tokens<'_> {
    /// Calls `visit(hash, gram)` for every n-gram occurrence, in text order.
    fn for_each_gram(&self, analyzer: Analyzer, mut visit: impl FnMut(u64, Gram<'_>)) {
        match analyzer {
            Analyzer::Word { min, max } => {
                for start in 0..self.hashes.len() {
                    let mut hash = 0;
                    for n in 1..=max.min(self.hashes.len() - start) {
                        hash = combine(hash, self.hashes[start + n - 1]);
                        if n >= min {
                            visit(hash, Gram::Words(&self.words[start..start + n]));
                        }
                    }
                }
            }
            Analyzer::Char { min, max } => {
                let mut buffers = CharGramBuffers::default();
                for word in self.words {
                    for_each_char_gram(word, min, max, &mut buffers, &mut visit);
                }
            }
        }
    }
}

/// Reusable buffers for [`for_each_char_gram`].
#[derive(Default)]
struct CharGramBuffers {
    padded: String,
    boundaries: Vec<usize>,
}

/// Calls `visit(key, gram)` for every `min..=max`-char n-gram of `word` padded with spaces.
fn for_each_char_gram(
    word: &str,
    min: usize,
    max: usize,
    buffers: &mut CharGramBuffers,
    visit: &mut impl FnMut(u64, Gram<'_>),
) {
    let CharGramBuffers { padded, boundaries } = buffers;
    padded.clear();
    padded.push(' ');
    padded.push_str(word);
    padded.push(' ');
    if padded.is_ascii() {
        // One byte per char: no boundary table needed.
        for n in min..=max.min(padded.len()) {
            for start in 0..=padded.len() - n {
                let gram = &padded[start..start + n];
                visit(char_gram_key(gram.as_bytes()), Gram::Chars(gram));
            }
        }
        return;
    }
    boundaries.clear();
    boundaries.extend(padded.char_indices().map(|(at, _)| at));
    boundaries.push(padded.len());
    let n_chars = boundaries.len() - 1;
    for n in min..=max.min(n_chars) {
        for start in 0..=n_chars - n {
            let gram = &padded[boundaries[start]..boundaries[start + n]];
            visit(char_gram_key(gram.as_bytes()), Gram::Chars(gram));
        }
    }
}

/// Key of a character n-gram: up to 7 bytes are packed verbatim with the length in the top
/// byte (exact and cheaper than hashing); longer grams are hashed with the top bit set, so the
/// two kinds of key never coincide.
fn char_gram_key(bytes: &[u8]) -> u64 {
    if bytes.len() <= 7 {
        let mut packed = [0u8; 8];
        packed[..bytes.len()].copy_from_slice(bytes);
        packed[7] = bytes.len() as u8;
        u64::from_le_bytes(packed)
    } else {
        hash_bytes(bytes) | 1 << 63
    }
}

/// Hash of a word n-gram from the hashes of its words (order-sensitive).
fn combine(previous: u64, word: u64) -> u64 {
    (previous.rotate_left(26) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One n-gram occurrence, turned into a string only for vocabulary names.
enum Gram<'a> {
    Words(&'a [&'a str]),
    Chars(&'a str),
}

impl Gram<'_> {
    fn text(&self) -> String {
        match self {
            Gram::Words(words) => words.join(" "),
            Gram::Chars(chars) => chars.to_string(),
        }
    }
}

/// A sparse vector with strictly increasing indices.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVec {
    /// Dot product, summed in index order so that `a.dot(b)` and `b.dot(a)` are bit-identical.
    pub fn dot(&self, other: &SparseVec) -> f64 {
        let (mut i, mut j) = (0, 0);
        let mut sum = 0.0f64;
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += f64::from(self.values[i]) * f64::from(other.values[j]);
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }

    /// Appends the non-zero entries of `self - other` below index `limit` (offset by
    /// `offset`) to `indices`/`values`.
    pub fn push_difference(
        &self,
        other: &SparseVec,
        limit: u32,
        offset: u32,
        indices: &mut Vec<u32>,
        values: &mut Vec<f32>,
    ) {
        let (mut i, mut j) = (0, 0);
        let below_limit = |index: Option<&u32>| index.copied().filter(|&k| k < limit);
        loop {
            let left = below_limit(self.indices.get(i)).unwrap_or(u32::MAX);
            let right = below_limit(other.indices.get(j)).unwrap_or(u32::MAX);
            let (index, value) = match left.cmp(&right) {
                std::cmp::Ordering::Less => {
                    i += 1;
                    (left, self.values[i - 1])
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    (right, -other.values[j - 1])
                }
                std::cmp::Ordering::Equal if left == u32::MAX => break,
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (left, self.values[i - 1] - other.values[j - 1])
                }
            };
            if value != 0.0 {
                indices.push(index + offset);
                values.push(value);
            }
        }
    }
}

/// A fitted vocabulary: n-gram hash -> column, idf per column, and readable names.
#[derive(Clone, Debug)]
pub(crate) struct Vocabulary {
    pub analyzer: Analyzer,
    columns: FxHashMap<u64, u32>,
    idf: Vec<f64>,
    pub names: Vec<String>,
}

/// What to fit: an analyzer and its vocabulary size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VocabularySpec {
    pub analyzer: Analyzer,
    pub max_features: usize,
}

/// Fitted vocabularies as saved with a run. N-grams are known by their 64-bit hashes, so the
/// saved state carries the hash of a fixed probe text: a build whose hashing differs (another
/// hash function or version) is refused instead of silently matching nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedVocabularies {
    hash_probe: u64,
    word: Option<SavedVocabulary>,
    char: Option<SavedVocabulary>,
}

/// One vocabulary in column order: each n-gram's hash, readable name and idf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedVocabulary {
    hashes: Vec<u64>,
    names: Vec<String>,
    idf: Vec<f64>,
}

fn hash_probe() -> u64 {
    hash_bytes("ensemble n-gram hash probe: Ünïcode, 1234".as_bytes())
}

impl Vocabulary {
    /// Fits one vocabulary per spec in a single pass over the lowercased documents: selects
    /// the `max_features` n-grams with the highest document frequency (within `min_df`..`max_df`) and
    /// computes smooth idf = ln((1 + n) / (1 + df)) + 1.
    pub fn fit_all(
        documents: &[String],
        specs: &[VocabularySpec],
        (min_df, max_df): (usize, f64),
        max_chars_per_text: usize,
    ) -> Vec<Vocabulary> {
        let empty_counts = || vec![FxHashMap::<u64, u32>::default(); specs.len()];
        let document_frequencies = documents
            .par_iter()
            .fold(
                || (empty_counts(), Vec::<u64>::new()),
                |(mut counts, mut grams), document| {
                    let words = Words::new(document);
                    let tokens = words.tokens(max_chars_per_text);
                    for (spec, counts) in specs.iter().zip(&mut counts) {
                        grams.clear();
                        tokens.for_each_gram(spec.analyzer, |hash, _| grams.push(hash));
                        grams.sort_unstable();
                        grams.dedup();
                        for &hash in &grams {
                            *counts.entry(hash).or_default() += 1;
                        }
                    }
                    (counts, grams)
                },
            )
            .map(|(counts, _)| counts)
            .reduce(empty_counts, |mut left, right| {
                for (big, mut small) in left.iter_mut().zip(right) {
                    if big.len() < small.len() {
                        std::mem::swap(big, &mut small);
                    }
                    for (hash, count) in small {
                        *big.entry(hash).or_default() += count;
                    }
                }
                left
            });

        let n_documents = documents.len() as f64;
        let mut vocabularies: Vec<Vocabulary> = specs
            .iter()
            .zip(document_frequencies)
            .map(|(spec, frequencies)| {
                let mut selected: Vec<(u64, u32)> = frequencies
                    .into_iter()
                    .filter(|&(_, df)| {
                        df as usize >= min_df.max(1) && f64::from(df) <= max_df * n_documents
                    })
                    .collect();
                selected.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                selected.truncate(spec.max_features);
                Vocabulary {
                    analyzer: spec.analyzer,
                    columns: selected
                        .iter()
                        .enumerate()
                        .map(|(column, &(hash, _))| (hash, column as u32))
                        .collect(),
                    idf: selected
                        .iter()
                        .map(|&(_, df)| ((1.0 + n_documents) / (1.0 + f64::from(df))).ln() + 1.0)
                        .collect(),
                    names: Vec::new(),
                }
            })
            .collect();
        name_columns(documents, &mut vocabularies, max_chars_per_text);
        vocabularies
    }

    pub fn len(&self) -> usize {
        self.idf.len()
    }

    fn saved(&self) -> SavedVocabulary {
        let mut hashes = vec![0; self.len()];
        for (&hash, &column) in &self.columns {
            hashes[column as usize] = hash;
        }
        SavedVocabulary {
            hashes,
            names: self.names.clone(),
            idf: self.idf.clone(),
        }
    }

    fn restore(spec: VocabularySpec, saved: SavedVocabulary) -> Result<Vocabulary, String> {
        let SavedVocabulary { hashes, names, idf } = saved;
        let n = hashes.len();
        if names.len() != n || idf.len() != n {
            return Err(format!(
                "{n} hashes, {} names and {} idf values",
                names.len(),
                idf.len()
            ));
        }
        if n > spec.max_features {
            return Err(format!(
                "{n} n-grams, more than the config's {}",
                spec.max_features
            ));
        }
        if let Some(bad) = idf.iter().position(|v| !(v.is_finite() && *v >= 1.0)) {
            return Err(format!(
                "idf of `{}` is {}; smooth idf is finite and at least 1",
                names[bad], idf[bad]
            ));
        }
        let columns: FxHashMap<u64, u32> = hashes
            .iter()
            .enumerate()
            .map(|(column, &hash)| (hash, column as u32))
            .collect();
        if columns.len() != n {
            return Err("an n-gram hash appears twice".into());
        }
        Ok(Vocabulary {
            analyzer: spec.analyzer,
            columns,
            idf,
            names,
        })
    }

    /// Sublinear-tf TF-IDF vector of one document, l2-normalised.
    pub fn transform(&self, tokens: &Tokens<'_>, scratch: &mut Scratch) -> SparseVec {
        let Scratch {
            counts,
            touched,
            char_columns_of_word,
            char_buffers,
        } = scratch;
        if counts.len() < self.len() {
            counts.resize(self.len(), 0);
        }
        let mut count = |column: u32| {
            let count = &mut counts[column as usize];
            if *count == 0 {
                touched.push(column);
            }
            *count += 1;
        };
        match self.analyzer {
            Analyzer::Word { .. } => tokens.for_each_gram(self.analyzer, |key, _| {
                if let Some(&column) = self.columns.get(&key) {
                    count(column);
                }
            }),
            Analyzer::Char { min, max } => {
                // Words repeat a lot, so their char n-gram columns are looked up once per
                // distinct word and then reused.
                if char_columns_of_word.len() > MAX_CACHED_WORDS {
                    char_columns_of_word.clear();
                }
                for (word, &hash) in tokens.words.iter().zip(tokens.hashes) {
                    let columns = char_columns_of_word.entry(hash).or_insert_with(|| {
                        let mut columns = Vec::new();
                        for_each_char_gram(word, min, max, char_buffers, &mut |key, _| {
                            if let Some(&column) = self.columns.get(&key) {
                                columns.push(column);
                            }
                        });
                        columns.into_boxed_slice()
                    });
                    columns.iter().for_each(|&column| count(column));
                }
            }
        }
        touched.sort_unstable();
        let weights: Vec<f64> = touched
            .iter()
            .map(|&column| {
                let term_frequency = 1.0 + f64::from(counts[column as usize]).ln();
                counts[column as usize] = 0;
                term_frequency * self.idf[column as usize]
            })
            .collect();
        let norm = weights.iter().map(|w| w * w).sum::<f64>().sqrt();
        let values = weights.iter().map(|w| (w / norm) as f32).collect();
        let indices = touched.clone();
        touched.clear();
        SparseVec { indices, values }
    }
}

/// Bound on the per-thread word -> char n-gram columns cache (it is cleared when exceeded).
const MAX_CACHED_WORDS: usize = 200_000;

/// Per-thread buffers for [`Vocabulary::transform`]: occurrence counts per column (all zero
/// between calls), the columns seen in the current document, and the char n-gram columns of
/// words seen before (valid for one vocabulary: a `Scratch` must not be shared between
/// extractors).
#[derive(Default)]
pub(crate) struct Scratch {
    counts: Vec<u32>,
    touched: Vec<u32>,
    char_columns_of_word: FxHashMap<u64, Box<[u32]>>,
    char_buffers: CharGramBuffers,
}

/// Finds the text of every selected n-gram by scanning documents until all are named
/// (frequent n-grams appear early, so this usually stops after a few documents).
fn name_columns(documents: &[String], vocabularies: &mut [Vocabulary], max_chars_per_text: usize) {
    for vocabulary in vocabularies.iter_mut() {
        vocabulary.names = vec![String::new(); vocabulary.len()];
    }
    let mut unnamed: usize = vocabularies.iter().map(Vocabulary::len).sum();
    for document in documents {
        if unnamed == 0 {
            break;
        }
        let words = Words::new(document);
        let tokens = words.tokens(max_chars_per_text);
        for vocabulary in vocabularies.iter_mut() {
            let Vocabulary {
                analyzer,
                columns,
                names,
                ..
            } = vocabulary;
            tokens.for_each_gram(*analyzer, |hash, gram| {
                if let Some(&column) = columns.get(&hash) {
                    let name = &mut names[column as usize];
                    if name.is_empty() {
                        *name = gram.text();
                        unnamed -= 1;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn fit(texts: &[&str], analyzer: Analyzer, max_features: usize, min_df: usize) -> Vocabulary {
        let documents: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let spec = VocabularySpec {
            analyzer,
            max_features,
        };
        Vocabulary::fit_all(&documents, &[spec], (min_df, 1.0), 0).remove(0)
    }

    fn vectorize(vocabulary: &Vocabulary, text: &str) -> SparseVec {
        vocabulary.transform(&Words::new(text).tokens(0), &mut Scratch::default())
    }

    fn value_of(vocabulary: &Vocabulary, vector: &SparseVec, name: &str) -> f64 {
        let column = vocabulary.names.iter().position(|n| n == name).unwrap() as u32;
        let at = vector.indices.iter().position(|&i| i == column).unwrap();
        f64::from(vector.values[at])
    }

    #[test]
    fn word_tfidf_matches_hand_computed_values() {
        let vocabulary = fit(
            &["a b b", "a c", "b c c c"],
            Analyzer::Word { min: 1, max: 1 },
            10,
            1,
        );
        // df: a=2, b=2, c=2 -> idf = ln(4/3) + 1 for all; ties are ordered by hash.
        assert_eq!(vocabulary.len(), 3);
        let mut names = vocabulary.names.clone();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        let idf = (4.0f64 / 3.0).ln() + 1.0;
        assert!(vocabulary.idf.iter().all(|&v| (v - idf).abs() < 1e-12));

        // Doc 1 "a b b": tf a=1 -> 1, b=2 -> 1 + ln 2; equal idf cancels in the l2 norm.
        let v = vectorize(&vocabulary, "a b b");
        let (wa, wb) = (1.0, 1.0 + 2f64.ln());
        let norm = (wa * wa + wb * wb).sqrt();
        assert_relative_eq!(value_of(&vocabulary, &v, "a"), wa / norm, epsilon = 1e-6);
        assert_relative_eq!(value_of(&vocabulary, &v, "b"), wb / norm, epsilon = 1e-6);
        assert_eq!(v.indices.len(), 2);
    }

    #[test]
    fn idf_weights_rare_terms_higher() {
        // scikit-learn, TfidfVectorizer(sublinear_tf=True), on ["x y", "x z", "x"]:
        // idf x = ln(4/4)+1 = 1, y = z = ln(4/2)+1; doc "x y" -> [1, 1+ln2] / norm.
        let vocabulary = fit(
            &["x y", "x z", "x"],
            Analyzer::Word { min: 1, max: 1 },
            10,
            1,
        );
        assert_eq!(vocabulary.names[0], "x", "most frequent first");
        let v = vectorize(&vocabulary, "x y");
        let (wx, wy) = (1.0, 2f64.ln() + 1.0);
        let norm = (wx * wx + wy * wy).sqrt();
        assert_relative_eq!(value_of(&vocabulary, &v, "x"), wx / norm, epsilon = 1e-6);
        assert_relative_eq!(value_of(&vocabulary, &v, "y"), wy / norm, epsilon = 1e-6);
        // Unknown n-grams are ignored; an empty document is the zero vector.
        assert_eq!(vectorize(&vocabulary, "w"), SparseVec::default());
        assert_eq!(vectorize(&vocabulary, ""), SparseVec::default());
    }

    #[test]
    fn word_bigrams_min_df_and_max_features() {
        let texts = ["how to cook", "how to bake", "to cook"];
        let vocabulary = fit(&texts, Analyzer::Word { min: 1, max: 2 }, 100, 2);
        let mut names = vocabulary.names.clone();
        names.sort();
        // df >= 2: how(2) to(3) cook(2) "how to"(2) "to cook"(2); bake and "to bake" dropped.
        assert_eq!(names, ["cook", "how", "how to", "to", "to cook"]);
        let top = fit(&texts, Analyzer::Word { min: 1, max: 2 }, 1, 1);
        assert_eq!(top.names, ["to"]);
    }

    #[test]
    fn char_ngrams_are_within_padded_words() {
        let vocabulary = fit(&["ab, c"], Analyzer::Char { min: 2, max: 3 }, 100, 1);
        let mut names = vocabulary.names.clone();
        names.sort();
        // " ab " -> " a", "ab", "b ", " ab", "ab "; " c " -> " c", "c ", " c ".
        assert_eq!(names, [" a", " ab", " c", " c ", "ab", "ab ", "b ", "c "]);
    }

    #[test]
    fn max_chars_keeps_only_words_inside_the_prefix() {
        let words = Words::new("ab cd éf gh");
        assert_eq!(words.tokens(0).words, ["ab", "cd", "éf", "gh"]);
        // The first 5 chars are "ab cd": "cd" ends exactly at the cut.
        assert_eq!(words.tokens(5).words, ["ab", "cd"]);
        assert_eq!(words.tokens(7).words, ["ab", "cd"], "éf is cut in half");
        assert_eq!(words.tokens(8).words, ["ab", "cd", "éf"]);
        assert_eq!(words.tokens(100).words.len(), 4);
    }

    #[test]
    fn non_ascii_char_ngrams_count_chars_not_bytes() {
        let vocabulary = fit(&["né"], Analyzer::Char { min: 3, max: 3 }, 100, 1);
        let mut names = vocabulary.names.clone();
        names.sort();
        assert_eq!(names, [" né", "né "]);
    }

    #[test]
    fn char_gram_keys_distinguish_lengths_and_long_grams() {
        assert_ne!(char_gram_key(b"ab"), char_gram_key(b"ab\0"));
        assert_ne!(char_gram_key(b"abcdefg"), char_gram_key(b"abcdefgh"));
        assert_eq!(char_gram_key(b"abcdefgh") >> 63, 1);
        assert_eq!(char_gram_key(b"abcdefg") >> 63, 0);
    }

    #[test]
    fn sparse_difference_and_dot() {
        let a = SparseVec {
            indices: vec![0, 2, 5],
            values: vec![0.5, 0.25, 1.0],
        };
        let b = SparseVec {
            indices: vec![2, 3, 5],
            values: vec![0.25, 2.0, 0.5],
        };
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        a.push_difference(&b, u32::MAX, 10, &mut indices, &mut values);
        assert_eq!(
            indices,
            [10, 13, 15],
            "equal values at 2 cancel and are omitted"
        );
        assert_eq!(values, [0.5, -2.0, 0.5]);
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        a.push_difference(&b, 5, 10, &mut indices, &mut values);
        assert_eq!(
            (indices, values),
            (vec![10, 13], vec![0.5, -2.0]),
            "index 5 is cut"
        );
        assert_eq!(a.dot(&b), 0.25 * 0.25 + 1.0 * 0.5);
        assert_eq!(a.dot(&b).to_bits(), b.dot(&a).to_bits());
    }
}
