//! A flash run assembled from one configuration: the layout opened, its resident model loaded at the chosen
//! activation precision, the read backend opened with its settings, the cache policy resolved (`hybrid`: the
//! hot set as large as the DRAM budget allows), the caches sized from the budget with everything else it counts
//! (resident tensors, the selector, the read buffers), and the device profile loaded for the cost model. What
//! `spike generate|perplexity|bench --layout` run, and what a sweep builds in-process.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::resident_reads::ResidentReads;
use super::{FlashFfn, FlashOptions};
use crate::cache::{slots_per_layer, Budget, LayerCache, PolicySpec};
use crate::cost::CostModel;
use crate::engine::input::ActPrecision;
use crate::engine::model::Model;
use crate::engine::sparse::{AllNeurons, NeuronSelector};
use crate::io::{open_backend, trim_heap, BackendKind, IoConfig};
use crate::layout::{Layout, Loaded, TensorSpan, RESIDENT_FILE};
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Which neurons stay in DRAM between tokens: a policy of [`crate::cache`], or `hybrid`, the paper's hybrid
/// row: the hottest neurons the DRAM budget holds stay resident (`hot:F` with the largest F that fits beside
/// everything else the budget counts), the rest is read every token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheChoice {
    Policy(PolicySpec),
    Hybrid,
}

impl Default for CacheChoice {
    fn default() -> Self {
        CacheChoice::Policy(PolicySpec::None)
    }
}

impl FromStr for CacheChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<CacheChoice> {
        match s.trim() {
            "hybrid" => Ok(CacheChoice::Hybrid),
            other => other.parse().map(CacheChoice::Policy),
        }
    }
}

impl fmt::Display for CacheChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheChoice::Policy(p) => p.fmt(f),
            CacheChoice::Hybrid => f.write_str("hybrid"),
        }
    }
}

/// Everything a flash run is made of but the neuron selector. Build with [`FlashConfig::new`] and struct
/// update; [`FlashSession::open`] checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashConfig {
    /// The layout directory (`NAME.spike`, made by `spike convert`).
    pub layout: PathBuf,
    /// Read backend for `ffn.bin`. Default io_uring with O_DIRECT.
    pub backend: BackendKind,
    /// How reads are planned and issued. Default [`IoConfig::default`].
    pub io: IoConfig,
    /// What stays in DRAM between tokens. Default: nothing (every needed neuron read every token).
    pub cache: CacheChoice,
    /// The model's DRAM budget (resident tensors, selector, caches, read buffers); `None`: no limit.
    pub budget: Option<Budget>,
    /// Neurons by descending activation frequency, per layer: the pinned set of `hot:F` and `hybrid`. Default
    /// `None`: the lowest-numbered neurons are pinned (with a note on stderr).
    pub hot: Option<Vec<Vec<u32>>>,
    /// Compute over every cached neuron, not only the selected ones.
    pub compute_all_cached: bool,
    /// Read the next layer's predicted neurons while a layer computes.
    pub overlap: bool,
    /// A device profile (`device-profile.json`) for the cost model's predicted I/O time per step.
    pub profile: Option<PathBuf>,
    /// How activations are quantized for block-quantized weights. Default [`ActPrecision::default`].
    pub precision: ActPrecision,
    /// Check every record read from `ffn.bin` against the layout's checksum table as it arrives. Default true;
    /// off only to measure what the check costs (a damaged record then goes unnoticed).
    pub verify_reads: bool,
    /// Also read every tensor of `resident.bin` from flash every token, each layer's with that layer (checked
    /// against the manifest's crc32c, timed as I/O), as the paper's naive row reads every weight. The compute
    /// keeps using the copy loaded at start, which holds the same bytes. Default false.
    pub read_resident: bool,
}

impl FlashConfig {
    /// The defaults for the layout at `layout`.
    pub fn new(layout: impl Into<PathBuf>) -> FlashConfig {
        FlashConfig {
            layout: layout.into(),
            backend: BackendKind::Uring,
            io: IoConfig::default(),
            cache: CacheChoice::default(),
            budget: None,
            hot: None,
            compute_all_cached: false,
            overlap: false,
            profile: None,
            precision: ActPrecision::default(),
            verify_reads: true,
            read_resident: false,
        }
    }

    /// The configuration with its read settings checked.
    pub fn validated(mut self) -> Result<FlashConfig> {
        self.io = self.io.validated()?;
        Ok(self)
    }
}

/// Where the model's DRAM goes in flash mode, bytes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Dram {
    /// `resident.bin` (read into memory) and the layout's checksum table.
    pub resident: u64,
    pub selector: u64,
    pub caches: u64,
    /// Read buffers: the staging buffer and the backend's scratch, and with overlap the prefetch buffer.
    pub staging: u64,
    pub total: u64,
    pub budget: Option<u64>,
    /// The cache policy in force (`hybrid` resolved to its `hot:F`).
    pub policy: String,
    pub slots_per_layer: usize,
}

impl fmt::Display for Dram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "model DRAM {:.1} MiB = resident {:.1} + selector {:.1} + caches {:.1} ({}, {} rows per layer) + read \
             buffers {:.1}",
            mib(self.total),
            mib(self.resident),
            mib(self.selector),
            mib(self.caches),
            self.policy,
            self.slots_per_layer,
            mib(self.staging)
        )?;
        if let Some(b) = self.budget {
            write!(f, ", budget {:.1} MiB", mib(b))?;
        }
        Ok(())
    }
}

