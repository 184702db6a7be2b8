//! The one error type of `spike-flash`. Variants carry the file and the place in it, so a message names what
//! is wrong and where without the caller adding context.

use std::path::PathBuf;

/// Errors of the `spike-flash` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The GGUF file is malformed at a byte offset.
    #[error("{}: malformed GGUF at byte {offset}: {what}", path.display())]
    Gguf { path: PathBuf, offset: u64, what: String },

    /// A JSON file (config.json, an index, a tokenizer) does not parse.
    #[error("{}: invalid JSON at line {line}, column {column}: {what}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, what: String },

    /// A safetensors file or a sharded checkpoint's index is malformed.
    #[error("{}: malformed safetensors checkpoint: {what}", path.display())]
    Safetensors { path: PathBuf, what: String },

    /// A metadata key the model needs is absent.
    #[error("{}: missing required metadata key `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },

    /// A metadata key is present with the wrong type or an unusable value.
    #[error("{}: metadata key `{key}`: expected {expected}, found {found}", path.display())]
    BadKey { path: PathBuf, key: String, expected: String, found: String },

    /// A tensor is missing, has the wrong shape or type, or its bytes do not fit.
    #[error("{}: tensor `{name}`: {what}", path.display())]
    Tensor { path: PathBuf, name: String, what: String },

    /// The file is well formed but uses something this toolkit does not implement.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },

    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Fetching the default model failed.
    #[error("fetching the default model: {0}")]
    Fetch(String),

    /// A read of `length` bytes at `offset` failed, came back short, or lies past the end of the file.
    #[error("{}: read of {length} bytes at offset {offset}: {source}", path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        length: u64,
        #[source]
        source: std::io::Error,
    },

    /// A flash layout (`NAME.spike/`) is malformed, incomplete or does not match what it is used with.
    #[error("{}: {what}", path.display())]
    Layout { path: PathBuf, what: String },

    /// A file is shorter (or longer) than what describes it says: `len` bytes where `expected` were due.
    #[error("{}: is {len} bytes, {what} says {expected}: truncated, or from another conversion", path.display())]
    Length { path: PathBuf, len: u64, expected: u64, what: String },

    /// A stored checksum does not match the bytes it covers; `place` says which bytes.
    #[error("{}: {place}: crc32c {computed:08x}, the manifest says {stored:08x}: the file is damaged", path.display())]
    Checksum { path: PathBuf, place: String, stored: u32, computed: u32 },

    /// Records of `ffn.bin` do not match their crc32c in the layout's checksum table: `count` records of layer
    /// `layer`'s section `section` checked together (one batch of reads), at positions `first..=last` in the
    /// file; the first of them holds neuron `neuron` and lies at byte `offset`, `len` bytes.
    #[error(
        "{}: layer {layer} section `{section}`: {}, at byte offset {offset} ({len} bytes): crc32c {computed:08x}, \
         the checksum table says {stored:08x}: the file is damaged (`spike verify` lists every damaged record)",
        path.display(),
        records_failing(*count, *first, *last, *neuron)
    )]
    RecordChecksum {
        path: PathBuf,
        layer: usize,
        section: String,
        count: usize,
        first: u32,
        last: u32,
        neuron: u32,
        offset: u64,
        len: u64,
        stored: u32,
        computed: u32,
    },

    /// A DRAM budget of `budget` bytes cannot hold the `needed` bytes of what it must; `what` says what and by
    /// how much.
    #[error("the DRAM budget of {budget} bytes falls short {what}")]
    Budget { budget: u64, needed: u64, what: String },

    /// Something failed while computing a layer (a flash read, say): the layer, then the cause.
    #[error("layer {layer}: {source}")]
    InLayer { layer: usize, source: Box<Error> },

    /// Another writer (process or thread) holds the lock of the output `path`: writing it too would replace
    /// that writer's work, or have it replace ours.
    #[error("{}: another process is writing this output now (it holds {}); wait for it to finish or write elsewhere", path.display(), lock.display())]
    OutputBusy { path: PathBuf, lock: PathBuf },

    /// The output exists and replacing it was not asked for.
    #[error("{}: already exists", path.display())]
    OutputExists { path: PathBuf },

    /// A planting plan (`experiments/plans/*.toml`) does not parse, or its parameter `key` is out of range.
    #[error("{}: planting plan: {key}: {what}", path.display())]
    Plan { path: PathBuf, key: String, what: String },

    /// An argument or configuration value is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Which records [`Error::RecordChecksum`] is about.
fn records_failing(count: usize, first: u32, last: u32, neuron: u32) -> String {
    if count == 1 {
        format!("the record at position {first} (neuron {neuron})")
    } else {
        format!("{count} records at positions {first}..={last} fail their crc32c; the first, position {first} (neuron {neuron})")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Wraps a `serde_json` parse error with the file it happened in.
    pub fn json(path: impl Into<PathBuf>, e: &serde_json::Error) -> Self {
        // serde_json's message ends with " at line L column C", which the variant carries as fields.
        let msg = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let what = msg.strip_suffix(&suffix).unwrap_or(&msg).to_string();
        Error::Json { path: path.into(), line: e.line(), column: e.column(), what }
    }
}
