//! Spike's flash-side library: model import, the flash layout, the I/O engine, the neuron cache, the cost model
//! and the inference engine. `docs/architecture.md` draws which module uses which; in short, from the bottom:
//!
//! - [`io`]: read backends behind one trait (io_uring and a pread pool with O_DIRECT, mmap), read planning,
//!   aligned buffers, atomic writes.
//! - [`cache`]: per-layer neuron caches, their policies, the DRAM budget.
//! - [`model`]: model files (GGUF, safetensors checkpoints), quant blocks, tokenizer, synthetic models, and the
//!   weight types the rest computes on ([`model::weights`]).
//! - [`layout`]: the on-disk flash layout (`docs/format.md`): writer, reader, record spans.
//! - [`cost`]: the I/O cost model and the device profile it reads.
//! - [`engine`]: kernels, the forward pass, the dense, sparse and flash FFN steps, and the flash session that
//!   assembles a run from one configuration ([`FlashConfig`], [`FlashSession`]).
//!
//! The types most callers start from are re-exported here.

pub mod cache;
pub mod cost;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod io;
pub mod layout;
pub mod model;

pub use cache::{Budget, PolicySpec};
pub use cost::{CostModel, DeviceProfile};
pub use engine::flash::{CacheChoice, Dram, FlashConfig, FlashFfn, FlashSession};
pub use engine::input::ActPrecision;
pub use engine::model::{Model, State};
pub use error::{Error, Result};
pub use io::{BackendKind, IoConfig};
pub use layout::Layout;
pub use model::config::ModelConfig;
pub use model::weights::ModelParts;
