use std::path::PathBuf;

/// The one error type of the `neural` crate.
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
    /// A model folder that lacks a file a member needs.
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    /// A model or tokenizer file that exists but cannot be used.
    #[error("{path}: {message}")]
    BadModelFile { path: PathBuf, message: String },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// From the shared types: folds, stage files, prediction files.
    #[error(transparent)]
    Core(#[from] ensemble_core::Error),
    /// A member's own error (its model, tokenizer or files), met in the shared loop or the
    /// fold-run protocol.
    #[error(transparent)]
    Member(Box<dyn std::error::Error + Send + Sync>),
    /// Training diverged: the loss or the gradients stopped being finite. `settings` are the
    /// config keys to lower (none when the model diverged before any update).
    #[error("{message}{}", lower(settings))]
    Diverged {
        message: String,
        settings: Vec<Setting>,
    },
}

/// A config key an error names, with its value and, once the caller has said, where it came
/// from (the config file or a default).
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: &'static str,
    pub value: f64,
    pub source: Option<String>,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} = {:e}", self.key, self.value)?;
        match &self.source {
            Some(source) => write!(f, " ({source})"),
            None => Ok(()),
        }
    }
}

fn lower(settings: &[Setting]) -> String {
    if settings.is_empty() {
        return String::new();
    }
    let named: Vec<String> = settings.iter().map(Setting::to_string).collect();
    format!("; lower {}", named.join(" or "))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { path, cause }
    }

    /// Says where the settings a [`Error::Diverged`] names came from, as `source(key)`
    /// describes it; other errors pass unchanged. The library knows the values, the caller
    /// which file or default set them.
    pub fn with_setting_sources(self, source: impl Fn(&str) -> String) -> Error {
        match self {
            Error::Diverged { message, settings } => Error::Diverged {
                message,
                settings: settings
                    .into_iter()
                    .map(|s| Setting {
                        source: Some(source(s.key)),
                        ..s
                    })
                    .collect(),
            },
            other => other,
        }
    }

    pub fn bad_model_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::BadModelFile {
            path: path.into(),
            message: message.into(),
        }
    }
}
