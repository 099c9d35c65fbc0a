//! The DeBERTa member: a DeBERTa-v2/v3 cross-encoder (or siamese pair) fine-tuned in candle
//! on each fold through the shared loop (`neural`), predicting with A/B swap averaging.
//!
//! Public interface: [`DebertaConfig`], [`Classifier`] (load, encode, predict,
//! save_pretrained; a `neural::FoldModel`), [`training_memory`] and [`DebertaRun`] (the
//! member under the fold-run protocol).
#![warn(clippy::undocumented_unsafe_blocks)]

mod config;
mod error;
mod member;
mod memory;
mod model;
mod ops;
mod sentencepiece;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

pub use config::{DebertaConfig, Unfreeze};
pub use error::{Error, Result};
pub use member::{training_memory, DebertaRun};
pub use model::{Layout, ModelConfig};
pub use tokenizer::{load_tokenizer, TextEncoder};

use candle_core::Device;
use model::{DebertaClassifier, Pass, HEAD_PREFIXES};
use neural::{EncodedPair, MemberConfig, ResponsePair};

/// A DeBERTa classifier with its tokenizer, on one device.
pub struct Classifier {
    model: DebertaClassifier,
    vars: VarMap,
    encoder: TextEncoder,
    config: DebertaConfig,
    device: Device,
    /// The `config.json` it was made from, as written there (saved again by `save_pretrained`).
    model_json: serde_json::Value,
    /// The folder holding its tokenizer files.
    tokenizer_dir: PathBuf,
}

const CONFIG_FILE: &str = "config.json";
const SAFETENSORS_FILE: &str = "model.safetensors";
const PYTORCH_FILE: &str = "pytorch_model.bin";
/// Tokenizer files copied into a saved model folder, where the source has them.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "spm.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// The `config.json` key recording the layout a saved model was fine-tuned with.
const LAYOUT_KEY: &str = "ensemble_layout";
/// Class names written to a saved model's `config.json`, in the output order.
const LABELS: [&str; 3] = ["winner_model_a", "winner_model_b", "winner_tie"];

