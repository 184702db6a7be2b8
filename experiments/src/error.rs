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

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A sweep spec is not valid TOML or lacks a section.
    #[error("{}: {what}", path.display())]
    SpecSyntax { path: PathBuf, what: String },

    /// A key of a sweep spec has a value that cannot be used.
    #[error("{}: `{key}`: {what}", path.display())]
    Spec { path: PathBuf, key: String, what: String },

    /// A CSV file could not be read.
    #[error("{}: {what}", path.display())]
    Csv { path: PathBuf, what: String },

    /// A JSON file could not be read.
    #[error("{}: {what}", path.display())]
    Json { path: PathBuf, what: String },

    /// A point of a sweep failed; the points before it are kept, and a rerun resumes at it.
    #[error("sweep point {index} ({settings}): {source}")]
    Point {
        index: usize,
        settings: String,
        #[source]
        source: Box<Error>,
    },

    /// A folder given to a merge holds no sweep output.
    #[error("{}: not a sweep output (no sweep.json and raw.csv)", dir.display())]
    NotASweep { dir: PathBuf },

    /// Two sweep outputs come from different specs.
    #[error(
        "{}: a sweep of another spec than {} (spec sha256 {found}, expected {expected})",
        dir.display(),
        other.display()
    )]
    SpecMismatch { dir: PathBuf, other: PathBuf, found: String, expected: String },

    /// A sweep folder holds another shard than the one asked for.
    #[error("{}: holds shard {found} of this sweep, not {wanted}; give each shard its own folder", dir.display())]
    ShardConflict { dir: PathBuf, found: String, wanted: String },

    /// An error of the inference engine, the layout or the read backends.
    #[error(transparent)]
    Flash(#[from] spike_flash::Error),

    /// An error of a trace, thresholds or predictor file.
    #[error(transparent)]
    Predictor(#[from] predictor::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
