//! The LLM member: a decoder LLM (Gemma-2, Qwen2, Llama) as a 3-class preference classifier,
//! read from a Hugging Face folder and run in candle.
//!
//! Each part checked against Hugging Face and PEFT on tiny fixtures: the families' configs
//! (`config`); the classifier's forward pass in f32, bf16 or f16, or with 8-bit base weights,
//! and its base's weights fingerprint (`model`, with RMSNorm and RoPE nodes in `ops`); PEFT
//! LoRA adapters read, made, saved, and their gradients (`adapter`); the battle in a template,
//! cut to a token budget (`encode`). [`LlmMember`] (with [`LlmConfig`], `configs/llm.toml`) is
//! the member as the shared fold loop trains it (a `neural::FoldModel`), and [`LlmRun`] the
//! member under the fold-run protocol that `ensemble transformer` runs.
mod adapter;
mod config;
mod encode;
mod error;
mod gated_cpu;
mod member;
mod model;
mod ops;
mod safetensors_reader;

pub use adapter::{LoraSpec, TARGETABLE};
pub use config::{DecoderConfig, Family, Llama3RopeScaling};
pub use encode::{Padding, PairEncoder, Template};
pub use error::{Error, Result};
pub use member::{LlmConfig, LlmMember, LlmRun};
pub use model::{base_fingerprint, rope_inverse_frequencies, weight_files, DecoderClassifier};
