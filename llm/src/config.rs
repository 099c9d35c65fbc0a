//! A decoder's `config.json` as Hugging Face writes it for Gemma-2, Qwen2 and Llama, read into
//! one typed config; every key the model cannot honour is refused by name.
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The model families the member reads (`model_type` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gemma2,
    Qwen2,
    Llama,
}

impl Family {
    /// The family of a `model_type`, if the member reads it.
    pub fn from_model_type(name: &str) -> Option<Family> {
        match name {
            "gemma2" => Some(Family::Gemma2),
            "qwen2" => Some(Family::Qwen2),
            "llama" => Some(Family::Llama),
            _ => None,
        }
    }
}

/// Llama-3's RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// What the model needs of config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Biases on the q, k and v projections (Qwen2 always; others with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (`attention_bias` of Llama and Gemma-2).
    pub o_bias: bool,
    /// Per layer: whether it attends through a sliding window of `sliding_window` tokens.
    pub sliding_layers: Vec<bool>,
    pub sliding_window: usize,
    /// Gemma-2: attention scores become `tanh(s / cap) * cap` before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// The factor on q·k: `query_pre_attn_scalar^-0.5` for Gemma-2, `head_dim^-0.5` else.
    pub attention_scale: f64,
    pub pad_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The classes of a saved `*ForSequenceClassification` head (`id2label`), if any.
    pub num_labels: Option<usize>,
}

/// config.json's keys, as written by transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x
/// (`rope_parameters`).
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    use_sliding_window: bool,
    /// Absent (`None`) or null (`Some(None)`): transformers' Gemma2Config tells them apart.
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f64>>,
    query_pre_attn_scalar: Option<f64>,
    pad_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
}

/// transformers' `Gemma2Config` defaults, for keys a config.json leaves out.
const GEMMA2_DEFAULT_HEAD_DIM: usize = 256;
const GEMMA2_DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
const GEMMA2_DEFAULT_SLIDING_WINDOW: usize = 4096;
const GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING: f64 = 50.0;

/// A key present in the JSON, as `Some(value)` (`Some(None)` for null); absent keys are
/// `None` through `#[serde(default)]`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(deserializer).map(Some)
}

