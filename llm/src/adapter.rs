//! LoRA adapters in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`, as
//! Python's `peft` saves them for a `SEQ_CLS` task, so that adapters trained by either side
//! load in the other.
//!
//! A projection `W` with an adapter computes `W x + (B (A x)) · alpha / r` (`alpha / √r` with
//! rsLoRA); A is `[r, in]`, B `[out, r]`. The keys are
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`, and the
//! classification head, which PEFT trains in full (`modules_to_save`), is saved as
//! `base_model.model.score.weight`.
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The projections an adapter may target, and the block that holds each.
pub const TARGETABLE: [(&str, &str); 7] = [
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
];

/// The key prefix PEFT gives the wrapped model's parameters.
const PEFT_PREFIX: &str = "base_model.model.";

/// PEFT's key of a LoRA matrix (`ab`: "A" or "B") of `module` in `layer`.
pub(crate) fn lora_key(layer: usize, module: &str, ab: &str) -> String {
    let block = TARGETABLE
        .iter()
        .find(|(m, _)| *m == module)
        .map_or("self_attn", |(_, b)| *b);
    format!("{PEFT_PREFIX}model.layers.{layer}.{block}.{module}.lora_{ab}.weight")
}

/// PEFT's key of the classification head it trains in full.
pub(crate) const SCORE_KEY: &str = "base_model.model.score.weight";

/// The keys of `adapter_config.json` the member reads; PEFT options that change the
/// computation and that it does not implement are refused by name.
#[derive(Deserialize)]
struct RawAdapterConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    bias: Option<String>,
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: serde_json::Map<String, serde_json::Value>,
}

/// One projection's adapter: A and B are variables, the weights training updates.
pub(crate) struct LoraWeights {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    /// Dropout on the adapter's input in training (PEFT's `lora_dropout`).
    pub dropout: f64,
}

/// What a LoRA adapter is: its rank, alpha and the projections it adapts (the `[lora]`
/// table of `configs/llm.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    /// Names from [`TARGETABLE`].
    pub target_modules: Vec<String>,
    /// rsLoRA: the update is scaled by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Dropout on each adapter's input in training (PEFT's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        match self.use_rslora {
            true => self.alpha / (self.r as f64).sqrt(),
            false => self.alpha / self.r as f64,
        }
    }

    /// PEFT's `adapter_config.json` for this adapter on the model in `base_model`.
    pub(crate) fn peft_config(&self, base_model: &Path) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "base_model_name_or_path": base_model.display().to_string(),
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "modules_to_save": ["classifier", "score"],
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }
}

/// A PEFT LoRA adapter as read from its folder, checked against the model it is for.
pub(crate) struct Adapter {
    pub spec: LoraSpec,
    /// Per layer and module name: A and B.
    pub weights: BTreeMap<(usize, String), LoraWeights>,
    /// The classification head the adapter carries (`modules_to_save`), if any.
    pub score: Option<Tensor>,
}

/// The shapes the model expects of each projection: `(in, out)`.
pub(crate) type ProjectionShapes = BTreeMap<&'static str, (usize, usize)>;

