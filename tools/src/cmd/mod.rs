//! One file per subcommand, plus the model loading they share.

pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod fetch_model;
pub mod flash;
pub mod generate;
pub mod io_bench;
pub mod layout_bench;
pub mod perplexity;
pub mod profile_device;
pub mod report;
pub mod reproduce;
pub mod sweep;
pub mod synth;
pub mod trace;
pub mod trace_stats;
pub mod train_predictor;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::Context;
use spike_flash::engine::input::ActPrecision;
use spike_flash::engine::model::Model;
use spike_flash::model::bind::Source;
use spike_flash::model::fetch::resolve_model;
use spike_flash::model::tokenizer::Tokenizer;

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub path: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

/// Loads `-m/--model` (or the default model) with its tokenizer, at activation precision `precision`.
pub fn load_model(arg: Option<&Path>, precision: ActPrecision) -> anyhow::Result<Loaded> {
    let path = resolve_model(arg)?;
    let source = Source::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let tokenizer = source.tokenizer().with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let mut model = Model::from_source(&source).with_context(|| format!("loading model {}", path.display()))?;
    model.set_precision(precision);
    Ok(Loaded { path, model, tokenizer })
}

/// Checks that `--valid-fraction` (named `flag`) is a fraction in [0, 1).
pub fn check_fraction(value: f64, flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(value.is_finite() && (0.0..1.0).contains(&value), "{flag} {value} must be in [0, 1)");
    Ok(())
}

/// Says on stderr when `trace` is one document, whose train/validation split is then by segment.
pub fn note_split(trace: &predictor::trace::Trace) {
    if trace.meta().splits_by_segment() {
        eprintln!(
            "note: {} holds one document: train and validation are split by segment ({} of them), so both come \
             from the same text",
            trace.path().display(),
            trace.meta().segments.len()
        );
    }
}

/// Creates the parent folder of an output file.
pub fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `path` atomically (see `spike_flash::io::write_atomic`), creating its folder first.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    ensure_parent(path)?;
    spike_flash::io::write_atomic(path, fill).with_context(|| format!("writing {}", path.display()))
}

/// Writes `rows` as a CSV file with a header, atomically (see `experiments::summary::write_csv`).
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    experiments::summary::write_csv(path, rows).with_context(|| format!("writing {}", path.display()))
}
