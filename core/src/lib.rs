//! The shared vocabulary of every member and stage: who won a battle ([`Outcome`]) and with
//! what probabilities ([`Probs`], swap averaging), the competition's metric, folds (stratified,
//! grouped, the inner-fold stopping rows), the one CSV codec of stage files
//! ([`stage_file`]), prediction files and the whole-folder run swap ([`RunFolder`]).
//!
//! It builds neither LightGBM nor candle: the feature model (`ensembles`), the neural members
//! and the binary all stand on it.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod folds;
pub mod metrics;
pub mod outcome;
pub mod predictions;
pub mod run_folder;
pub mod stage_file;

pub use error::{Error, Result};
pub use folds::{Folds, StoppingRows};
pub use outcome::{probs_from_logits, swap_average, Outcome, Probs, CLASS_COLUMNS};
pub use predictions::Predictions;
pub use run_folder::RunFolder;
