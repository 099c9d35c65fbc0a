//! The dense columns: their names, how each behaves under an A/B swap, and their values.
//!
//! [`write_dense_row`] is the single place that lists the columns. It runs once with a
//! [`Schema`] sink to name them and once per battle with a [`Values`] sink, so names and values
//! cannot drift apart.

use crate::analysis::{ratio, shared_count, TextAnalysis};

/// How a column's value changes when responses A and B are exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// Unchanged (prompt features, A–B similarities).
    Symmetric,
    /// Negated (differences A − B and log-ratios).
    Antisymmetric,
    /// A's value; after a swap it holds B's value, found in the next column.
    SideA,
    /// B's value; after a swap it holds A's value, found in the previous column.
    SideB,
}

pub(crate) trait ColumnSink {
    /// Adds one column. `name` is only called by sinks that need names.
    fn push(&mut self, name: impl FnOnce() -> String, kind: ColumnKind, value: f64);

    fn symmetric(&mut self, name: &str, value: f64) {
        self.push(|| name.to_string(), ColumnKind::Symmetric, value);
    }

    /// `a_`, `b_` and `diff_` (A − B) columns.
    fn sides(&mut self, name: &str, a: f64, b: f64) {
        self.push(|| format!("a_{name}"), ColumnKind::SideA, a);
        self.push(|| format!("b_{name}"), ColumnKind::SideB, b);
        self.push(|| format!("diff_{name}"), ColumnKind::Antisymmetric, a - b);
    }

    /// `p_` (prompt), `a_`, `b_`, `diff_` columns for a ratio-like measure.
    fn ratios(&mut self, name: &str, prompt: f64, a: f64, b: f64) {
        self.push(|| format!("p_{name}"), ColumnKind::Symmetric, prompt);
        self.sides(name, a, b);
    }

    /// Like [`ColumnSink::ratios`] plus `logratio_` = ln(1 + a) − ln(1 + b), for counts; it is
    /// exactly antisymmetric, unlike a / b.
    fn counts(&mut self, name: &str, prompt: usize, a: usize, b: usize) {
        let (a, b) = (a as f64, b as f64);
        self.ratios(name, prompt as f64, a, b);
        let log_ratio = a.ln_1p() - b.ln_1p();
        self.push(
            || format!("logratio_{name}"),
            ColumnKind::Antisymmetric,
            log_ratio,
        );
    }
}

/// Collects column names and kinds.
#[derive(Default)]
pub(crate) struct Schema {
    pub names: Vec<String>,
    pub kinds: Vec<ColumnKind>,
}

impl ColumnSink for Schema {
    fn push(&mut self, name: impl FnOnce() -> String, kind: ColumnKind, _value: f64) {
        self.names.push(name());
        self.kinds.push(kind);
    }
}

/// Appends the values of one row's kept columns.
pub(crate) struct Values<'a> {
    pub row: &'a mut Vec<f32>,
    /// Per column of the full schema: whether it is kept.
    pub kept: &'a [bool],
    pub column: usize,
}

impl ColumnSink for Values<'_> {
    fn push(&mut self, _name: impl FnOnce() -> String, _kind: ColumnKind, value: f64) {
        if self.kept[self.column] {
            self.row.push(value as f32);
        }
        self.column += 1;
    }
}

/// Which TF-IDF similarities exist (a switched-off analyzer gets no columns).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Similarities {
    pub word: bool,
    pub char: bool,
}

/// Reads one number off a text's analysis.
type Measure<T> = fn(&TextAnalysis) -> T;

