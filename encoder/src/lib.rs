//! Sentence embeddings from a BERT-family encoder folder as sentence-transformers saves it
//! (all-MiniLM-L6-v2, bge-small, e5-small …): `config.json`, `model.safetensors` or
//! `pytorch_model.bin`, `tokenizer.json`, and optionally `1_Pooling/config.json`. The model is
//! candle-transformers' BERT; texts are cut to a token budget (head kept), batched by length,
//! pooled as the folder says (mean over the attention mask by default) and L2-normalised.
//!
//! [`embed_cached`] embeds each distinct text once and keeps the results in an on-disk cache
//! keyed by the encoder's fingerprint and the text's hash, so a second run embeds nothing.
#![warn(clippy::undocumented_unsafe_blocks)]

mod cache;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub use cache::{embed_cached, EmbedStats, Embeddings};

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn bad_file(path: &Path, message: impl ToString) -> Error {
    Error::BadFile {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    if !path.is_file() {
        return Err(Error::MissingFile {
            path: path.to_owned(),
            what: what.to_owned(),
        });
    }
    std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })
}

/// How token vectors become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the tokens the attention mask keeps.
    Mean,
    /// The first ([CLS]) token.
    Cls,
    /// The element-wise maximum over the kept tokens.
    Max,
}

impl Pooling {
    /// Reads `1_Pooling/config.json`; a folder without one is mean-pooled.
    fn read(dir: &Path) -> Result<Pooling> {
        let path = dir.join("1_Pooling").join("config.json");
        if !path.is_file() {
            return Ok(Pooling::Mean);
        }
        let json: serde_json::Value = serde_json::from_slice(&read(&path, "the pooling config")?)
            .map_err(|e| bad_file(&path, e))?;
        let on = |key: &str| json.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        let modes: Vec<(&str, Pooling)> = [
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_max_tokens", Pooling::Max),
        ]
        .into_iter()
        .filter(|(key, _)| on(key))
        .collect();
        let unsupported = [
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ];
        if let Some(key) = unsupported.iter().find(|key| on(key)) {
            return Err(bad_file(
                &path,
                format!("{key} is not supported (mean, cls or max)"),
            ));
        }
        match modes.as_slice() {
            [(_, pooling)] => Ok(*pooling),
            [] => Err(bad_file(&path, "no pooling mode is on")),
            _ => Err(bad_file(
                &path,
                "several pooling modes at once are not supported",
            )),
        }
    }
}

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_tokens: usize,
    /// The longest vocabulary entry in characters: no token covers more text.
    max_token_chars: usize,
    pad_id: u32,
    dim: usize,
    batch_size: usize,
    fingerprint: String,
    device: Device,
}

