//! Options shared by the commands that run a model from a flash layout (`--layout NAME.spike`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use spike_flash::engine::flash::FlashFfn;
use spike_flash::engine::model::Model;
use spike_flash::engine::sparse::{AllNeurons, NeuronSelector};
use spike_flash::io::{open_backend, BackendKind, IoConfig};
use spike_flash::layout::Layout;
use spike_flash::model::tokenizer::Tokenizer;

/// Flash mode: the FFN stays in a layout's `ffn.bin` and is read per token.
#[derive(clap::Args, Debug, Clone)]
pub struct FlashArgs {
    /// Run from this flash layout (made by `spike convert`): attention and embeddings in DRAM, FFN neurons read
    /// from flash per token.
    #[arg(long)]
    pub layout: Option<PathBuf>,
    /// I/O backend for flash reads: uring (io_uring, O_DIRECT), pool (pread threads, O_DIRECT), mmap (page
    /// cache).
    #[arg(long, default_value = "uring")]
    pub backend: BackendKind,
}

/// A layout opened for flash mode.
pub struct FlashModel {
    pub layout: Arc<Layout>,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl FlashModel {
    /// Opens the layout `dir` and loads its resident model and tokenizer.
    pub fn open(dir: &std::path::Path) -> anyhow::Result<FlashModel> {
        let layout = Arc::new(Layout::open(dir)?);
        let mut model =
            layout.load_model().with_context(|| format!("loading the resident model of {}", dir.display()))?;
        model.set_precision(super::act_precision());
        let tokenizer = layout.tokenizer().with_context(|| format!("reading the tokenizer of {}", dir.display()))?;
        Ok(FlashModel { layout, model, tokenizer })
    }

    /// A flash FFN reading this layout with `backend`, over the neurons `selector` picks (all of them when
    /// `None`).
    pub fn ffn(
        &self,
        backend: BackendKind,
        selector: Option<Box<dyn NeuronSelector + Send>>,
    ) -> anyhow::Result<FlashFfn> {
        let path = self.layout.ffn_path();
        let io = open_backend(backend, &path, &IoConfig::default())
            .with_context(|| format!("opening {} with the {backend} backend", path.display()))?;
        let selector = selector.unwrap_or_else(|| Box::new(AllNeurons { d_ffn: self.model.config().d_ffn }));
        Ok(FlashFfn::new(&self.model, self.layout.clone(), io, selector)?)
    }
}