impl DecoderConfig {
    /// Reads `config.json`; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<DecoderConfig> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let bad = |message: String| Error::BadModelFile {
            path: path.to_owned(),
            message,
        };
        DecoderConfig::from_json(&text).map_err(bad)
    }

    /// Reads config.json's text; errors say what is wrong (the caller names the source).
    pub fn from_json(text: &str) -> std::result::Result<DecoderConfig, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        DecoderConfig::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> std::result::Result<DecoderConfig, String> {
        let family = match raw.model_type.as_deref() {
            None => return Err("no model_type".into()),
            Some(name) => Family::from_model_type(name).ok_or_else(|| {
                format!("model_type {name:?}: the LLM member reads gemma2, qwen2 and llama")
            })?,
        };
        let activation = raw.hidden_activation.clone().or(raw.hidden_act.clone());
        let expected_activation = match family {
            Family::Gemma2 => "gelu_pytorch_tanh",
            Family::Qwen2 | Family::Llama => "silu",
        };
        if activation
            .as_deref()
            .is_some_and(|a| a != expected_activation)
        {
            return Err(format!(
                "activation {:?}: {family:?} models use {expected_activation}",
                activation.unwrap_or_default()
            ));
        }
        if raw.mlp_bias {
            return Err("mlp_bias = true is not supported".into());
        }
        if raw.num_attention_heads == 0 {
            return Err("num_attention_heads = 0".into());
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(format!(
                "num_key_value_heads = {num_kv_heads} does not divide num_attention_heads = {}",
                raw.num_attention_heads
            ));
        }
        // Keys config.json leaves out take transformers' defaults: Gemma2Config's own (head_dim
        // 256, query_pre_attn_scalar 256, sliding_window 4096, attn_logit_softcapping 50),
        // and hidden_size / heads for the others' head_dim.
        let head_dim = raw.head_dim.unwrap_or(match family {
            Family::Gemma2 => GEMMA2_DEFAULT_HEAD_DIM,
            Family::Qwen2 | Family::Llama => raw.hidden_size / raw.num_attention_heads,
        });
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim = {head_dim}: RoPE needs an even head size"
            ));
        }
        let (rope_theta, rope_scaling) = rope(&raw)?;
        let (sliding_layers, sliding_window) = match family {
            Family::Gemma2 => {
                let window = raw.sliding_window.unwrap_or(GEMMA2_DEFAULT_SLIDING_WINDOW);
                let layers = match &raw.layer_types {
                    Some(types) if types.len() != raw.num_hidden_layers => {
                        return Err(format!(
                            "layer_types has {} entries for {} layers",
                            types.len(),
                            raw.num_hidden_layers
                        ))
                    }
                    Some(types) => types
                        .iter()
                        .map(|t| match t.as_str() {
                            "sliding_attention" => Ok(true),
                            "full_attention" => Ok(false),
                            other => Err(format!("layer_types: unknown {other:?}")),
                        })
                        .collect::<std::result::Result<_, _>>()?,
                    // Gemma-2 alternates, from a sliding layer.
                    None => (0..raw.num_hidden_layers).map(|i| i % 2 == 0).collect(),
                };
                (layers, window)
            }
            _ if raw.use_sliding_window => {
                return Err("use_sliding_window = true is not supported for qwen2".into())
            }
            _ => (vec![false; raw.num_hidden_layers], 0),
        };
        let attention_scale = match family {
            Family::Gemma2 => raw
                .query_pre_attn_scalar
                .unwrap_or(GEMMA2_DEFAULT_QUERY_PRE_ATTN_SCALAR),
            _ => head_dim as f64,
        }
        .powf(-0.5);
        let eos_token_ids = match raw.eos_token_id {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(value) => serde_json::from_value::<EosTokenIds>(value)
                .map_err(|_| "eos_token_id: expected a token id or a list of ids".to_owned())?
                .into_vec(),
        };
        Ok(DecoderConfig {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            qkv_bias: family == Family::Qwen2 || raw.attention_bias,
            o_bias: family != Family::Qwen2 && raw.attention_bias,
            sliding_layers,
            sliding_window,
            attn_logit_softcapping: match family {
                Family::Gemma2 => raw
                    .attn_logit_softcapping
                    .unwrap_or(Some(GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING)),
                _ => None,
            },
            attention_scale,
            pad_token_id: raw.pad_token_id,
            eos_token_ids,
            num_labels: raw.id2label.map(|labels| labels.len()),
        })
    }
}

