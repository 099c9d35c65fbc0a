//! The LLM member: a decoder LLM (Gemma-2, Qwen2, Llama) as a 3-class preference classifier,
//! read from a Hugging Face folder and run in candle.
//!
//! So far, each checked against Hugging Face and PEFT on tiny fixtures: the families' configs
//! (`config`); the classifier's forward pass in f32, bf16 or f16, or with 8-bit base weights
//! (`model`); PEFT LoRA adapters read, made, saved, and their gradients (`adapter`); the
//! battle in a template, cut to a token budget (`encode`). Training the adapters through the
//! DeBERTa member's loop and the `transformer` command's wiring come next (issue 21).
mod adapter;
mod config;
mod encode;
mod error;
mod member;
mod model;
mod ops;

pub use adapter::{LoraSpec, TARGETABLE};
pub use config::{DecoderConfig, Family, Llama3RopeScaling};
pub use encode::{Padding, PairEncoder, Template};
pub use error::{Error, Result};
pub use member::{LlmConfig, LlmMember};
pub use model::{base_fingerprint, rope_inverse_frequencies, weight_files, DecoderClassifier};
