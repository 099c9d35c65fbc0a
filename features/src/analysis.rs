//! Everything measured on one text (a prompt or a response, all turns joined), and the
//! comparisons between two texts.

use crate::structure::{structure, Structure};
use crate::text_stats::{char_classes, diversity, phrase_counts, sentences, CharClasses};
use crate::text_stats::{Diversity, Words};
use crate::tfidf::{Scratch, SparseVec, Tfidf};

/// Turns are joined with a blank line, so each turn starts a new paragraph.
pub fn join_turns(turns: &[String]) -> String {
    turns.join("\n\n")
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TextAnalysis {
    pub turns: usize,
    pub classes: CharClasses,
    pub words: usize,
    pub sentences: usize,
    pub structure: Structure,
    pub diversity: Diversity,
    pub refusals: usize,
    pub apologies: usize,
    /// Sorted, distinct hashes of the lowercased words.
    pub word_types: Vec<u64>,
    pub word_tfidf: SparseVec,
    pub char_tfidf: SparseVec,
}

pub(crate) fn analyze(turns: &[String], tfidf: &Tfidf, scratch: &mut Scratch) -> TextAnalysis {
    let text = join_turns(turns);
    let lowercase = text.to_lowercase();
    let words = Words::new(&lowercase);
    let (refusals, apologies) = phrase_counts(&lowercase);
    let mut word_types = words.hashes.clone();
    word_types.sort_unstable();
    word_types.dedup();
    let (word_tfidf, char_tfidf) = tfidf.transform(&words, scratch);
    TextAnalysis {
        turns: turns.len(),
        classes: char_classes(&text),
        words: words.words.len(),
        sentences: sentences(&text),
        structure: structure(&text),
        diversity: diversity(&words.hashes),
        refusals,
        apologies,
        word_types,
        word_tfidf,
        char_tfidf,
    }
}

/// Number of values present in both sorted, distinct lists.
pub(crate) fn shared_count(left: &[u64], right: &[u64]) -> usize {
    let (mut i, mut j, mut shared) = (0, 0, 0);
    while i < left.len() && j < right.len() {
        match left[i].cmp(&right[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared
}

/// `numerator / denominator`, or 0 when the denominator is 0.
pub(crate) fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_count_of_sorted_sets() {
        assert_eq!(shared_count(&[1, 3, 5, 7], &[2, 3, 7, 9]), 2);
        assert_eq!(shared_count(&[], &[1]), 0);
    }
}
