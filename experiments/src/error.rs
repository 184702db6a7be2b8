//! The one error type of `experiments`.

use std::path::PathBuf;

/// Errors of the `experiments` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Drawing or writing a chart failed.
    #[error("{}: chart: {what}", path.display())]
    Chart { path: PathBuf, what: String },

    /// No usable font file was found for chart text.
    #[error("no font for chart text: {0}")]
    Font(String),

    /// A setting of a harness is out of range or missing.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// An error of the inference engine, the layout or the read backends.
    #[error(transparent)]
    Flash(#[from] spike_flash::Error),

    /// An error of a trace, thresholds or predictor file.
    #[error(transparent)]
    Predictor(#[from] predictor::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
