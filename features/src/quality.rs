//! How much a text repeats itself, and its writing system.
//!
//! Readability (syllables, Flesch reading ease, long words, sentence-length spread), markdown
//! correctness (unclosed fences, broken numbering, ragged tables), hedging phrases and
//! unfinished endings were tried as well and left out: on prompts never seen in training they
//! did not lower the log loss (BENCHMARKS.md, issue 14).

use rustc_hash::FxHashSet;

use crate::text_stats::hash_str;

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Quality {
    /// 1 − distinct word trigrams / trigrams: how much the text repeats itself.
    pub repeated_trigram_ratio: f64,
    /// Share of non-blank lines that already appeared earlier in the text (trimmed).
    pub repeated_line_ratio: f64,
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

/// Measures `text` (original case) whose lowercased words hash to `word_hashes`.
pub(crate) fn quality(text: &str, word_hashes: &[u64]) -> Quality {
    let mut letters_by_script = [0; Script::COUNT];
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters_by_script[Script::of(c) as usize] += 1;
    }
    Quality {
        repeated_trigram_ratio: repeated_trigram_ratio(word_hashes),
        repeated_line_ratio: repeated_line_ratio(text),
        letters_by_script,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text_stats::Words;
    use approx::assert_relative_eq;

    fn measure(text: &str) -> Quality {
        let lowercase = text.to_lowercase();
        quality(text, &Words::new(&lowercase).hashes)
    }

    #[test]
    fn measures_repetition() {
        // Trigrams: (a b c) (b c a) (c a b) (a b c): one of four repeats.
        assert_relative_eq!(measure("a b c a b c").repeated_trigram_ratio, 0.25);
        assert_relative_eq!(measure("a b").repeated_trigram_ratio, 0.0);
        // Lines "x", "y", "x" (again), "x" (again); blank lines ignored.
        assert_relative_eq!(measure("x\n\ny\n  x\nx").repeated_line_ratio, 0.5);
        assert_eq!(measure(""), Quality::default());
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