impl DecoderConfig {
    /// The id that pads batches: `pad_token_id`, or else the first EOS id, as Hugging Face's
    /// users pad models that have no pad token; `true` when it is EOS.
    pub fn padding_id(&self) -> std::result::Result<(u32, bool), String> {
        match (self.pad_token_id, self.eos_token_ids.first()) {
            (Some(pad), _) => Ok((pad, false)),
            (None, Some(&eos)) => Ok((eos, true)),
            (None, None) => Err("config.json has neither pad_token_id nor eos_token_id".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EosTokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            EosTokenIds::One(id) => vec![id],
            EosTokenIds::Many(ids) => ids,
        }
    }
}

/// RoPE's base and scaling, from `rope_theta`/`rope_scaling` (transformers 4.x) or
/// `rope_parameters` (5.x). Only Llama-3's scaling is known; others are refused by name.
fn rope(raw: &RawConfig) -> std::result::Result<(f64, Option<Llama3RopeScaling>), String> {
    let parameters = raw.rope_parameters.as_ref().filter(|p| !p.is_null());
    let scaling = raw
        .rope_scaling
        .as_ref()
        .filter(|s| !s.is_null())
        .or(parameters);
    let theta = raw
        .rope_theta
        .or_else(|| parameters.and_then(|p| p.get("rope_theta")?.as_f64()))
        .unwrap_or(10_000.0);
    let Some(scaling) = scaling else {
        return Ok((theta, None));
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let number = |key: &str| {
                scaling
                    .get(key)
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| format!("rope_scaling: llama3 without {key}"))
            };
            Ok((
                theta,
                Some(Llama3RopeScaling {
                    factor: number("factor")?,
                    low_freq_factor: number("low_freq_factor")?,
                    high_freq_factor: number("high_freq_factor")?,
                    original_max_position_embeddings: number("original_max_position_embeddings")?,
                }),
            ))
        }
        other => Err(format!(
            "rope_scaling of type {other:?} is not supported (default and llama3 are)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> std::result::Result<DecoderConfig, String> {
        DecoderConfig::from_raw(serde_json::from_value(json).unwrap())
    }

    fn base(model_type: &str) -> serde_json::Value {
        serde_json::json!({
            "model_type": model_type, "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "sliding_window": 4,
            "query_pre_attn_scalar": 16, "eos_token_id": [5, 7]
        })
    }

    #[test]
    fn families_differ_where_hugging_face_differs() {
        let mut gemma = base("gemma2");
        gemma["head_dim"] = serde_json::json!(4);
        let gemma = parse(gemma).unwrap();
        assert_eq!(gemma.sliding_layers, [true, false, true]);
        assert_eq!(gemma.attention_scale, 0.25);
        assert_eq!(gemma.head_dim, 4);
        assert_eq!(gemma.eos_token_ids, [5, 7]);
        let qwen = parse(base("qwen2")).unwrap();
        assert!(qwen.qkv_bias && !qwen.o_bias);
        assert_eq!(qwen.sliding_layers, [false; 3]);
        assert_eq!(qwen.attention_scale, 0.5);
        assert_eq!(qwen.rope_theta, 10_000.0);
    }

    /// Gemma-2 keys config.json leaves out take Gemma2Config's defaults, as transformers
    /// reads them; a null soft-capping turns it off.
    #[test]
    fn gemma2_keys_left_out_take_transformers_defaults() {
        let mut gemma = base("gemma2");
        let fields = gemma.as_object_mut().unwrap();
        fields.remove("sliding_window");
        fields.remove("query_pre_attn_scalar");
        let config = parse(gemma.clone()).unwrap();
        assert_eq!(config.head_dim, 256);
        assert_eq!(config.attention_scale, 1.0 / 16.0);
        assert_eq!(config.sliding_window, 4096);
        assert_eq!(config.attn_logit_softcapping, Some(50.0));
        gemma["attn_logit_softcapping"] = serde_json::Value::Null;
        assert_eq!(parse(gemma).unwrap().attn_logit_softcapping, None);
        // Qwen2 and Llama: hidden_size / heads, as before.
        assert_eq!(parse(base("llama")).unwrap().head_dim, 4);
    }

    #[test]
    fn unknown_families_and_settings_are_refused_by_name() {
        let error = parse(base("mistral")).unwrap_err();
        assert!(error.starts_with("model_type \"mistral\""), "{error}");
        let mut yarn = base("llama");
        yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        assert!(parse(yarn)
            .unwrap_err()
            .contains("\"yarn\" is not supported"));
        let mut heads = base("llama");
        heads["num_key_value_heads"] = serde_json::json!(3);
        assert!(parse(heads)
            .unwrap_err()
            .contains("num_key_value_heads = 3"));
    }

    #[test]
    fn rope_parameters_of_transformers_5_are_read_too() {
        let mut llama = base("llama");
        llama["rope_parameters"] = serde_json::json!({
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192
        });
        let config = parse(llama).unwrap();
        assert_eq!(config.rope_theta, 500_000.0);
        assert_eq!(config.rope_scaling.unwrap().factor, 8.0);
    }
}
