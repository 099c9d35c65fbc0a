use std::path::PathBuf;

/// The one error type of the `llm` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message and not chained, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A model folder that lacks a file the member needs.
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    /// A model file that exists but cannot be used: the file and what is wrong.
    #[error("{path}: {message}")]
    BadModelFile { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// From the shared training loop and prediction (`neural::fit_fold`, `predict_logits`).
    #[error(transparent)]
    Training(#[from] neural::Error),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |cause| Error::Io {
            path: path.to_owned(),
            cause,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
