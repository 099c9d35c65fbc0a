//! The DeBERTa-v3 tokenizer, loaded from `tokenizer.json` or built from `spm.model` the way
//! Hugging Face's `DebertaV2Converter` does, and the layout of a battle into token ids with a
//! token budget per segment.
use std::borrow::Cow;
use std::path::Path;

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{
    replace::ReplacePattern, Lowercase, NormalizerWrapper, Precompiled, Replace,
    Sequence as Normalizers, Strip,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::sentencepiece::SentencePieceModel;
use crate::{Error, Result};
use neural::{Segment, SegmentBudget};

const CLS: &str = "[CLS]";
const SEP: &str = "[SEP]";
const PAD: &str = "[PAD]";
const UNK: &str = "[UNK]";
const MASK: &str = "[MASK]";

/// Loads the tokenizer of a model folder: `tokenizer.json` when present, else one built from
/// `spm.model` (the stock microsoft/deberta-v3-* folders ship only the latter).
pub fn load_tokenizer(model_dir: &Path) -> Result<Tokenizer> {
    let json = model_dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json)
            .map_err(|e| Error::bad_model_file(&json, format!("cannot load tokenizer: {e}")));
    }
    let spm = model_dir.join("spm.model");
    if spm.is_file() {
        let bytes = std::fs::read(&spm).map_err(Error::io(&spm))?;
        let options = SlowTokenizerOptions::read(model_dir)?;
        return tokenizer_from_sentencepiece(&bytes, &options)
            .map_err(|message| Error::bad_model_file(&spm, message));
    }
    Err(Error::MissingFile {
        path: model_dir.to_path_buf(),
        what: "a tokenizer: neither tokenizer.json nor spm.model".into(),
    })
}

/// The slow tokenizer's settings that change the fast one (from `tokenizer_config.json`).
#[derive(Debug, Default, serde::Deserialize)]
struct SlowTokenizerOptions {
    #[serde(default)]
    do_lower_case: bool,
    #[serde(default)]
    split_by_punct: bool,
}

impl SlowTokenizerOptions {
    fn read(model_dir: &Path) -> Result<SlowTokenizerOptions> {
        let path = model_dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(SlowTokenizerOptions::default());
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        serde_json::from_str(&text).map_err(|e| Error::bad_model_file(&path, e.to_string()))
    }
}

/// Mirrors `transformers.convert_slow_tokenizer.DebertaV2Converter`: a Unigram model over the
/// sentencepiece vocabulary; normalizers [Lowercase], Strip, Precompiled, Replace(" {2,}", " ");
/// pre-tokenizers [Punctuation], Metaspace("▁", always); `[CLS] $A [SEP] $B [SEP]` template.
fn tokenizer_from_sentencepiece(
    bytes: &[u8],
    options: &SlowTokenizerOptions,
) -> std::result::Result<Tokenizer, String> {
    let spm = SentencePieceModel::parse(bytes)?;
    if spm.model_type != 1 {
        return Err(format!(
            "sentencepiece model type {} is not unigram (1)",
            spm.model_type
        ));
    }
    let vocab: Vec<(String, f64)> = spm
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .collect();
    let unigram = Unigram::from(vocab, Some(spm.unk_id), spm.byte_fallback)
        .map_err(|e| format!("cannot build the unigram model: {e}"))?;
    let mut tokenizer = Tokenizer::new(unigram);

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if options.do_lower_case {
        normalizers.push(Lowercase.into());
    }
    normalizers.push(Strip::new(true, true).into());
    if !spm.precompiled_charsmap.is_empty() {
        let precompiled = Precompiled::from(&spm.precompiled_charsmap)
            .map_err(|e| format!("bad precompiled_charsmap: {e}"))?;
        normalizers.push(precompiled.into());
    }
    let spaces = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")
        .map_err(|e| format!("whitespace normalizer: {e}"))?;
    normalizers.push(spaces.into());
    tokenizer
        .with_normalizer(Some(Normalizers::new(normalizers)))
        .map_err(|e| format!("normalizer: {e}"))?;

    let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
    if options.split_by_punct {
        pre_tokenizers.push(Punctuation::new(tokenizers::SplitDelimiterBehavior::Isolated).into());
    }
    pre_tokenizers.push(Metaspace::new('▁', PrependScheme::Always, true).into());
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(pre_tokenizers)));

    let id_of = |token: &str| {
        spm.pieces
            .iter()
            .position(|p| p.piece == token)
            .map(|id| id as u32)
            .ok_or_else(|| format!("the vocabulary has no {token} piece"))
    };
    let template = TemplateProcessing::builder()
        .try_single(format!("{CLS}:0 $A:0 {SEP}:0"))
        .and_then(|b| b.try_pair(format!("{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1")))
        .map_err(|e| format!("template: {e}"))?
        .special_tokens(vec![(CLS, id_of(CLS)?), (SEP, id_of(SEP)?)])
        .build()
        .map_err(|e| format!("template: {e}"))?;
    tokenizer.with_post_processor(Some(template));
    tokenizer.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));

    // As DebertaV2TokenizerFast registers them (only [UNK] matches normalized text); [MASK] is
    // not a sentencepiece piece in v3 and so takes the next id.
    let specials: Vec<AddedToken> = [PAD, CLS, SEP, UNK, MASK]
        .into_iter()
        .map(|t| AddedToken::from(t, true).normalized(t == UNK))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| format!("special tokens: {e}"))?;
    Ok(tokenizer)
}

