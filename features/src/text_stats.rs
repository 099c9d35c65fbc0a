//! Per-text statistics: lengths, lexical diversity, character classes and stock phrases.

use std::hash::Hasher;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::{FxHashSet, FxHasher};
use unicode_segmentation::UnicodeSegmentation;

/// 64-bit hash of a string; used for word types and n-grams instead of allocating Strings.
pub(crate) fn hash_str(text: &str) -> u64 {
    hash_bytes(text.as_bytes())
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// The words (`unicode_words`) of a lowercased text, with their hashes.
pub(crate) struct Words<'a> {
    pub text: &'a str,
    pub words: Vec<&'a str>,
    pub hashes: Vec<u64>,
}

impl<'a> Words<'a> {
    pub fn new(lowercase_text: &'a str) -> Words<'a> {
        let words: Vec<&str> = lowercase_text.unicode_words().collect();
        let hashes = words.iter().map(|word| hash_str(word)).collect();
        Words {
            text: lowercase_text,
            words,
            hashes,
        }
    }
}

/// Type-token ratio, hapax ratio and MTLD of a token sequence (tokens given as hashes).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Diversity {
    pub types: usize,
    /// types / tokens (0 for no tokens).
    pub type_token_ratio: f64,
    /// Types occurring exactly once, over types (0 for no tokens).
    pub hapax_ratio: f64,
    /// Measure of textual lexical diversity (McCarthy & Jarvis 2010), see [`mtld`].
    pub mtld: f64,
}

pub(crate) fn diversity(tokens: &[u64]) -> Diversity {
    if tokens.is_empty() {
        return Diversity::default();
    }
    let mut sorted = tokens.to_vec();
    sorted.sort_unstable();
    let mut types = 0;
    let mut hapaxes = 0;
    for run in sorted.chunk_by(|a, b| a == b) {
        types += 1;
        hapaxes += usize::from(run.len() == 1);
    }
    Diversity {
        types,
        type_token_ratio: types as f64 / tokens.len() as f64,
        hapax_ratio: hapaxes as f64 / types as f64,
        mtld: mtld(tokens),
    }
}

/// MTLD threshold from the original paper.
const MTLD_TTR_THRESHOLD: f64 = 0.72;

/// MTLD: the mean length of token runs that keep the running type-token ratio above 0.72,
/// averaged over a forward and a backward pass (as in the `lexicalrichness` package). A text
/// that never drops below the threshold has no complete factor and gets its token count.
pub(crate) fn mtld(tokens: &[u64]) -> f64 {
    let forward = mtld_one_pass(tokens.iter().copied(), tokens.len());
    let backward = mtld_one_pass(tokens.iter().rev().copied(), tokens.len());
    (forward + backward) / 2.0
}

fn mtld_one_pass(tokens: impl Iterator<Item = u64>, n_tokens: usize) -> f64 {
    let mut factors = 0.0;
    let mut types: FxHashSet<u64> = FxHashSet::default();
    let mut run_tokens = 0usize;
    let mut ttr = 1.0;
    for token in tokens {
        run_tokens += 1;
        types.insert(token);
        ttr = types.len() as f64 / run_tokens as f64;
        if ttr <= MTLD_TTR_THRESHOLD {
            factors += 1.0;
            types.clear();
            run_tokens = 0;
            ttr = 1.0;
        }
    }
    factors += (1.0 - ttr) / (1.0 - MTLD_TTR_THRESHOLD);
    if factors > 0.0 {
        n_tokens as f64 / factors
    } else {
        n_tokens as f64
    }
}

/// Counts of character classes of the original (not lowercased) text.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CharClasses {
    pub chars: usize,
    pub letters: usize,
    pub uppercase: usize,
    pub digits: usize,
    /// Unicode punctuation-like characters (ASCII punctuation plus other non-alphanumeric,
    /// non-whitespace characters such as `…`, `—`, emoji).
    pub punctuation: usize,
    pub questions: usize,
    pub exclamations: usize,
    pub non_ascii: usize,
}

pub(crate) fn char_classes(text: &str) -> CharClasses {
    let mut counts = CharClasses::default();
    for c in text.chars() {
        counts.chars += 1;
        if c.is_alphabetic() {
            counts.letters += 1;
            if c.is_uppercase() {
                counts.uppercase += 1;
            }
        } else if c.is_numeric() {
            counts.digits += 1;
        } else if !c.is_whitespace() {
            counts.punctuation += 1;
            match c {
                '?' => counts.questions += 1,
                '!' => counts.exclamations += 1,
                _ => {}
            }
        }
        if !c.is_ascii() {
            counts.non_ascii += 1;
        }
    }
    counts
}

/// Sentences: runs of `.`, `!`, `?`, `…` (and CJK full stops) that end the text or are followed
/// by whitespace, plus one for trailing text after the last such run (`3.14` does not split).
/// Only runs preceded by letters count, so list markers like `1.` are not sentences.
pub(crate) fn sentences(text: &str) -> usize {
    let is_terminator = |c: char| matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？');
    let mut count = 0;
    let mut pending_text = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_terminator(c) {
            while chars.peek().is_some_and(|&next| is_terminator(next)) {
                chars.next();
            }
            // CJK text has no spaces after its full stops.
            let ends_sentence = matches!(c, '。' | '！' | '？')
                || chars.peek().is_none_or(|next| next.is_whitespace());
            if ends_sentence && pending_text {
                count += 1;
                pending_text = false;
            }
        } else if c.is_alphabetic() {
            pending_text = true;
        }
    }
    count + usize::from(pending_text)
}

/// Which list a stock phrase belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PhraseKind {
    Refusal,
    Apology,
}

