//! Line-based layout and markdown structure of one text.

use memchr::memmem;

/// Counts from one pass over the lines of a text. Lines inside ``` fences count as code and are
/// not inspected for headers, bullets, numbered items or tables (a `# comment` is not a header).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Structure {
    /// Lines containing something other than whitespace.
    pub lines: usize,
    /// Runs of non-blank lines separated by blank lines.
    pub paragraphs: usize,
    /// `#`–`######` followed by a space.
    pub headers: usize,
    /// Lines starting with `- `, `* `, `+ ` or `• `.
    pub bullets: usize,
    /// Lines starting with 1–3 digits, then `.` or `)`, then a space.
    pub numbered: usize,
    /// Opening ``` fences (an unclosed final fence still counts).
    pub code_blocks: usize,
    /// Lines between fences.
    pub code_lines: usize,
    /// Lines starting and ending with `|`.
    pub table_rows: usize,
    /// `**bold**` spans (pairs of `**`).
    pub bold: usize,
    /// `http://` / `https://` URLs plus markdown links `](` not followed by a URL.
    pub links: usize,
}

pub(crate) fn structure(text: &str) -> Structure {
    let mut counts = Structure::default();
    let mut in_code = false;
    let mut previous_blank = true;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            if !in_code {
                counts.code_blocks += 1;
            }
            in_code = !in_code;
        } else if in_code {
            counts.code_lines += 1;
        } else {
            count_block_markup(trimmed, &mut counts);
        }
        let blank = trimmed.is_empty();
        if !blank {
            counts.lines += 1;
            if previous_blank {
                counts.paragraphs += 1;
            }
        }
        previous_blank = blank;
    }
    let bytes = text.as_bytes();
    counts.bold = memmem::find_iter(bytes, b"**").count() / 2;
    let urls = memmem::find_iter(bytes, b"http://").count()
        + memmem::find_iter(bytes, b"https://").count();
    let markdown_links_without_url = memmem::find_iter(bytes, b"](")
        .filter(|&at| !bytes[at + 2..].starts_with(b"http"))
        .count();
    counts.links = urls + markdown_links_without_url;
    counts
}

fn count_block_markup(trimmed: &str, counts: &mut Structure) {
    let bytes = trimmed.as_bytes();
    let hashes = bytes.iter().take_while(|&&b| b == b'#').count();
    if (1..=6).contains(&hashes) && bytes.get(hashes) == Some(&b' ') {
        counts.headers += 1;
    } else if ["- ", "* ", "+ ", "• "]
        .iter()
        .any(|m| trimmed.starts_with(m))
    {
        counts.bullets += 1;
    } else if is_numbered_item(bytes) {
        counts.numbered += 1;
    } else if bytes.len() >= 2 && bytes[0] == b'|' && trimmed.trim_end().ends_with('|') {
        counts.table_rows += 1;
    }
}

fn is_numbered_item(bytes: &[u8]) -> bool {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=3).contains(&digits)
        && matches!(bytes.get(digits), Some(b'.' | b')'))
        && bytes.get(digits + 1) == Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_markdown_elements() {
        let text = "# Title\n\nIntro with **bold** and **more**.\n\n## Steps\n\
                    1. first\n2) second\n10. tenth\n- bullet\n* star\n  + nested\n• dot\n\
                    \n| a | b |\n|---|---|\n| 1 | 2 |\n\n\
                    See https://example.com and [docs](https://docs.rs) or [x](#anchor).\n\
                    ```rust\n# not a header\nfn main() {}\n```\n2024. not numbered\n#nospace";
        let s = structure(text);
        assert_eq!(s.headers, 2);
        assert_eq!(s.numbered, 3);
        assert_eq!(s.bullets, 4);
        assert_eq!(s.table_rows, 3);
        assert_eq!(s.bold, 2);
        assert_eq!(s.links, 3);
        assert_eq!(s.code_blocks, 1);
        assert_eq!(s.code_lines, 2);
        // Non-blank lines: every line but the 4 blank ones.
        assert_eq!(s.lines, text.lines().count() - 4);
        assert_eq!(s.paragraphs, 5);
    }

    #[test]
    fn unclosed_fence_and_empty_text() {
        let s = structure("text\n```\ncode\n");
        assert_eq!(
            (s.code_blocks, s.code_lines, s.lines, s.paragraphs),
            (1, 1, 3, 1)
        );
        assert_eq!(structure(""), Structure::default());
        assert_eq!(structure("\n\n  \n").paragraphs, 0);
    }
}