/// Writes every dense column of one battle. A and B are treated identically, so a swapped
/// battle yields the same values with a_/b_ exchanged and differences negated.
pub(crate) fn write_dense_row(
    sink: &mut impl ColumnSink,
    prompt: &TextAnalysis,
    a: &TextAnalysis,
    b: &TextAnalysis,
    identical_responses: bool,
    similarities: Similarities,
    semantic: Option<SemanticSimilarities>,
) {
    let counts: [(&str, Measure<usize>); 21] = [
        ("turns", |t| t.turns),
        ("chars", |t| t.classes.chars),
        ("words", |t| t.words),
        ("unique_words", |t| t.diversity.types),
        ("sentences", |t| t.sentences),
        ("lines", |t| t.structure.lines),
        ("paragraphs", |t| t.structure.paragraphs),
        ("headers", |t| t.structure.headers),
        ("bullets", |t| t.structure.bullets),
        ("numbered", |t| t.structure.numbered),
        ("code_blocks", |t| t.structure.code_blocks),
        ("code_lines", |t| t.structure.code_lines),
        ("table_rows", |t| t.structure.table_rows),
        ("bold", |t| t.structure.bold),
        ("links", |t| t.structure.links),
        ("refusals", |t| t.phrases.refusals),
        ("apologies", |t| t.phrases.apologies),
        ("digits", |t| t.classes.digits),
        ("punctuation", |t| t.classes.punctuation),
        ("questions", |t| t.classes.questions),
        ("exclamations", |t| t.classes.exclamations),
    ];
    for (name, count) in counts {
        sink.counts(name, count(prompt), count(a), count(b));
    }

    let ratios: [(&str, Measure<f64>); 9] = [
        ("ttr", |t| t.diversity.type_token_ratio),
        ("hapax_ratio", |t| t.diversity.hapax_ratio),
        ("mtld", |t| t.diversity.mtld),
        ("uppercase_ratio", |t| {
            ratio(t.classes.uppercase, t.classes.letters)
        }),
        ("non_ascii_ratio", |t| {
            ratio(t.classes.non_ascii, t.classes.chars)
        }),
        ("words_per_sentence", |t| ratio(t.words, t.sentences.max(1))),
        ("chars_per_word", |t| {
            ratio(t.classes.letters + t.classes.digits, t.words)
        }),
        ("repeated_trigram_ratio", |t| {
            t.quality.repeated_trigram_ratio
        }),
        ("repeated_line_ratio", |t| t.quality.repeated_line_ratio),
    ];
    for (name, measure) in ratios {
        sink.ratios(name, measure(prompt), measure(a), measure(b));
    }

    // Relations of each response to the prompt.
    let overlap = |side: &TextAnalysis| {
        let shared = shared_count(&side.word_types, &prompt.word_types);
        (
            ratio(shared, side.word_types.len()),
            ratio(shared, prompt.word_types.len()),
        )
    };
    let (a_overlap, a_coverage) = overlap(a);
    let (b_overlap, b_coverage) = overlap(b);
    sink.sides("prompt_overlap", a_overlap, b_overlap);
    sink.sides("prompt_coverage", a_coverage, b_coverage);
    // Share of the prompt's (sorted, distinct) items that the response has too.
    let covered =
        |response: &[u64], prompt: &[u64]| ratio(shared_count(response, prompt), prompt.len());
    sink.sides(
        "prompt_content_coverage",
        covered(&a.content_types, &prompt.content_types),
        covered(&b.content_types, &prompt.content_types),
    );
    sink.sides(
        "prompt_bigram_coverage",
        covered(&a.bigram_types, &prompt.bigram_types),
        covered(&b.bigram_types, &prompt.bigram_types),
    );
    // The prompt's script, when it has letters: answering in another one is a mismatch.
    // Without letters in the prompt there is nothing to match: both columns stay 0.
    let (a_mismatch, b_mismatch, a_share, b_share) = match prompt.quality.dominant_script() {
        Some(script) => {
            let mismatch =
                |t: &TextAnalysis| t.quality.dominant_script().is_some_and(|s| s != script);
            (
                mismatch(a),
                mismatch(b),
                a.quality.share_in(script),
                b.quality.share_in(script),
            )
        }
        None => (false, false, 0.0, 0.0),
    };
    let flag = |on: bool| f64::from(u8::from(on));
    sink.sides("script_mismatch", flag(a_mismatch), flag(b_mismatch));
    sink.sides("prompt_script_share", a_share, b_share);
    if similarities.word {
        let a_sim = prompt.word_tfidf.dot(&a.word_tfidf);
        let b_sim = prompt.word_tfidf.dot(&b.word_tfidf);
        sink.sides("sim_word_tfidf_prompt", a_sim, b_sim);
    }
    if similarities.char {
        let a_sim = prompt.char_tfidf.dot(&a.char_tfidf);
        let b_sim = prompt.char_tfidf.dot(&b.char_tfidf);
        sink.sides("sim_char_tfidf_prompt", a_sim, b_sim);
    }

    // Relations between the two responses (symmetric).
    sink.symmetric("identical_ab", f64::from(u8::from(identical_responses)));
    let shared = shared_count(&a.word_types, &b.word_types);
    let union = a.word_types.len() + b.word_types.len() - shared;
    sink.symmetric("jaccard_words_ab", ratio(shared, union));
    sink.sides(
        "words_in_other",
        ratio(shared, a.word_types.len()),
        ratio(shared, b.word_types.len()),
    );
    let shared_bigrams = shared_count(&a.bigram_types, &b.bigram_types);
    let union_bigrams = a.bigram_types.len() + b.bigram_types.len() - shared_bigrams;
    sink.symmetric("jaccard_bigrams_ab", ratio(shared_bigrams, union_bigrams));
    if similarities.word {
        sink.symmetric("sim_word_tfidf_ab", a.word_tfidf.dot(&b.word_tfidf));
    }
    if similarities.char {
        sink.symmetric("sim_char_tfidf_ab", a.char_tfidf.dot(&b.char_tfidf));
    }

    // Sentence-embedding cosines, when an encoder gave embeddings.
    if let Some(semantic) = semantic {
        sink.sides("sem_sim_prompt", semantic.prompt_a, semantic.prompt_b);
        sink.symmetric("sem_sim_ab", semantic.a_b);
    }
}

/// Cosines between sentence embeddings of a battle's texts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SemanticSimilarities {
    pub prompt_a: f64,
    pub prompt_b: f64,
    pub a_b: f64,
}
