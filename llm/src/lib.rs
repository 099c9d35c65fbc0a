//! The LLM member: a decoder LLM (Gemma-2, Qwen2, Llama) as a 3-class preference classifier,
//! read from a Hugging Face folder and run in candle.
//!
//! So far: the families' configs (`config`), the classifier's forward pass (`model`), equal to
//! Hugging Face's `*ForSequenceClassification` on the tiny fixtures, and PEFT LoRA adapters
//! applied for prediction (`adapter`), equal to `peft`'s. Training the adapters through the
//! DeBERTa member's loop and the `transformer` command's wiring come next (issue 21).
mod adapter;
mod config;
mod encode;
mod error;
mod model;

pub use adapter::{LoraSpec, TARGETABLE};
pub use config::{DecoderConfig, Family, Llama3RopeScaling};
pub use encode::{Padding, PairEncoder, Template, DEFAULT_TEMPLATE};
pub use error::{Error, Result};
pub use model::{rope_inverse_frequencies, weight_files, DecoderClassifier};
