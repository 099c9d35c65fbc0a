use std::path::PathBuf;

/// The one error type of the `ensembles` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message and not chained, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// From the shared types: a stage file, folds, prediction files.
    #[error(transparent)]
    Core(#[from] ensemble_core::Error),
    /// A file that reads well but disagrees with the training data or another file.
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    /// Any error met while loading or checking one member of a blend. The inner error is
    /// part of the message rather than a `source`, so that `{:#}` does not print it twice.
    #[error("member {member}: {error}")]
    Member { member: String, error: Box<Error> },
    #[error("{0}")]
    Invalid(String),
    #[error("stacking: {0}")]
    Stacking(String),
    #[error("LightGBM: {0}")]
    LightGbm(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, cause }
    }

    /// Wraps an error met while handling blend member `member`.
    pub(crate) fn in_member<E: Into<Error>>(member: &str) -> impl FnOnce(E) -> Error + '_ {
        move |error| Error::Member {
            member: member.to_string(),
            error: Box::new(error.into()),
        }
    }
}