const REFUSAL_PHRASES: &[&str] = &[
    "as an ai",
    "as a language model",
    "as an assistant",
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "i won't be able",
    "i will not",
    "i must decline",
    "cannot assist",
    "can't assist",
    "cannot help with",
    "can't help with",
    "cannot provide",
    "can't provide",
    "cannot fulfill",
    "can't fulfill",
    "not appropriate",
    "against my programming",
    "i don't have personal",
    "i do not have personal",
];

const APOLOGY_PHRASES: &[&str] = &[
    "sorry",
    "i apologize",
    "apologies",
    "my mistake",
    "my apologies",
    "i was wrong",
];

/// Counts of stock phrases in one text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PhraseCounts {
    pub refusals: usize,
    pub apologies: usize,
}

/// One automaton over both lists, also matching typographic apostrophes (`’`).
static PHRASES: LazyLock<(AhoCorasick, Vec<PhraseKind>)> = LazyLock::new(|| {
    let mut patterns = Vec::new();
    let mut kinds = Vec::new();
    for (list, kind) in [
        (REFUSAL_PHRASES, PhraseKind::Refusal),
        (APOLOGY_PHRASES, PhraseKind::Apology),
    ] {
        for phrase in list {
            patterns.push(phrase.to_string());
            kinds.push(kind);
            if phrase.contains('\'') {
                patterns.push(phrase.replace('\'', "’"));
                kinds.push(kind);
            }
        }
    }
    let automaton = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .expect("phrase patterns are valid");
    (automaton, kinds)
});

/// Non-overlapping stock-phrase counts in a lowercased text.
pub(crate) fn phrase_counts(lowercase_text: &str) -> PhraseCounts {
    let (automaton, kinds) = &*PHRASES;
    let mut counts = PhraseCounts::default();
    for found in automaton.find_iter(lowercase_text) {
        match kinds[found.pattern().as_usize()] {
            PhraseKind::Refusal => counts.refusals += 1,
            PhraseKind::Apology => counts.apologies += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn hashes(text: &str) -> Vec<u64> {
        Words::new(text).hashes
    }

    #[test]
    fn type_token_and_hapax_ratios() {
        let d = diversity(&hashes("the cat and the dog and the bird"));
        // 8 tokens, 5 types (the, cat, and, dog, bird), 3 hapaxes (cat, dog, bird).
        assert_eq!(d.types, 5);
        assert_relative_eq!(d.type_token_ratio, 5.0 / 8.0);
        assert_relative_eq!(d.hapax_ratio, 3.0 / 5.0);
        assert_eq!(diversity(&[]), Diversity::default());
    }

    #[test]
    fn mtld_known_examples() {
        // "a a a a": TTR hits 0.5 at tokens 2 and 4 -> 2 full factors, no remainder -> 4/2.
        assert_relative_eq!(mtld(&hashes("a a a a")), 2.0);
        // "the cat sat on the mat": running TTR ends at 5/6 in both directions, never below 0.72,
        // so factors = (1 - 5/6) / 0.28 and MTLD = 6 / factors = 10.08.
        assert_relative_eq!(
            mtld(&hashes("the cat sat on the mat")),
            6.0 / ((1.0 - 5.0 / 6.0) / 0.28),
            epsilon = 1e-12
        );
        assert_relative_eq!(
            mtld(&hashes("the cat sat on the mat")),
            10.08,
            epsilon = 1e-9
        );
        // No repeats at all: no factor, MTLD is the token count.
        assert_relative_eq!(mtld(&hashes("one two three")), 3.0);
        assert_relative_eq!(mtld(&[]), 0.0);
    }

    #[test]
    fn mtld_is_direction_averaged() {
        // Forward: "a b a" -> 2/3 <= 0.72 at token 3 -> 1 factor, then "c" leaves TTR 1 -> 4/1.
        // Backward "c a b a": TTR 1,1,1,3/4=0.75 -> remainder (0.25/0.28) -> 4/(0.25/0.28).
        let expected = (4.0 + 4.0 / (0.25 / 0.28)) / 2.0;
        assert_relative_eq!(mtld(&hashes("a b a c")), expected, epsilon = 1e-12);
    }

    #[test]
    fn counts_sentences() {
        assert_eq!(sentences("Hello world. How are you? Fine"), 3);
        assert_eq!(sentences("Version 3.14 is out."), 1);
        assert_eq!(sentences("Wow!!! Really?! Yes..."), 3);
        assert_eq!(sentences("no terminator at all"), 1);
        assert_eq!(sentences("... !"), 0);
        assert_eq!(sentences(""), 0);
        assert_eq!(sentences("一。二。"), 2);
        assert_eq!(sentences("1. Boil water.\n2. Add the egg."), 2);
    }

    #[test]
    fn counts_char_classes() {
        let c = char_classes("Hi THERE, 42 times?! é…");
        assert_eq!(c.chars, 23);
        assert_eq!(c.letters, 13);
        assert_eq!(c.uppercase, 6);
        assert_eq!(c.digits, 2);
        assert_eq!(c.punctuation, 4);
        assert_eq!((c.questions, c.exclamations, c.non_ascii), (1, 1, 2));
    }

    #[test]
    fn counts_refusal_and_apology_phrases() {
        let text = "i'm sorry, but as an ai i can’t assist with that. i cannot. my apologies.";
        // Refusals: "as an ai", "i can’t" (leftmost match, so "can’t assist" is not counted
        // again), "i cannot". Apologies: "sorry", "my apologies" (longest, not "apologies").
        let counts = |refusals, apologies| PhraseCounts {
            refusals,
            apologies,
        };
        assert_eq!(phrase_counts(text), counts(3, 2));
        assert_eq!(phrase_counts("a perfectly normal answer"), counts(0, 0));
    }
}