impl Classifier {
    /// Loads a Hugging Face DeBERTa-v2/v3 folder: `config.json`, `model.safetensors` or
    /// `pytorch_model.bin`, and `tokenizer.json` or `spm.model`. A pooler or classifier missing
    /// from the checkpoint (a pretrained backbone) is initialized from `config.training.seed`.
    pub fn load(model_dir: &Path, device: &Device, config: &DebertaConfig) -> Result<Classifier> {
        config.validate().map_err(Error::Invalid)?;
        let config_path = model_dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                path: config_path,
                what: "the model configuration".into(),
            });
        }
        let text = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
        let bad_config = |message: String| Error::bad_model_file(&config_path, message);
        let model_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad_config(e.to_string()))?;
        let model_config =
            ModelConfig::deserialize(&model_json).map_err(|e| bad_config(e.to_string()))?;
        model_config.check().map_err(bad_config)?;
        // A model this tool fine-tuned has a head for its own layout only.
        if let Some(saved) = model_json.get(LAYOUT_KEY) {
            let saved = Layout::deserialize(saved).map_err(|e| bad_config(e.to_string()))?;
            if saved != config.layout {
                return Err(bad_config(format!(
                    "the model was fine-tuned with layout {saved:?}; the config asks for {:?}",
                    config.layout
                )));
            }
        }
        check_max_len(config.training.max_len, &model_config).map_err(bad_config)?;
        let (weights_path, weights) = read_checkpoint(model_dir)?;
        check_layers(&weights, &model_config)
            .map_err(|message| Error::bad_model_file(&weights_path, message))?;
        let tokenizer = load_tokenizer(model_dir)?;
        // An id past the embedding table would fail mid-training with an index error.
        let tokenizer_size = tokenizer.get_vocab_size(true);
        if tokenizer_size > model_config.vocab_size {
            return Err(bad_config(format!(
                "vocab_size is {}, but the tokenizer has {tokenizer_size} tokens: the model \
                 has no embedding for the last ones (a tokenizer of another model?)",
                model_config.vocab_size
            )));
        }
        let encoder = TextEncoder::new(tokenizer, config.training.segments.clone())?;

        let init_std = model_config.initializer_range.unwrap_or(0.02);
        let source = (model_json, model_dir.to_path_buf());
        Classifier::build(&model_config, source, encoder, device, config, |vars| {
            assign_weights(
                vars,
                &weights,
                &weights_path,
                init_std,
                config.training.seed,
            )
        })
    }

    /// A model of the given shape with random weights (N(0, 0.02²), unit LayerNorms) and the
    /// tokenizer of `tokenizer_dir`: for benchmarks of sizes one has no checkpoint of.
    pub fn random(
        model_config: &ModelConfig,
        tokenizer_dir: &Path,
        device: &Device,
        config: &DebertaConfig,
    ) -> Result<Classifier> {
        model_config.check().map_err(Error::Invalid)?;
        let encoder = TextEncoder::new(
            load_tokenizer(tokenizer_dir)?,
            config.training.segments.clone(),
        )?;
        let model_json =
            serde_json::to_value(model_config).map_err(|e| Error::Invalid(e.to_string()))?;
        let source = (model_json, tokenizer_dir.to_path_buf());
        Classifier::build(model_config, source, encoder, device, config, |vars| {
            for (name, var) in vars.data().lock().expect("weights lock poisoned").iter() {
                if name.ends_with("weight") && !name.contains("LayerNorm") {
                    var.set(&(Tensor::randn(0f32, 1f32, var.shape(), device)? * 0.02)?)?;
                }
            }
            Ok(())
        })
    }

    /// Creates the model's variables, lets `set_weights` fill them, and assembles the
    /// classifier: the part `load` and `random` share. `source` is the model's `config.json`
    /// and the folder of its tokenizer files.
    fn build(
        model_config: &ModelConfig,
        (model_json, tokenizer_dir): (serde_json::Value, PathBuf),
        encoder: TextEncoder,
        device: &Device,
        config: &DebertaConfig,
        set_weights: impl FnOnce(&VarMap) -> Result<()>,
    ) -> Result<Classifier> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let model =
            DebertaClassifier::load(model_config, config.layout, config.training.precision, vb)?;
        set_weights(&vars)?;
        Ok(Classifier {
            model,
            vars,
            encoder,
            config: config.clone(),
            device: device.clone(),
            model_json,
            tokenizer_dir,
        })
    }

    pub fn config(&self) -> &DebertaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn encoder(&self) -> &TextEncoder {
        &self.encoder
    }

    /// Tokenizes battles into both A/B orders within `config.training.max_len`.
    pub fn encode(&self, pairs: &[ResponsePair]) -> Result<Vec<EncodedPair>> {
        let texts: Vec<&str> = pairs
            .iter()
            .flat_map(|p| {
                [
                    p.prompt.as_str(),
                    p.response_a.as_str(),
                    p.response_b.as_str(),
                ]
            })
            .collect();
        let max_len = self.config.training.max_len;
        let ids = self.encoder.token_ids(&texts, max_len)?;
        Ok(ids
            .chunks(3)
            .map(|c| {
                let (prompt, a, b) = (&c[0], &c[1], &c[2]);
                match self.config.layout {
                    Layout::Cross => EncodedPair {
                        as_given: vec![self.encoder.cross(prompt, a, b, max_len)],
                        swapped: vec![self.encoder.cross(prompt, b, a, max_len)],
                    },
                    Layout::Siamese => {
                        let with_a = self.encoder.single(prompt, a, max_len);
                        let with_b = self.encoder.single(prompt, b, max_len);
                        EncodedPair {
                            as_given: vec![with_a.clone(), with_b.clone()],
                            swapped: vec![with_b, with_a],
                        }
                    }
                }
            })
            .collect())
    }

    /// Logits `[N, 3]` of N views (each view one sequence for cross, two for siamese).
    fn forward_views(&self, views: &[&[Vec<u32>]], pass: &Pass) -> Result<Tensor> {
        let sequences: Vec<&Vec<u32>> = match self.model.layout() {
            Layout::Cross => views.iter().map(|v| &v[0]).collect(),
            Layout::Siamese => views
                .iter()
                .map(|v| &v[0])
                .chain(views.iter().map(|v| &v[1]))
                .collect(),
        };
        let (ids, mask) = pad_batch(&sequences, self.encoder.pad, &self.device)?;
        Ok(self.model.forward(&ids, &mask, pass)?)
    }

    /// Swap-averaged logits of `encoded` rows, batched by tokens (see
    /// [`neural::predict_logits`]).
    pub fn predict_logits<P: std::borrow::Borrow<EncodedPair>>(
        &self,
        encoded: &[P],
    ) -> Result<Vec<[f32; 3]>> {
        Ok(neural::predict_logits(
            self,
            encoded,
            self.config.training.prediction_tokens(),
        )?)
    }

    /// Raw logits (no swap averaging) of ready-made cross-encoder sequences, in one batch.
    pub fn raw_logits(&self, sequences: &[Vec<u32>]) -> Result<Vec<[f32; 3]>> {
        if self.model.layout() != Layout::Cross {
            return Err(Error::Invalid("raw_logits needs the cross layout".into()));
        }
        let refs: Vec<&Vec<u32>> = sequences.iter().collect();
        let (ids, mask) = pad_batch(&refs, self.encoder.pad, &self.device)?;
        let logits = self
            .model
            .forward(&ids, &mask, &Pass::eval())?
            .to_vec2::<f32>()?;
        Ok(logits.into_iter().map(|r| [r[0], r[1], r[2]]).collect())
    }

    /// A copy of every weight by name; also how the best checkpoint is kept.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.vars.data().lock().expect("weights lock poisoned");
        vars.iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
            .collect()
    }

    /// Writes a Hugging Face model folder: `model.safetensors` (f32, with the head),
    /// `config.json` with the three classes named and the layout recorded, and the tokenizer
    /// files. [`Classifier::load`] reads it back, and so does transformers'
    /// `DebertaV2ForSequenceClassification` for the cross layout.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let weights_path = dir.join(SAFETENSORS_FILE);
        self.vars.save(&weights_path).map_err(|e| match e {
            candle_core::Error::Io(cause) => Error::Io {
                path: weights_path.clone(),
                cause,
            },
            other => Error::Candle(other),
        })?;
        let mut model_json = self.model_json.clone();
        if let Some(fields) = model_json.as_object_mut() {
            let id2label: serde_json::Map<String, serde_json::Value> = LABELS
                .iter()
                .enumerate()
                .map(|(i, name)| (i.to_string(), (*name).into()))
                .collect();
            let label2id: serde_json::Map<String, serde_json::Value> = LABELS
                .iter()
                .enumerate()
                .map(|(i, name)| (name.to_string(), i.into()))
                .collect();
            fields.insert("id2label".into(), id2label.into());
            fields.insert("label2id".into(), label2id.into());
            fields.insert(
                "architectures".into(),
                serde_json::json!(["DebertaV2ForSequenceClassification"]),
            );
            fields.insert(
                LAYOUT_KEY.into(),
                serde_json::to_value(self.config.layout)
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            );
        }
        let config_path = dir.join(CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(&model_json).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&config_path, text).map_err(Error::io(&config_path))?;
        for name in TOKENIZER_FILES {
            let source = self.tokenizer_dir.join(name);
            if source.is_file() {
                std::fs::copy(&source, dir.join(name)).map_err(Error::io(&source))?;
            }
        }
        Ok(())
    }
}

