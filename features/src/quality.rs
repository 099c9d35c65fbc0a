//! How well a text reads and holds together: readability, repetition, an unfinished ending and
//! its writing system. Markdown correctness (unclosed fences, numbering, ragged tables) is
//! counted with the rest of the markup in [`crate::structure`].

use rustc_hash::FxHashSet;
use unicode_segmentation::UnicodeSegmentation;

use crate::text_stats::{hash_str, Words};

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Quality {
    /// Vowel groups per word (English heuristic; a word without vowels counts one).
    pub syllables_per_word: f64,
    /// Flesch reading ease: 206.835 − 1.015 · words/sentence − 84.6 · syllables/word
    /// (0 for a text without words).
    pub flesch_reading_ease: f64,
    /// Share of words with 7 or more characters.
    pub long_word_ratio: f64,
    /// Standard deviation of the word count of the text's sentences (`unicode_sentences`).
    pub sentence_words_sd: f64,
    /// 1 − distinct word trigrams / trigrams: how much the text repeats itself.
    pub repeated_trigram_ratio: f64,
    /// Share of non-blank lines that already appeared earlier in the text (trimmed).
    pub repeated_line_ratio: f64,
    /// The text's last visible character is a letter or `, ; : - – (`: cut off mid-sentence.
    pub unfinished_ending: bool,
    /// Letters per [`Script`].
    pub letters_by_script: [usize; Script::COUNT],
}

/// Writing systems told apart by Unicode block; enough to see an answer in another language's
/// script than its prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    /// Han, kana and Hangul.
    Cjk,
    Other,
}

impl Script {
    pub const COUNT: usize = 8;
    const ALL: [Script; Script::COUNT] = [
        Script::Latin,
        Script::Cyrillic,
        Script::Greek,
        Script::Arabic,
        Script::Hebrew,
        Script::Devanagari,
        Script::Cjk,
        Script::Other,
    ];

    fn of(letter: char) -> Script {
        match letter as u32 {
            0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => Script::Latin,
            0x400..=0x52F => Script::Cyrillic,
            0x370..=0x3FF => Script::Greek,
            0x600..=0x6FF | 0x750..=0x77F => Script::Arabic,
            0x590..=0x5FF => Script::Hebrew,
            0x900..=0x97F => Script::Devanagari,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF => Script::Cjk,
            _ => Script::Other,
        }
    }
}

impl Quality {
    /// The script with the most letters (the first on a tie); `None` without letters.
    pub fn dominant_script(&self) -> Option<Script> {
        let (index, &most) = self
            .letters_by_script
            .iter()
            .enumerate()
            .rev()
            .max_by_key(|&(_, count)| count)?;
        (most > 0).then_some(Script::ALL[index])
    }

    /// Share of this text's letters written in `script` (0 without letters).
    pub fn share_in(&self, script: Script) -> f64 {
        let letters: usize = self.letters_by_script.iter().sum();
        crate::analysis::ratio(self.letters_by_script[script as usize], letters)
    }
}

/// Measures `text` (original case); `words` are its lowercased words.
pub(crate) fn quality(text: &str, words: &Words<'_>) -> Quality {
    let n_words = words.words.len();
    let syllables: usize = words.words.iter().map(|w| syllables(w)).sum();
    let long_words = words
        .words
        .iter()
        .filter(|w| w.chars().count() >= 7)
        .count();
    let sentence_words: Vec<usize> = text
        .unicode_sentences()
        .map(|s| s.unicode_words().count())
        .filter(|&n| n > 0)
        .collect();
    let mut letters_by_script = [0; Script::COUNT];
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters_by_script[Script::of(c) as usize] += 1;
    }
    let (syllables_per_word, flesch_reading_ease) = if n_words == 0 {
        (0.0, 0.0)
    } else {
        let per_word = syllables as f64 / n_words as f64;
        let per_sentence = n_words as f64 / sentence_words.len().max(1) as f64;
        (per_word, 206.835 - 1.015 * per_sentence - 84.6 * per_word)
    };
    Quality {
        syllables_per_word,
        flesch_reading_ease,
        long_word_ratio: crate::analysis::ratio(long_words, n_words),
        sentence_words_sd: standard_deviation(&sentence_words),
        repeated_trigram_ratio: repeated_trigram_ratio(&words.hashes),
        repeated_line_ratio: repeated_line_ratio(text),
        unfinished_ending: unfinished_ending(text),
        letters_by_script,
    }
}