/// A layout opened for flash mode: its resident model loaded, the configuration checked.
pub struct FlashSession {
    pub layout: Arc<Layout>,
    pub model: Model,
    /// The tokenizer, when asked for at opening, until a caller takes it.
    pub tokenizer: Option<Tokenizer>,
    config: FlashConfig,
    /// Where `resident.bin`'s tensors lie, for [`FlashConfig::read_resident`].
    spans: Vec<TensorSpan>,
}

impl FlashSession {
    /// Opens `config.layout` with every check of a valid layout ([`Layout::load`], the checks `spike verify`
    /// makes but reading every record), loads its resident model, keeps its tokenizer when `tokenizer` (it
    /// takes about 13 MiB of heap; it is built, and so checked, either way) and checks the configuration.
    pub fn open(config: FlashConfig, tokenizer: bool) -> Result<FlashSession> {
        let config = config.validated()?;
        let Loaded { layout, mut resident } = Layout::load(&config.layout)?;
        let tokenizer = match tokenizer {
            true => Some(resident.take_tokenizer(&layout)?),
            false => None,
        };
        let layout = Arc::new(layout);
        let spans = std::mem::take(&mut resident.spans);
        let mut model = Model::new(resident.parts)?;
        model.set_precision(config.precision);
        // Building the tokenizer leaves freed heap behind; under a memory cgroup it would count.
        trim_heap();
        Ok(FlashSession { layout, model, tokenizer, config, spans })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FlashConfig {
        &self.config
    }

    /// A flash FFN reading this layout as the configuration says, over the neurons `selector` picks (all of
    /// them when `None`; its second part is its DRAM bytes), with its caches sized from the budget; and where
    /// the model's DRAM goes.
    pub fn ffn(&self, selector: Option<(Box<dyn NeuronSelector + Send>, u64)>) -> Result<(FlashFfn, Dram)> {
        let c = &self.config;
        let model = &self.model;
        let path = self.layout.ffn_path();
        let io = open_backend(c.backend, &path, &c.io)?;
        let (selector, selector_bytes) =
            selector.unwrap_or_else(|| (Box::new(AllNeurons { d_ffn: model.config().d_ffn }), 0));
        let mut ffn = FlashFfn::new(model, self.layout.clone(), io, selector)?;
        ffn.set_options(FlashOptions {
            compute_all_cached: c.compute_all_cached,
            overlap: c.overlap,
            verify_reads: c.verify_reads,
        })?;
        if let Some(p) = &c.profile {
            ffn.set_cost_model(CostModel::load(p, &c.io)?, c.io.queue_depth);
        }
        let m = self.layout.manifest();
        if c.read_resident {
            let path = self.layout.dir().join(RESIDENT_FILE);
            let reads = ResidentReads::open(c.backend, &path, &c.io, &self.spans, m.layers.len())?;
            ffn.set_resident_reads(Some(reads));
        }
        let (layers, f, payload) = (m.layers.len(), m.model.d_ffn, self.layout.payload_bytes());
        let resident = m.resident.len + self.layout.checksum_bytes();
        let mut dram = Dram { resident, selector: selector_bytes, staging: ffn.dram_bytes(), ..Dram::default() };
        let fixed = dram.resident + dram.selector + dram.staging;
        let budget = c.budget.map(|b| (b, b.resolve(m.source.len)));
        dram.budget = budget.map(|(_, bytes)| bytes);
        let in_budget = |spec: &PolicySpec, bytes: u64| slots_per_layer(bytes, fixed, spec, layers, f, payload);
        let spec = match (c.cache, budget) {
            (CacheChoice::Policy(p), _) => p,
            (CacheChoice::Hybrid, None) => PolicySpec::Hot { fraction: 1.0, window: None },
            // The pinned set's rows and maps cost what an lru cache of that many rows costs, or less; `- 0.5`
            // makes `pinned_count` round back to exactly those rows.
            (CacheChoice::Hybrid, Some((_, bytes))) => {
                let rows = in_budget(&PolicySpec::Lru, bytes)?;
                PolicySpec::Hot { fraction: (rows as f64 - 0.5).max(0.0) / f as f64, window: None }
            }
        };
        let slots = match budget {
            None => spec.max_slots(f),
            Some((_, bytes)) => in_budget(&spec, bytes)?,
        };
        dram.policy = spec.to_string();
        dram.slots_per_layer = slots;
        if spec != PolicySpec::None {
            let lowest;
            let hot = match &c.hot {
                Some(h) => Some(h),
                None if spec.needs_hot_list() => {
                    eprintln!(
                        "note: cache policy `{spec}` without a hot list pins the lowest-numbered neurons, not the \
                         most active"
                    );
                    lowest = vec![(0..f as u32).collect::<Vec<u32>>(); layers];
                    Some(&lowest)
                }
                None => None,
            };
            if let Some(h) = hot {
                if h.len() != layers {
                    return Err(Error::Invalid(format!("the hot list has {} layers, the model has {layers}", h.len())));
                }
            }
            let caches = (0..layers)
                .map(|l| LayerCache::new(spec, f, payload, slots, hot.map(|h| &h[l][..])))
                .collect::<Result<Vec<_>>>()?;
            ffn.set_caches(caches)?;
        }
        dram.caches = ffn.dram_bytes() - dram.staging;
        dram.total = fixed + dram.caches;
        // Parsing the hot list and the predictor left freed heap behind.
        trim_heap();
        Ok((ffn, dram))
    }
}