/// The fingerprint of a DeBERTa folder (`neural::fingerprint_files`: every byte of its
/// weights, `config.json` and tokenizer files), which each fold records of the model it was
/// fine-tuned from, so that a merge never mixes folds of different bases.
pub fn base_fingerprint(model_dir: &Path) -> Result<String> {
    let weights = [SAFETENSORS_FILE, PYTORCH_FILE]
        .iter()
        .map(|name| model_dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::MissingFile {
            path: model_dir.to_path_buf(),
            what: format!("the weights: neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}"),
        })?;
    let mut files = vec![weights, model_dir.join(CONFIG_FILE)];
    files.extend(neural::existing_files(model_dir, &TOKENIZER_FILES));
    Ok(neural::fingerprint_files(&files)?)
}

/// Right-pads sequences into ids `[N, L]` (u32) and a mask `[N, L]` (f32).
fn pad_batch(sequences: &[&Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let width = sequences.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(sequences.len() * width);
    let mut mask = Vec::with_capacity(sequences.len() * width);
    for sequence in sequences {
        ids.extend(sequence.iter().copied());
        ids.extend(std::iter::repeat_n(pad, width - sequence.len()));
        mask.extend(std::iter::repeat_n(1f32, sequence.len()));
        mask.extend(std::iter::repeat_n(0f32, width - sequence.len()));
    }
    let shape = (sequences.len(), width);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// Reads `model.safetensors` or else `pytorch_model.bin` (to the CPU, as f32).
fn read_checkpoint(model_dir: &Path) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let safetensors = model_dir.join(SAFETENSORS_FILE);
    let pytorch = model_dir.join(PYTORCH_FILE);
    let tensors: Vec<(String, Tensor)> = if safetensors.is_file() {
        candle_core::safetensors::load(&safetensors, &Device::Cpu)
            .map_err(|e| Error::bad_model_file(&safetensors, e.to_string()))?
            .into_iter()
            .collect()
    } else if pytorch.is_file() {
        candle_core::pickle::read_all(&pytorch)
            .map_err(|e| Error::bad_model_file(&pytorch, e.to_string()))?
    } else {
        return Err(Error::MissingFile {
            path: model_dir.to_path_buf(),
            what: format!("the weights: neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}"),
        });
    };
    let path = if safetensors.is_file() {
        safetensors
    } else {
        pytorch
    };
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok((path, tensors))
}

/// Longest sequences a model takes: absolute position embeddings end at
/// `max_position_embeddings`; relative-only models (DeBERTa-v3) run longer sequences, up to
/// twice that here, since their attention grows with the square of the length.
fn check_max_len(max_len: usize, model: &ModelConfig) -> std::result::Result<(), String> {
    let limit = if model.position_biased_input {
        model.max_position_embeddings
    } else {
        2 * model.max_position_embeddings
    };
    if max_len > limit {
        return Err(format!(
            "max_len {max_len} exceeds what this model takes: {limit} tokens (max_position_embeddings {}{})",
            model.max_position_embeddings,
            if model.position_biased_input { ", absolute positions" } else { ", relative positions: twice that" }
        ));
    }
    Ok(())
}

/// Refuses a checkpoint with more encoder layers than `num_hidden_layers`: their weights
/// would be dropped without a word.
fn check_layers(
    weights: &HashMap<String, Tensor>,
    model: &ModelConfig,
) -> std::result::Result<(), String> {
    let deepest = weights
        .keys()
        .filter_map(|name| name.strip_prefix("deberta.encoder.layer."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max();
    match deepest {
        Some(layer) if layer >= model.num_hidden_layers => Err(format!(
            "it has encoder layer {layer}, but config.json's num_hidden_layers is {}: \
             the deeper layers' weights would be ignored",
            model.num_hidden_layers
        )),
        _ => Ok(()),
    }
}

/// Copies checkpoint tensors into the model's variables. Head weights the checkpoint lacks (or
/// has in another shape, e.g. a different number of labels) are drawn from N(0, init_std²) with
/// zero biases; a missing or misshapen backbone weight is an error naming the file.
fn assign_weights(
    vars: &VarMap,
    weights: &HashMap<String, Tensor>,
    path: &Path,
    init_std: f64,
    seed: u64,
) -> Result<()> {
    let vars = vars.data().lock().expect("weights lock poisoned");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut missing = Vec::new();
    for name in names {
        let var = &vars[name];
        let is_head = HEAD_PREFIXES.iter().any(|p| name.starts_with(p));
        match weights.get(name) {
            Some(tensor) if tensor.dims() == var.dims() => {
                var.set(&tensor.to_device(var.device())?)?
            }
            Some(tensor) if !is_head => {
                return Err(Error::bad_model_file(
                    path,
                    format!(
                        "{name} has shape {:?}, config.json implies {:?}",
                        tensor.dims(),
                        var.dims()
                    ),
                ))
            }
            _ if is_head => {
                if name.ends_with("weight") {
                    let values: Vec<f32> = (0..var.elem_count())
                        .map(|_| (normal(&mut rng) * init_std) as f32)
                        .collect();
                    var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
                }
            }
            _ => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        return Err(Error::bad_model_file(
            path,
            format!(
                "{} weights missing, e.g. {}",
                missing.len(),
                shown.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A standard normal draw (Box–Muller), so that the head's init follows the seed.
fn normal(rng: &mut StdRng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