/// Vowel groups (`aeiouy`) of a lowercased word, less a silent final `e`; at least 1.
fn syllables(word: &str) -> usize {
    let mut groups = 0;
    let mut previous_vowel = false;
    for c in word.chars() {
        let vowel = matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
        groups += usize::from(vowel && !previous_vowel);
        previous_vowel = vowel;
    }
    let silent_e = word.ends_with('e') && !word.ends_with("le") && groups > 1;
    (groups - usize::from(silent_e)).max(1)
}

/// Population standard deviation (0 for fewer than two values).
fn standard_deviation(values: &[usize]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<usize>() as f64 / n;
    let variance = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    variance.sqrt()
}

fn repeated_trigram_ratio(word_hashes: &[u64]) -> f64 {
    let mut trigrams: Vec<u64> = word_hashes
        .windows(3)
        .map(|w| {
            w[0].rotate_left(21) ^ w[1].rotate_left(42) ^ w[2].wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .collect();
    let total = trigrams.len();
    trigrams.sort_unstable();
    trigrams.dedup();
    crate::analysis::ratio(total - trigrams.len(), total)
}

fn repeated_line_ratio(text: &str) -> f64 {
    let mut seen = FxHashSet::default();
    let (mut lines, mut repeated) = (0, 0);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        lines += 1;
        repeated += usize::from(!seen.insert(hash_str(line)));
    }
    crate::analysis::ratio(repeated, lines)
}

fn unfinished_ending(text: &str) -> bool {
    text.trim_end()
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphabetic() || matches!(c, ',' | ';' | ':' | '-' | '–' | '('))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn measure(text: &str) -> Quality {
        let lowercase = text.to_lowercase();
        quality(text, &Words::new(&lowercase))
    }

    #[test]
    fn counts_syllables() {
        let cases = [
            ("cat", 1),
            ("table", 2),
            ("make", 1),
            ("reading", 2),
            ("rhythm", 1),
            ("queue", 1),
            ("beautiful", 3),
            ("42", 1),
        ];
        for (word, expected) in cases {
            assert_eq!(syllables(word), expected, "{word}");
        }
    }

    #[test]
    fn readability_of_a_small_text() {
        // Words: the(1) cat(1) sat(1) | it(1) was(1) comfortable(4: o,o,a,e -> "le" keeps e)
        let q = measure("The cat sat. It was comfortable.");
        assert_relative_eq!(q.syllables_per_word, 9.0 / 6.0);
        let flesch = 206.835 - 1.015 * 3.0 - 84.6 * 1.5;
        assert_relative_eq!(q.flesch_reading_ease, flesch, epsilon = 1e-12);
        assert_relative_eq!(q.long_word_ratio, 1.0 / 6.0);
        assert_relative_eq!(q.sentence_words_sd, 0.0);
        // Sentences of 1 and 3 words: mean 2, population sd 1.
        assert_relative_eq!(measure("Yes. I agree fully.").sentence_words_sd, 1.0);
        assert_eq!(measure(""), Quality::default());
    }

    #[test]
    fn measures_repetition() {
        // Trigrams: (a b c) (b c a) (c a b) (a b c): one of four repeats.
        assert_relative_eq!(measure("a b c a b c").repeated_trigram_ratio, 0.25);
        assert_relative_eq!(measure("a b").repeated_trigram_ratio, 0.0);
        // Lines "x", "y", "x" (again), "x" (again); blank lines ignored.
        assert_relative_eq!(measure("x\n\ny\n  x\nx").repeated_line_ratio, 0.5);
    }

    #[test]
    fn tells_unfinished_endings() {
        for text in ["It ends here", "First,", "Steps:", "a (", "文字"] {
            assert!(measure(text).unfinished_ending, "{text:?}");
        }
        for text in [
            "Done.",
            "Really?",
            "```\ncode\n```",
            "x = 42",
            "(see above)  \n",
            "",
        ] {
            assert!(!measure(text).unfinished_ending, "{text:?}");
        }
    }

    #[test]
    fn finds_the_dominant_script() {
        let q = measure("Привет, world!");
        assert_eq!(q.dominant_script(), Some(Script::Cyrillic));
        assert_relative_eq!(q.share_in(Script::Latin), 5.0 / 11.0);
        assert_eq!(measure("你好吗 ok").dominant_script(), Some(Script::Cjk));
        // A tie goes to the first script in the list.
        assert_eq!(measure("ab αβ").dominant_script(), Some(Script::Latin));
        assert_eq!(measure("123 !").dominant_script(), None);
        assert_relative_eq!(measure("123").share_in(Script::Latin), 0.0);
    }
}