impl SentenceEncoder {
    /// Loads an encoder folder; texts will be cut to their first `max_tokens` tokens
    /// (special tokens included) and embedded `batch_size` at a time.
    pub fn load(dir: &Path, max_tokens: usize, batch_size: usize) -> Result<SentenceEncoder> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_owned(),
                what: "encoder folder".into(),
            });
        }
        if max_tokens < 3 || batch_size == 0 {
            return Err(Error::Invalid(format!(
                "an encoder needs a token budget of at least 3 (got {max_tokens}) and a batch of at least 1 (got {batch_size})"
            )));
        }
        let config_path = dir.join("config.json");
        let config_bytes = read(&config_path, "the model configuration")?;
        let config: Config =
            serde_json::from_slice(&config_bytes).map_err(|e| bad_file(&config_path, e))?;
        if max_tokens > config.max_position_embeddings {
            return Err(bad_file(
                &config_path,
                format!(
                    "max_position_embeddings is {}, below the token budget {max_tokens}",
                    config.max_position_embeddings
                ),
            ));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_bytes = read(&tokenizer_path, "the tokenizer (tokenizer.json)")?;
        let mut tokenizer =
            Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| bad_file(&tokenizer_path, e))?;
        // Truncation and padding are ours (head of the text, batch-wise padding).
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad_file(&tokenizer_path, e))?;
        tokenizer.with_padding(None);
        if tokenizer.get_vocab_size(true) > config.vocab_size {
            return Err(bad_file(
                &config_path,
                format!(
                    "vocab_size is {}, but the tokenizer has {} tokens",
                    config.vocab_size,
                    tokenizer.get_vocab_size(true)
                ),
            ));
        }
        let max_token_chars = tokenizer
            .get_vocab(true)
            .keys()
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(1);
        let pooling = Pooling::read(dir)?;

        let (weights_path, weights_bytes, tensors) = read_weights(dir)?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| bad_file(&weights_path, e))?;

        let fingerprint = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(
                &[
                    config_bytes.as_slice(),
                    &tokenizer_bytes,
                    &weights_bytes,
                    format!("{pooling:?} {max_tokens}").as_bytes(),
                ]
                .concat()
            )
        );
        Ok(SentenceEncoder {
            model,
            tokenizer,
            pooling,
            max_tokens,
            max_token_chars,
            pad_id: config.pad_token_id as u32,
            dim: config.hidden_size,
            batch_size,
            fingerprint,
            device,
        })
    }

    /// Identifies the model, tokenizer, pooling and token budget: equal fingerprints give
    /// equal embeddings.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids of each text, cut to the budget: `[CLS] head … [SEP]`. Only the head of a
    /// long text is tokenized (cut between words), since no more of it is kept.
    fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let keep_chars = self.max_tokens.saturating_mul(self.max_token_chars + 1);
        let heads: Vec<&str> = texts.iter().map(|t| head(t, keep_chars)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(heads, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|encoding| {
                let ids = encoding.get_ids();
                if ids.len() <= self.max_tokens {
                    ids.to_vec()
                } else {
                    // The last id is the closing special token; it stays.
                    let mut kept = ids[..self.max_tokens - 1].to_vec();
                    kept.push(ids[ids.len() - 1]);
                    kept
                }
            })
            .collect())
    }

    /// Unit-length embeddings of `texts`, in order. Texts run in batches of similar length;
    /// `progress` sees the number of texts done after each batch.
    pub fn embed(&self, texts: &[&str], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<f32>>> {
        let ids = self.token_ids(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut embeddings = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for batch in order.chunks(self.batch_size) {
            let pooled = self.embed_batch(batch.iter().map(|&i| ids[i].as_slice()))?;
            for (&i, vector) in batch.iter().zip(pooled) {
                embeddings[i] = vector;
            }
            done += batch.len();
            progress(done);
        }
        Ok(embeddings)
    }

    fn embed_batch<'a>(&self, batch: impl Iterator<Item = &'a [u32]>) -> Result<Vec<Vec<f32>>> {
        let batch: Vec<&[u32]> = batch.collect();
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut input = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for ids in &batch {
            input.extend_from_slice(ids);
            input.extend(std::iter::repeat_n(self.pad_id, width - ids.len()));
            mask.extend(std::iter::repeat_n(1u32, ids.len()));
            mask.extend(std::iter::repeat_n(0u32, width - ids.len()));
        }
        let shape = (batch.len(), width);
        let input = Tensor::from_vec(input, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sums = hidden.broadcast_mul(&weights)?.sum(1)?;
                sums.broadcast_div(&weights.sum(1)?.clamp(1e-9f32, f32::MAX)?)?
            }
            Pooling::Max => {
                // Padding positions are pushed far below any value before the maximum.
                let penalty = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.unsqueeze(2)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        let norms = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(pooled.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

/// `text` cut to at most `max_chars` characters, back to the last whitespace so that no word
/// is split.
fn head(text: &str, max_chars: usize) -> &str {
    if text.len() <= max_chars {
        return text;
    }
    let Some((end, _)) = text.char_indices().nth(max_chars) else {
        return text;
    };
    let end = text[..end].rfind(char::is_whitespace).unwrap_or(end);
    &text[..end]
}

/// The checkpoint's tensors (safetensors, else PyTorch's pickle), with the bytes that
/// identify it.
fn read_weights(dir: &Path) -> Result<(PathBuf, Vec<u8>, HashMap<String, Tensor>)> {
    let safetensors = dir.join("model.safetensors");
    let pytorch = dir.join("pytorch_model.bin");
    if safetensors.is_file() {
        let bytes = read(&safetensors, "the weights")?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad_file(&safetensors, e))?;
        return Ok((safetensors, bytes, tensors));
    }
    if pytorch.is_file() {
        let bytes = read(&pytorch, "the weights")?;
        let tensors = candle_core::pickle::read_all(&pytorch)
            .map_err(|e| bad_file(&pytorch, e))?
            .into_iter()
            .collect();
        return Ok((pytorch, bytes, tensors));
    }
    Err(Error::MissingFile {
        path: dir.to_owned(),
        what: "the weights: neither model.safetensors nor pytorch_model.bin".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_cut_between_words() {
        assert_eq!(head("short", 10), "short");
        assert_eq!(head("one two three", 9), "one two");
        assert_eq!(head("ünïcödé wörds hëre", 10), "ünïcödé");
        assert_eq!(head("nowhitespaceatall", 5), "nowhi");
    }
}
