//! What the neural members share, as candle-nn and burn's trainer are to their models: the
//! fold training loop and swap-averaged prediction for any [`FoldModel`] (`train`: AdamW,
//! schedules, accumulation, clipping, f16 loss scaling, early stopping), the settings both
//! members train with ([`TrainingConfig`], which each member's config flattens beside its own
//! keys), graph ops with lean backward passes (`ops`: frozen and LoRA projections, attention
//! probabilities, grouped-query attention, byte-mask dropout) and gradient checkpointing,
//! token budgets ([`SegmentBudget`]), battles as text and tokens ([`ResponsePair`], [`EncodedPair`]),
//! devices, CUDA library loading and the memory check, and the fold-run protocol ([`run`]).
//!
//! The members (`deberta`, `llm`) stand on this crate and on `ensemble_core`, never on each
//! other.
#![warn(clippy::undocumented_unsafe_blocks)]

mod adamw_cpu;
mod checkpoint;
mod config;
mod cpu_attention;
pub mod cpu_math;
mod cpu_matmul;
// Compiled into the tests of every build, so that the CPU CI checks its search and messages.
#[cfg(any(feature = "cuda", test))]
mod cuda_libraries;
mod device;
mod error;
mod fingerprint;
mod memory;
mod ops;
mod pair;
pub mod run;
mod segments;
pub mod testing;
mod train;

pub use checkpoint::{checkpointed, ParamGrads, Recompute};
pub use config::{MemberConfig, Precision, Schedule, TrainingConfig};
pub use cpu_attention::causal_attention_probabilities;
pub use cpu_matmul::CpuValue;
pub use device::{
    check_precision, free_memory, on_compute_thread, parse_device, peak_rss_mib,
    reuse_freed_host_memory, rss_mib,
};
pub use error::{Error, Result, Setting};
pub use fingerprint::{existing_files, fingerprint_files, FINGERPRINT_SCHEME};
pub use memory::{gib, MemoryEstimate};
pub use ops::{
    attention, attention_is_fused, attention_probs, dropout, frozen_linear, frozen_weight,
    lora_linear, DropoutRng, KeepMask, Precomputed, ScoreTerms,
};
pub use pair::{EncodedPair, ResponsePair};
pub use segments::{Segment, SegmentBudget};
pub use train::{
    accumulate_gradients, diverged, fit_fold, predict_logits, smoothed_cross_entropy, AdamW,
    EvalPoint, FoldModel, FoldResult, FoldRows, LossScaler,
};

pub use candle_core::Device;
