//! A battle as the LLM reads it: the prompt and both answers in a text template
//! (`template`, with `{prompt}`, `{response_a}` and `{response_b}`), tokenized with the model's
//! `tokenizer.json`, whose post-processor adds the special tokens. Fields longer than their
//! share of `max_len` keep their head and tail (the prompt its head alone by default), by the
//! budget both members share (`neural::SegmentBudget`: the prompt's share first, the answers
//! split the rest alike, a short field hands its unused tokens on); the cut tokens are decoded
//! back to text at whole characters, so that the whole text is tokenized once, as the model
//! saw text in training, and a row that still overflows gives up tokens of its longest field,
//! never of the template.
use crate::{Error, Result};
use neural::{ResponsePair, Segment, SegmentBudget};
use std::path::Path;
use tokenizers::Tokenizer;

const FIELDS: [&str; 3] = ["{prompt}", "{response_a}", "{response_b}"];

/// What stands for the cut middle of a field.
const ELISION: &str = " … ";

/// A template split at its three placeholders.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// The literal text before, between and after the fields, and the field (0 prompt,
    /// 1 response_a, 2 response_b) after each piece but the last.
    pieces: Vec<String>,
    order: Vec<usize>,
}

impl Template {
    /// Each placeholder exactly once, in any order; errors name the placeholder.
    pub fn parse(text: &str) -> Result<Template> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        for (field, name) in FIELDS.iter().enumerate() {
            match text.match_indices(name).count() {
                1 => found.push((text.find(name).expect("counted once"), field)),
                n => {
                    return Err(Error::Invalid(format!(
                        "template: {name} appears {n} times; it must appear once (the \
                         placeholders are {{prompt}}, {{response_a}} and {{response_b}})"
                    )))
                }
            }
        }
        found.sort();
        let (mut pieces, mut order, mut at) = (Vec::new(), Vec::new(), 0);
        for (start, field) in found {
            pieces.push(text[at..start].to_owned());
            order.push(field);
            at = start + FIELDS[field].len();
        }
        pieces.push(text[at..].to_owned());
        // A misspelt placeholder (`{response_c}`) would reach the model as literal text.
        if let Some(unknown) = pieces.iter().find_map(|piece| placeholder_in(piece)) {
            return Err(Error::Invalid(format!(
                "template: {unknown} is not a placeholder (the placeholders are {{prompt}}, \
                 {{response_a}} and {{response_b}})"
            )));
        }
        Ok(Template { pieces, order })
    }

    /// The template with the fields put in.
    pub fn fill(&self, fields: [&str; 3]) -> String {
        let mut text = self.pieces[0].clone();
        for (piece, &field) in self.pieces[1..].iter().zip(&self.order) {
            text.push_str(fields[field]);
            text.push_str(piece);
        }
        text
    }
}

/// The first `{name}` in `text` whose name is an identifier: what a placeholder looks like.
fn placeholder_in(text: &str) -> Option<&str> {
    text.match_indices('{').find_map(|(start, _)| {
        let rest = &text[start + 1..];
        let end = rest.find('}')?;
        let name = &rest[..end];
        let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        identifier.then(|| &text[start..start + end + 2])
    })
}

/// Padding side of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Left,
    Right,
}

/// Turns battles into token ids for one model.
pub struct PairEncoder {
    tokenizer: Tokenizer,
    template: Template,
    budget: SegmentBudget,
    pad_id: u32,
    /// Tokens of the template with empty fields, special tokens included.
    overhead: usize,
    elision_tokens: usize,
}

impl PairEncoder {
    /// `tokenizer.json` of `model_dir`, with `pad_id` (the config's pad token, or its EOS
    /// where it has none, as Hugging Face pads such models).
    pub fn new(
        model_dir: &Path,
        template: Template,
        budget: SegmentBudget,
        pad_id: u32,
    ) -> Result<PairEncoder> {
        let path = model_dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: model_dir.to_owned(),
                what: "tokenizer.json".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| Error::BadModelFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut encoder = PairEncoder {
            tokenizer,
            template,
            budget,
            pad_id,
            overhead: 0,
            elision_tokens: 0,
        };
        encoder.overhead = encoder
            .ids(&encoder.template.fill(["", "", ""]), true)?
            .len();
        encoder.elision_tokens = encoder.ids(ELISION, false)?.len();
        Ok(encoder)
    }

    /// Tokens the template, its special tokens, an elision mark per field and a token at each
    /// boundary (where tokens merge differently in the whole text) take of `max_len`.
    pub fn reserve(&self) -> usize {
        self.overhead + 3 * (self.elision_tokens + 1)
    }

    /// The smallest `max_len` at which every field with a share keeps a token of a long
    /// battle; below it every battle would read alike in some field (all of them, when the
    /// template fills `max_len`).
    pub fn least_max_len(&self) -> usize {
        let room = self.budget.least_room(&self.budget.battle_shares());
        self.reserve().saturating_add(room)
    }