impl Adapter {
    /// Reads `dir` (adapter_config.json, adapter_model.safetensors) for a model of
    /// `num_layers` layers whose projections have `shapes` and whose head is
    /// `[labels, hidden]`. Every mismatch names the file and what is wrong.
    pub(crate) fn load(
        dir: &Path,
        num_layers: usize,
        shapes: &ProjectionShapes,
        head_shape: (usize, usize),
        device: &Device,
    ) -> Result<Adapter> {
        let config_path = dir.join("adapter_config.json");
        let weights_path = dir.join("adapter_model.safetensors");
        for (path, what) in [
            (&config_path, "adapter_config.json"),
            (&weights_path, "adapter_model.safetensors"),
        ] {
            if !path.is_file() {
                return Err(Error::MissingFile {
                    path: dir.to_owned(),
                    what: what.into(),
                });
            }
        }
        let bad_config = |message: String| Error::BadModelFile {
            path: config_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
        let raw: RawAdapterConfig =
            serde_json::from_str(&text).map_err(|e| bad_config(e.to_string()))?;
        let spec = LoraSpec {
            r: raw.r,
            alpha: raw.lora_alpha,
            target_modules: check_config(&raw).map_err(bad_config)?,
            use_rslora: raw.use_rslora,
            dropout: raw.lora_dropout,
        };
        let scale = spec.scale();

        let bad_weights = |message: String| Error::BadModelFile {
            path: weights_path.clone(),
            message,
        };
        let mut tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| bad_weights(e.to_string()))?;
        let mut weights = BTreeMap::new();
        for layer in 0..num_layers {
            for module in &spec.target_modules {
                let (&name, &(in_dim, out_dim)) = shapes
                    .get_key_value(module.as_str())
                    .expect("target modules are checked against TARGETABLE");
                let key = |ab: &str| lora_key(layer, name, ab);
                let mut take = |ab: &str, shape: (usize, usize)| -> Result<Tensor> {
                    let key = key(ab);
                    let tensor = tensors
                        .remove(&key)
                        .ok_or_else(|| bad_weights(format!("no {key}")))?;
                    if tensor.dims() != [shape.0, shape.1] {
                        return Err(bad_weights(format!(
                            "{key} has shape {:?}; the model needs {shape:?} (r = {})",
                            tensor.dims(),
                            raw.r
                        )));
                    }
                    Ok(tensor.to_dtype(DType::F32)?)
                };
                let a = Var::from_tensor(&take("A", (raw.r, in_dim))?)?;
                let b = Var::from_tensor(&take("B", (out_dim, raw.r))?)?;
                weights.insert(
                    (layer, name.to_owned()),
                    LoraWeights {
                        a,
                        b,
                        scale,
                        dropout: spec.dropout,
                    },
                );
            }
        }
        let score_key = SCORE_KEY;
        let score = match tensors.remove(score_key) {
            Some(score) if score.dims() != [head_shape.0, head_shape.1] => {
                return Err(bad_weights(format!(
                    "{score_key} has shape {:?}; the model's head is {head_shape:?}",
                    score.dims()
                )))
            }
            Some(score) => Some(score.to_dtype(DType::F32)?),
            None => None,
        };
        if !tensors.is_empty() {
            let left: BTreeSet<&String> = tensors.keys().collect();
            let shown: Vec<&&String> = left.iter().take(3).collect();
            return Err(bad_weights(format!(
                "{} tensors the model has no place for (this adapter was made for another \
                 model, or targets modules adapter_config.json does not list), e.g. {shown:?}",
                left.len()
            )));
        }
        Ok(Adapter {
            spec,
            weights,
            score,
        })
    }
}

/// The target modules of a supported LoRA config, or what is not supported.
fn check_config(raw: &RawAdapterConfig) -> std::result::Result<Vec<String>, String> {
    if raw.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        return Err(format!(
            "peft_type {:?}: only LORA adapters are read",
            raw.peft_type.as_deref().unwrap_or_default()
        ));
    }
    let refused = [
        (raw.use_dora, "use_dora = true (DoRA)"),
        (raw.fan_in_fan_out, "fan_in_fan_out = true"),
        (
            raw.bias.as_deref().is_some_and(|b| b != "none"),
            "bias other than \"none\"",
        ),
        (
            raw.layers_to_transform
                .as_ref()
                .is_some_and(|l| !l.is_null()),
            "layers_to_transform",
        ),
        (!raw.rank_pattern.is_empty(), "rank_pattern"),
        (!raw.alpha_pattern.is_empty(), "alpha_pattern"),
    ];
    if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
        return Err(format!("{what} is not supported"));
    }
    if raw.r == 0 {
        return Err("r = 0".into());
    }
    let modules: Vec<String> = match &raw.target_modules {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|m| m.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("target_modules: expected a list of module names")?,
        other => {
            return Err(format!(
                "target_modules {other}: a regular expression is not supported; list the modules"
            ))
        }
    };
    if let Some(unknown) = modules
        .iter()
        .find(|m| !TARGETABLE.iter().any(|(t, _)| t == m))
    {
        return Err(format!(
            "target_modules: {unknown:?} is not one of q_proj, k_proj, v_proj, o_proj, \
             gate_proj, up_proj, down_proj"
        ));
    }
    let mut modules = modules;
    modules.sort();
    modules.dedup();
    Ok(modules)
}
