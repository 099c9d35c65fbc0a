//! The semantic features' inputs: sentence embeddings of every battle's prompt and answers,
//! from the `encoder` crate, with a progress bar, the cache, and the record a run keeps of its
//! encoder (`encoder.json`) so that `predict` embeds with the same one.
use crate::config::EncoderSettings;
use anyhow::{bail, Context, Result};
use features::{Battle, BattleEmbeddings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which encoder a run used: written as the run folder's `encoder.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderRecord {
    pub dir: PathBuf,
    /// Model, tokenizer, pooling and token budget (see `SentenceEncoder::fingerprint`).
    pub fingerprint: String,
    pub max_tokens: usize,
    pub batch_size: usize,
}

/// Sentence embeddings of battles: three per battle (prompt, A, B), in battle order.
pub struct BattleTexts {
    #[cfg(feature = "transformer")]
    embeddings: encoder::Embeddings,
    /// What embedding cost (`encoder::EmbedStats`), for metrics.json.
    pub stats: serde_json::Value,
}

impl BattleTexts {
    pub fn for_features(&self) -> Vec<BattleEmbeddings<'_>> {
        #[cfg(feature = "transformer")]
        return (0..self.embeddings.len() / 3)
            .map(|i| BattleEmbeddings {
                prompt: self.embeddings.vector(3 * i),
                response_a: self.embeddings.vector(3 * i + 1),
                response_b: self.embeddings.vector(3 * i + 2),
            })
            .collect();
        #[cfg(not(feature = "transformer"))]
        Vec::new()
    }
}

#[cfg(feature = "transformer")]
pub struct Encoder {
    model: encoder::SentenceEncoder,
    record: EncoderRecord,
    cache_dir: Option<PathBuf>,
}

#[cfg(feature = "transformer")]
impl Encoder {
    pub fn load(dir: &Path, settings: &EncoderSettings) -> Result<Encoder> {
        let model =
            encoder::SentenceEncoder::load(dir, settings.max_tokens, settings.batch_size)
                .with_context(|| format!("cannot load the sentence encoder {}", dir.display()))?;
        let record = EncoderRecord {
            dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()),
            fingerprint: model.fingerprint().to_owned(),
            max_tokens: settings.max_tokens,
            batch_size: settings.batch_size,
        };
        let cache_dir =
            (!settings.cache_dir.as_os_str().is_empty()).then(|| settings.cache_dir.clone());
        Ok(Encoder {
            model,
            record,
            cache_dir,
        })
    }

    pub fn record(&self) -> &EncoderRecord {
        &self.record
    }

    /// Embeds the prompt and both answers of every battle (turns joined as the other
    /// features join them), each distinct text once.
    pub fn embed(&self, battles: &[Battle]) -> Result<BattleTexts> {
        let joined: Vec<String> = battles
            .iter()
            .flat_map(|b| {
                [&b.prompt, &b.response_a, &b.response_b].map(|t| features::join_turns(t))
            })
            .collect();
        let texts: Vec<&str> = joined.iter().map(String::as_str).collect();
        let bar = indicatif::ProgressBar::hidden();
        let (embeddings, stats) = encoder::embed_cached(
            &self.model,
            self.cache_dir.as_deref(),
            &texts,
            |done, total| {
                if bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_length(total as u64);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "embedding {bar:30} {pos}/{len} texts, {per_sec}, ETA {eta}",
                        )
                        .expect("a valid template"),
                    );
                }
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        let rate = if stats.embedded > 0 {
            format!(
                " ({:.0} texts/s)",
                stats.embedded as f64 / stats.seconds.max(1e-9)
            )
        } else {
            String::new()
        };
        eprintln!(
            "sentence embeddings: {} texts, {} distinct, {} from the cache, {} embedded in {:.1}s{rate}",
            stats.texts, stats.distinct, stats.from_cache, stats.embedded, stats.seconds,
        );
        Ok(BattleTexts {
            embeddings,
            stats: serde_json::to_value(&stats)?,
        })
    }
}

/// Without candle in the build there is no encoder: this type has no values.
#[cfg(not(feature = "transformer"))]
pub enum Encoder {}

#[cfg(not(feature = "transformer"))]
impl Encoder {
    pub fn load(dir: &Path, _settings: &EncoderSettings) -> Result<Encoder> {
        bail!(
            "--encoder {}: this binary was built without sentence encoders (the `transformer` \
             feature, on by default)",
            dir.display()
        )
    }

    pub fn record(&self) -> &EncoderRecord {
        match *self {}
    }

    pub fn embed(&self, _battles: &[Battle]) -> Result<BattleTexts> {
        match *self {}
    }
}

pub const RECORD_FILE: &str = "encoder.json";

/// Reads a run's `encoder.json`, if it has one.
pub fn read_record(run: &Path) -> Result<Option<EncoderRecord>> {
    let path = run.join(RECORD_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let record = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an encoder record", path.display()))?;
    Ok(Some(record))
}

/// The encoder a saved run was made with, loaded from `dir` (default: the recorded folder)
/// and checked to be the same one.
pub fn load_recorded(run: &Path, record: &EncoderRecord, dir: Option<&Path>) -> Result<Encoder> {
    let dir = dir.unwrap_or(&record.dir);
    let settings = EncoderSettings {
        dir: Some(dir.to_owned()),
        max_tokens: record.max_tokens,
        batch_size: record.batch_size,
        ..EncoderSettings::default()
    };
    let encoder = Encoder::load(dir, &settings)?;
    if encoder.record().fingerprint != record.fingerprint {
        bail!(
            "{}: the run was made with another sentence encoder (fingerprint {}) than {} \
             (fingerprint {}); its features would not mean the same",
            run.join(RECORD_FILE).display(),
            record.fingerprint,
            dir.display(),
            encoder.record().fingerprint
        );
    }
    Ok(encoder)
}
