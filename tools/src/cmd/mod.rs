//! One file per subcommand, plus the model loading they share.

pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod fetch_model;
pub mod flash;
pub mod flash_bench;
pub mod generate;
pub mod io_bench;
pub mod layout_bench;
pub mod perplexity;
pub mod profile_device;
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

/// The median of `values` (the mean of the middle two for an even count); NaN when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub path: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

static ACT_PRECISION: std::sync::OnceLock<ActPrecision> = std::sync::OnceLock::new();

/// Sets the activation precision every loaded model uses (the global `--act-precision`).
pub fn set_act_precision(p: ActPrecision) {
    let _ = ACT_PRECISION.set(p);
}

/// The activation precision set by the global `--act-precision`.
pub fn act_precision() -> ActPrecision {
    ACT_PRECISION.get().copied().unwrap_or_default()
}

/// Loads `-m/--model` (or the default model) with its tokenizer.
pub fn load_model(arg: Option<&Path>) -> anyhow::Result<Loaded> {
    let path = resolve_model(arg)?;
    let source = Source::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let tokenizer = source.tokenizer().with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let mut model = Model::from_source(&source).with_context(|| format!("loading model {}", path.display()))?;
    model.set_precision(act_precision());
    Ok(Loaded { path, model, tokenizer })
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

/// Writes `rows` as a CSV file with a header, atomically.
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    write_atomic(path, |w| {
        let mut c = csv::Writer::from_writer(w);
        for r in rows {
            c.serialize(r).map_err(std::io::Error::other)?;
        }
        c.flush()
    })
}
