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
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
