use std::path::PathBuf;

/// The one error type of the `deberta` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message and not chained, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A model folder that lacks a file the member needs.
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    /// A model or tokenizer file that exists but cannot be used.
    #[error("{path}: {message}")]
    BadModelFile { path: PathBuf, message: String },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// From the shared training loop, prediction and settings (`neural`).
    #[error(transparent)]
    Training(#[from] neural::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, cause }
    }

    pub(crate) fn bad_model_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::BadModelFile {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// How the shared loop and the fold-run protocol carry this member's errors: the loop's own
/// come back as they were, the member's are boxed whole.
impl From<Error> for neural::Error {
    fn from(error: Error) -> neural::Error {
        match error {
            Error::Training(error) => error,
            Error::Candle(error) => neural::Error::Candle(error),
            other => neural::Error::Member(Box::new(other)),
        }
    }
}
