//! Folds, boosters, blending and metrics: everything that turns a feature matrix or member
//! predictions into probabilities for the three outcomes of a battle.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod blend;
pub mod cv;
pub mod error;
pub mod folds;
pub mod lgbm;
pub mod metrics;
pub mod outcome;
pub mod predictions;
pub mod stage_file;
pub mod tune;

pub use error::{Error, Result};
pub use folds::Folds;
pub use outcome::{Outcome, Probs, CLASS_COLUMNS};
