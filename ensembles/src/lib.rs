//! The feature model and the blender: LightGBM boosters over feature matrices (CV, tuning) and
//! the blending of members' predictions into one submission. The shared types (outcomes,
//! folds, metrics, prediction files) are `ensemble_core`'s.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod blend;
pub mod cv;
pub mod error;
pub mod lgbm;
pub mod tune;

pub use error::{Error, Result};
