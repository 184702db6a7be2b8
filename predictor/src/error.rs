//! The one error type of `predictor`. Variants name the file and say what is wrong with it.

use std::path::PathBuf;

/// Errors of the `predictor` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is malformed: wrong magic, truncated, sizes that do not add up, unparsable contents.
    #[error("{}: {what}", path.display())]
    Format { path: PathBuf, what: String },

    /// A stored checksum does not match the bytes it covers.
    #[error("{}: checksum mismatch in {section}: stored {stored:#010x}, computed {computed:#010x}", path.display())]
    Checksum { path: PathBuf, section: String, stored: u32, computed: u32 },

    /// The file is well formed but belongs to another model, or its shapes do not match what it is used with.
    #[error("{}: {what}", path.display())]
    Mismatch { path: PathBuf, what: String },

    /// An argument or configuration value is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// An error of the inference engine or model import.
    #[error(transparent)]
    Flash(#[from] spike_flash::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A malformed-file error.
    pub fn format(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Format { path: path.into(), what: what.into() }
    }

    /// A wrong-model or wrong-shape error.
    pub fn mismatch(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Mismatch { path: path.into(), what: what.into() }
    }
}