    fn ids(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, special_tokens)
            .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn text(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))
    }

    /// The ids of one battle, at most `max_len` of them, special tokens included: as given
    /// and with the answers exchanged. Each field is tokenized and cut once for both orders
    /// (the answers' shares are equal, so a field gets the same count in either place). The
    /// template's own text is never cut: where merges across a cut make a row longer than
    /// `max_len`, the field with the most tokens gives up the excess and is cut again.
    pub fn encode(&self, pair: &ResponsePair, max_len: usize) -> Result<[Vec<u32>; 2]> {
        let fields = [&pair.prompt, &pair.response_a, &pair.response_b];
        let field_ids = fields
            .iter()
            .map(|f| self.ids(f, false))
            .collect::<Result<Vec<_>>>()?;
        let available = max_len.saturating_sub(self.reserve());
        let lengths = [0, 1, 2].map(|field| field_ids[field].len());
        let mut counts = self
            .budget
            .allocate(&lengths, &self.budget.battle_shares(), available);
        let segments = [Segment::Prompt, Segment::Response, Segment::Response];
        let cut = |field: usize, count: usize| -> Result<String> {
            self.cut(fields[field], &field_ids[field], count, segments[field])
        };
        let mut texts = [cut(0, counts[0])?, cut(1, counts[1])?, cut(2, counts[2])?];
        loop {
            // The fields in each order: (prompt, first answer, second answer).
            let rows = [[0, 1, 2], [0, 2, 1]]
                .map(|order| self.ids(&self.template.fill(order.map(|f| texts[f].as_str())), true));
            let [as_given, swapped] = rows;
            let (as_given, swapped) = (as_given?, swapped?);
            let excess = as_given.len().max(swapped.len()).saturating_sub(max_len);
            if excess == 0 {
                return Ok([as_given, swapped]);
            }
            // The longest field (the first of equals, the same in both orders) shrinks.
            let field = (0..3).rev().max_by_key(|&f| counts[f]).unwrap_or(0);
            if counts[field] == 0 {
                return Err(Error::Invalid(format!(
                    "the template alone takes more than max_len {max_len} tokens"
                )));
            }
            counts[field] = counts[field].saturating_sub(excess);
            texts[field] = cut(field, counts[field])?;
        }
    }

    /// A field's text within `count` tokens: whole, or its head and tail around the elision
    /// mark, each ending on a whole character: a cut inside a character's bytes would decode
    /// to U+FFFD, which takes up to three tokens of its own.
    fn cut(&self, text: &str, ids: &[u32], count: usize, segment: Segment) -> Result<String> {
        if ids.len() <= count {
            return Ok(text.to_owned());
        }
        let (mut head, mut tail) = self.budget.head_and_tail(ids, count, segment);
        let mut head_text = self.text(head)?;
        let mut tail_text = self.text(tail)?;
        // A field with U+FFFD of its own (a broken escape) is cut as it comes.
        if !text.contains(char::REPLACEMENT_CHARACTER) {
            while head_text.ends_with(char::REPLACEMENT_CHARACTER) {
                head = &head[..head.len() - 1];
                head_text = self.text(head)?;
            }
            while tail_text.starts_with(char::REPLACEMENT_CHARACTER) {
                tail = &tail[1..];
                tail_text = self.text(tail)?;
            }
        }
        Ok(format!("{head_text}{ELISION}{tail_text}"))
    }

    /// Rows padded with the pad id to the longest, on `side`, and their attention masks. Rows
    /// are taken as held (vectors or slices), so that a batch is copied once, into its padding.
    pub fn pad<R: AsRef<[u32]>>(
        &self,
        rows: &[R],
        side: Padding,
    ) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let len = rows.iter().map(|row| row.as_ref().len()).max().unwrap_or(0);
        rows.iter()
            .map(|row| {
                let row = row.as_ref();
                let fill = len - row.len();
                let (pads, ones) = (vec![self.pad_id; fill], vec![1u32; row.len()]);
                match side {
                    Padding::Right => ([row, &pads].concat(), [ones, vec![0; fill]].concat()),
                    Padding::Left => (
                        [pads.as_slice(), row].concat(),
                        [vec![0; fill], ones].concat(),
                    ),
                }
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_each_placeholder_once_in_any_order() {
        let t = Template::parse("B {response_b} / P {prompt} / A {response_a}!").unwrap();
        assert_eq!(t.fill(["p", "a", "b"]), "B b / P p / A a!");
        let error = Template::parse("{prompt} {response_a}")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("template: {response_b} appears 0 times"),
            "{error}"
        );
        let error = Template::parse("{prompt}{prompt}{response_a}{response_b}")
            .unwrap_err()
            .to_string();
        assert!(error.contains("{prompt} appears 2 times"), "{error}");
    }
}
