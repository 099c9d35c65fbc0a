use std::path::PathBuf;

/// The one error type of the `ensemble-core` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message and not chained, so `{:#}` prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// An I/O failure described by what was being done (`cannot create runs/x`).
    #[error("{doing}: {cause}")]
    Failed {
        doing: String,
        cause: std::io::Error,
    },
    /// A stage file (folds.csv, oof.csv, submission.csv …) that does not hold what it should.
    #[error("{path}, line {line}: {message}")]
    BadFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A file that reads well but disagrees with the training data or another file.
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, cause }
    }

    pub(crate) fn failed(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let doing = doing.into();
        move |cause| Error::Failed { doing, cause }
    }
}
