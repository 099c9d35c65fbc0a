//! Everything measured on one text (a prompt or a response, all turns joined), and the
//! comparisons between two texts.

use std::sync::LazyLock;

use rustc_hash::FxHashSet;

use crate::quality::{quality, Quality};
use crate::structure::{structure, Structure};
use crate::text_stats::{char_classes, diversity, hash_str, phrase_counts, sentences};
use crate::text_stats::{CharClasses, Diversity, PhraseCounts, Words};
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
    pub phrases: PhraseCounts,
    pub quality: Quality,
    /// Sorted, distinct hashes of the lowercased words.
    pub word_types: Vec<u64>,
    /// The same for the words that are not [`STOP_WORDS`].
    pub content_types: Vec<u64>,
    /// Sorted, distinct hashes of consecutive word pairs.
    pub bigram_types: Vec<u64>,
    pub word_tfidf: SparseVec,
    pub char_tfidf: SparseVec,
}

pub(crate) fn analyze(turns: &[String], tfidf: &Tfidf, scratch: &mut Scratch) -> TextAnalysis {
    let text = join_turns(turns);
    let lowercase = text.to_lowercase();
    let words = Words::new(&lowercase);
    let word_types = sorted_distinct(words.hashes.clone());
    let content_types = word_types
        .iter()
        .copied()
        .filter(|hash| !STOP_WORDS.contains(hash))
        .collect();
    let bigrams = words.hashes.windows(2);
    let bigram_types = sorted_distinct(bigrams.map(|w| w[0].rotate_left(32) ^ w[1]).collect());
    let (word_tfidf, char_tfidf) = tfidf.transform(&words, scratch);
    TextAnalysis {
        turns: turns.len(),
        classes: char_classes(&text),
        words: words.words.len(),
        sentences: sentences(&text),
        structure: structure(&text),
        diversity: diversity(&words.hashes),
        phrases: phrase_counts(&lowercase),
        quality: quality(&text, &words.hashes),
        word_types,
        content_types,
        bigram_types,
        word_tfidf,
        char_tfidf,
    }
}

fn sorted_distinct(mut hashes: Vec<u64>) -> Vec<u64> {
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// English function words, left out of "does the answer use the prompt's words" measures.
static STOP_WORDS: LazyLock<FxHashSet<u64>> = LazyLock::new(|| {
    [
        "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be",
        "because", "been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had",
        "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "me",
        "more", "most", "my", "no", "not", "of", "on", "one", "or", "other", "our", "out", "she",
        "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there",
        "these", "they", "this", "to", "up", "us", "was", "we", "were", "what", "when", "where",
        "which", "who", "why", "will", "with", "would", "you", "your",
    ]
    .into_iter()
    .map(hash_str)
    .collect()
});

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
