//! One file per subcommand, plus the model loading they share.

pub mod bench;
pub mod fetch_model;
pub mod generate;
pub mod io_bench;
pub mod perplexity;
pub mod profile_device;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use spike_flash::engine::llama::LlamaModel;
use spike_flash::model::fetch::resolve_model;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::tokenizer::Tokenizer;

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub path: PathBuf,
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
}

/// Loads `-m/--model` (or the default model) with its tokenizer.
pub fn load_model(arg: Option<&Path>) -> anyhow::Result<Loaded> {
    let path = resolve_model(arg)?;
    let file = Arc::new(GgufFile::open(&path).with_context(|| format!("opening model {}", path.display()))?);
    let tokenizer =
        Tokenizer::from_gguf(&file).with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let model = LlamaModel::from_gguf(file).with_context(|| format!("loading model {}", path.display()))?;
    Ok(Loaded { path, model, tokenizer })
}

/// Creates the parent folder of an output file.
pub fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary name in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    ensure_parent(path)?;
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("out")));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