/// `text` without its middle when it is longer than twice `keep_chars`: the first and the
/// last `keep_chars` characters or fewer, each cut back to a whitespace so that no word is
/// split, joined by a space.
fn cut_middle(text: &str, keep_chars: usize) -> Cow<'_, str> {
    if text.len() <= keep_chars.saturating_mul(2) {
        return Cow::Borrowed(text);
    }
    let head_end = text
        .char_indices()
        .nth(keep_chars)
        .map_or(text.len(), |(i, _)| i);
    let head_end = text[..head_end]
        .rfind(char::is_whitespace)
        .unwrap_or(head_end);
    let tail_start = text
        .char_indices()
        .rev()
        .nth(keep_chars.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    let tail_start = text[tail_start..]
        .find(char::is_whitespace)
        .map_or(tail_start, |i| tail_start + i);
    if head_end >= tail_start {
        return Cow::Borrowed(text);
    }
    Cow::Owned(format!("{} {}", &text[..head_end], &text[tail_start..]))
}

/// Turns texts into model inputs with the tokenizer's special tokens.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The longest vocabulary entry, in characters: a token never covers more text.
    max_token_chars: usize,
    cls: u32,
    sep: u32,
    pub pad: u32,
    budget: SegmentBudget,
}

impl TextEncoder {
    pub fn new(tokenizer: Tokenizer, budget: SegmentBudget) -> Result<TextEncoder> {
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {token} token")))
        };
        let max_token_chars = tokenizer
            .get_vocab(true)
            .keys()
            .map(|token| token.chars().count())
            .max()
            .unwrap_or(1);
        Ok(TextEncoder {
            max_token_chars,
            cls: id(CLS)?,
            sep: id(SEP)?,
            pad: id(PAD)?,
            tokenizer,
            budget,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of each text without special tokens, as far as sequences of `max_len`
    /// tokens can use them: a segment keeps at most `max_len` tokens from its head and tail,
    /// so a longer text is tokenized from its first and last `max_len` tokens' worth of
    /// characters only (cut between words; a 5 MB answer otherwise costs seconds and a
    /// gigabyte). The kept tokens are those of the whole text, since words are tokenized
    /// one by one.
    pub fn token_ids(&self, texts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>> {
        // One space before each token at most, hence the +1.
        let keep_chars = max_len.saturating_mul(self.max_token_chars + 1);
        let texts: Vec<Cow<str>> = texts.iter().map(|t| cut_middle(t, keep_chars)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(texts, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// `[CLS] prompt [SEP] first [SEP] second [SEP]`, each segment within its budget.
    pub fn cross(&self, prompt: &[u32], first: &[u32], second: &[u32], max_len: usize) -> Vec<u32> {
        let counts = self.budget.allocate(
            &[prompt.len(), first.len(), second.len()],
            &self.budget.battle_shares(),
            max_len.saturating_sub(4),
        );
        let mut ids = Vec::with_capacity(max_len);
        ids.push(self.cls);
        let segments = [Segment::Prompt, Segment::Response, Segment::Response];
        for ((ids_of, &count), segment) in [prompt, first, second]
            .into_iter()
            .zip(&counts)
            .zip(segments)
        {
            ids.extend(self.budget.truncate(ids_of, count, segment));
            ids.push(self.sep);
        }
        ids
    }

    /// `[CLS] prompt [SEP] response [SEP]` for the siamese layout.
    pub fn single(&self, prompt: &[u32], response: &[u32], max_len: usize) -> Vec<u32> {
        let counts = self.budget.allocate(
            &[prompt.len(), response.len()],
            &self.budget.pair_shares(),
            max_len.saturating_sub(3),
        );
        let mut ids = Vec::with_capacity(max_len);
        ids.push(self.cls);
        let segments = [Segment::Prompt, Segment::Response];
        for ((ids_of, &count), segment) in [prompt, response].into_iter().zip(&counts).zip(segments)
        {
            ids.extend(self.budget.truncate(ids_of, count, segment));
            ids.push(self.sep);
        }
        ids
    }
}
