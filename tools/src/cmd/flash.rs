//! Options shared by the commands that run a model from a flash layout (`--layout NAME.spike`): the I/O
//! backend, the neuron cache and its DRAM budget, the neuron selector, the cost model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use spike_flash::cache::{slots_per_layer, Budget, LayerCache, PolicySpec};
use spike_flash::cost::CostModel;
use spike_flash::engine::flash::{FlashFfn, FlashOptions};
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
    /// Neuron cache policy: none (read every needed neuron every token), all, window:K, lru, lfu, hot:F,
    /// hot:F+window:K, or hybrid (the hot set as large as --budget allows, the rest read every token).
    #[arg(long, default_value = "none")]
    pub cache: CacheArg,
    /// DRAM budget for the model's memory (resident tensors, predictor, caches, staging buffer): a share of
    /// the model file (65%) or a size (64MiB). The caches get what the rest leaves. Default: no limit.
    #[arg(long)]
    pub budget: Option<Budget>,
    /// Neurons by descending activation frequency, per layer (JSON array of arrays, or under "order"; e.g.
    /// `hot.json` from `spike trace-stats`): the pinned set of `hot:F`.
    #[arg(long)]
    pub hot: Option<PathBuf>,
    /// Compute over every cached neuron, not only the selected ones.
    #[arg(long)]
    pub compute_all_cached: bool,
    /// While a layer computes, read the next layer's neurons as predicted from this layer's input (second
    /// backend and thread); the next layer reads only what that missed.
    #[arg(long)]
    pub overlap: bool,
    /// Device profile (from `spike profile-device`) for the cost model's predicted I/O time per step.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Select the neurons with this predictor (from `spike train-predictor`) instead of reading them all.
    #[arg(long)]
    pub predictor: Option<PathBuf>,
    /// Select the truly active neurons (magnitude above the per-layer thresholds of this file, from `spike
    /// calibrate`): the quality bound of a perfect predictor. The oracle computes every neuron from the
    /// source model (memory-mapped), outside the DRAM budget: for quality, not speed.
    #[arg(long, conflicts_with = "predictor")]
    pub oracle: Option<PathBuf>,
    #[command(flatten)]
    pub io: IoArgs,
}

/// How flash reads are planned and issued (the read backends' [`IoConfig`]); the defaults are IoConfig's.
#[derive(clap::Args, Debug, Clone)]
pub struct IoArgs {
    /// Alignment of device reads (offset, length, memory), a power of two of at least 512: 512 reads whole
    /// sectors of a 512-byte logical block device instead of whole 4 KiB pages (see `lsblk -o LOG-SEC`).
    #[arg(long, default_value = "4096", value_parser = super::profile_device::parse_size)]
    pub io_align: u64,
    /// Largest gap between two records' aligned spans that are still merged into one read (K, M suffixes): the
    /// gap is read and thrown away.
    #[arg(long, default_value = "0", value_parser = super::profile_device::parse_size)]
    pub max_gap: u64,
    /// Largest device read a merge may produce (K, M suffixes).
    #[arg(long, default_value = "1M", value_parser = super::profile_device::parse_size)]
    pub max_merge: u64,
    /// Reads in flight: io_uring queue depth, pool threads (the cost model predicts at this depth).
    #[arg(long, default_value_t = 32)]
    pub queue_depth: usize,
}

impl IoArgs {
    /// The backends' settings, checked: an out-of-range value is named.
    pub fn config(&self) -> anyhow::Result<IoConfig> {
        let size = |v: u64, what: &str| usize::try_from(v).with_context(|| format!("--{what} {v} is too large"));
        let cfg = IoConfig {
            align: size(self.io_align, "io-align")?,
            max_gap: size(self.max_gap, "max-gap")?,
            max_merge: size(self.max_merge, "max-merge")?,
            queue_depth: self.queue_depth,
            threads: self.queue_depth,
            ..IoConfig::default()
        };
        Ok(cfg.validated()?)
    }
}

/// `--cache`: a policy of [`spike_flash::cache`], or `hybrid`, the paper's hybrid row: the hottest neurons the
/// DRAM budget holds stay resident (`hot:F` with the largest F that fits beside everything else the budget
/// counts), the rest is read every token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheArg {
    Policy(PolicySpec),
    Hybrid,
}

impl std::str::FromStr for CacheArg {
    type Err = spike_flash::Error;

    fn from_str(s: &str) -> spike_flash::Result<CacheArg> {
        match s.trim() {
            "hybrid" => Ok(CacheArg::Hybrid),
            other => other.parse().map(CacheArg::Policy),
        }
    }
}

impl std::fmt::Display for CacheArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheArg::Policy(p) => p.fmt(f),
            CacheArg::Hybrid => f.write_str("hybrid"),
        }
    }
}

/// A layout opened for flash mode.
pub struct FlashModel {
    pub layout: Arc<Layout>,
    /// The tokenizer, until a caller takes it.
    pub tokenizer: Option<Tokenizer>,
}

/// Where the model's DRAM goes in flash mode, bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Dram {
    pub resident: u64,
    pub selector: u64,
    pub caches: u64,
    /// Read buffers: the staging buffer, and with --overlap the prefetch buffer (a layer each).
    pub staging: u64,
    pub total: u64,
    pub budget: Option<u64>,
    /// The cache policy in force (`hybrid` resolved to its `hot:F`).
    pub policy: String,
    pub slots_per_layer: usize,
}

impl std::fmt::Display for Dram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Reads a per-layer list of neuron ids: `[[...], ...]`, `{"order": [[...], ...]}`, or a hot-neuron file of
/// `spike trace-stats` (`{"layers": [{"neurons": [...]}, ...]}`).
pub fn read_neuron_lists(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let v = match (v.get("order"), v.get("layers")) {
        (Some(o), _) => o.clone(),
        (None, Some(serde_json::Value::Array(layers))) => {
            serde_json::Value::Array(layers.iter().map(|l| l.get("neurons").cloned().unwrap_or_default()).collect())
        }
        _ => v,
    };
    serde_json::from_value(v)
        .with_context(|| format!("{}: expected an array of per-layer neuron id arrays", path.display()))
}

impl FlashModel {
    /// An oracle over the layout's source model with the per-layer thresholds in `path` (from `spike
    /// calibrate`, checked against the layout's model).
    pub fn oracle(&self, path: &Path) -> anyhow::Result<Box<dyn NeuronSelector + Send>> {
        let m = self.layout.manifest();
        let t = predictor::calibrate::Thresholds::load(path)?;
        t.check_model(path, &predictor::ModelIdentity::with_sha(m.source.sha256.clone(), &m.model))?;
        let src = PathBuf::from(&m.source.path);
        let source = spike_flash::model::bind::Source::open(&src)
            .with_context(|| format!("the oracle needs the layout's source model {}", src.display()))?;
        let dense = Model::from_source(&source)?;
        self.layout.check_model(dense.config(), None)?;
        let rows = spike_flash::engine::sparse::all_rows(&dense)?;
        Ok(Box::new(spike_flash::engine::sparse::Oracle::new(&dense, rows, t.thresholds)?))
    }

    /// The predictor at `path`, checked against this layout's model: a selector and its DRAM bytes.
    pub fn predictor(&self, path: &Path) -> anyhow::Result<(Box<dyn NeuronSelector + Send>, u64)> {
        let p = predictor::file::read(path).with_context(|| format!("reading the predictor {}", path.display()))?;
        let m = self.layout.manifest();
        let id = predictor::ModelIdentity::with_sha(m.source.sha256.clone(), &m.model);
        p.check_model(path, &id)?;
        let bytes = p.dram_bytes() as u64;
        Ok((Box::new(p), bytes))
    }

    /// Opens the layout `dir` and loads its resident model and tokenizer.
    pub fn open(dir: &Path) -> anyhow::Result<(FlashModel, Model)> {
        Self::open_with(dir, true)
    }

    /// Opens the layout `dir` and loads its resident model, and its tokenizer when `tokenizer` (it takes
    /// about 13 MiB of heap).
    pub fn open_with(dir: &Path, tokenizer: bool) -> anyhow::Result<(FlashModel, Model)> {
        let layout = Arc::new(Layout::open(dir)?);
        let tokenizer = match tokenizer {
            true => Some(layout.tokenizer().with_context(|| format!("reading the tokenizer of {}", dir.display()))?),
            false => None,
        };
        let mut model =
            layout.load_model().with_context(|| format!("loading the resident model of {}", dir.display()))?;
        model.set_precision(super::act_precision());
        // Building the tokenizer leaves freed heap behind; under a memory cgroup it would count.
        spike_flash::io::trim_heap();
        Ok((FlashModel { layout, tokenizer }, model))
    }

    /// A flash FFN reading this layout as `args` say, over the neurons `selector` picks (all of them when
    /// `None`; `selector_bytes` is its DRAM), with its caches sized from the budget. Prints the DRAM split.
    pub fn ffn(
        &self,
        model: &Model,
        args: &FlashArgs,
        selector: Option<(Box<dyn NeuronSelector + Send>, u64)>,
    ) -> anyhow::Result<(FlashFfn, Dram)> {
        let path = self.layout.ffn_path();
        let backend = args.backend;
        let cfg = args.io.config()?;
        let io = open_backend(backend, &path, &cfg)
            .with_context(|| format!("opening {} with the {backend} backend", path.display()))?;
        let selector = match (selector, &args.predictor, &args.oracle) {
            (Some(s), _, _) => Some(s),
            (None, Some(p), _) => Some(self.predictor(p)?),
            (None, None, Some(t)) => Some((self.oracle(t)?, 0)),
            (None, None, None) => None,
        };
        let (selector, selector_bytes) =
            selector.unwrap_or_else(|| (Box::new(AllNeurons { d_ffn: model.config().d_ffn }), 0));
        let mut ffn = FlashFfn::new(model, self.layout.clone(), io, selector)?;
        ffn.set_options(FlashOptions { compute_all_cached: args.compute_all_cached, overlap: args.overlap })?;
        if let Some(p) = &args.profile {
            let cost =
                CostModel::load(p, &cfg).with_context(|| format!("loading the device profile {}", p.display()))?;
            ffn.set_cost_model(cost, cfg.queue_depth);
        }
        let m = self.layout.manifest();
        let (layers, f, payload) = (m.layers.len(), m.model.d_ffn, self.layout.payload_bytes());
        let mut dram =
            Dram { resident: m.resident.len, selector: selector_bytes, staging: ffn.dram_bytes(), ..Dram::default() };
        let fixed = dram.resident + dram.selector + dram.staging;
        let budget = args.budget.map(|b| (b, b.resolve(m.source.len)));
        dram.budget = budget.map(|(_, bytes)| bytes);
        let in_budget = |spec: &PolicySpec, bytes: u64, b: Budget| {
            slots_per_layer(bytes, fixed, spec, layers, f, payload)
                .with_context(|| format!("DRAM budget {b} of the {}-byte model file", m.source.len))
        };
        let spec = match (args.cache, budget) {
            (CacheArg::Policy(p), _) => p,
            (CacheArg::Hybrid, None) => PolicySpec::Hot { fraction: 1.0, window: None },
            // The pinned set's rows and maps cost what an lru cache of that many rows costs, or less; `- 0.5`
            // makes `pinned_count` round back to exactly those rows.
            (CacheArg::Hybrid, Some((b, bytes))) => {
                let rows = in_budget(&PolicySpec::Lru, bytes, b)?;
                PolicySpec::Hot { fraction: (rows as f64 - 0.5).max(0.0) / f as f64, window: None }
            }
        };
        let slots = match budget {
            None => spec.max_slots(f),
            Some((b, bytes)) => in_budget(&spec, bytes, b)?,
        };
        dram.policy = spec.to_string();
        dram.slots_per_layer = slots;
        if spec != PolicySpec::None {
            let hot = match &args.hot {
                Some(p) => Some(read_neuron_lists(p)?),
                None if spec.needs_hot_list() => {
                    eprintln!(
                        "note: cache policy `{spec}` without --hot pins the lowest-numbered neurons, not the most active"
                    );
                    Some(vec![(0..f as u32).collect(); layers])
                }
                None => None,
            };
            if let Some(h) = &hot {
                anyhow::ensure!(h.len() == layers, "--hot lists {} layers, the model has {layers}", h.len());
            }
            let caches = (0..layers)
                .map(|l| LayerCache::new(spec, f, payload, slots, hot.as_ref().map(|h| &h[l][..])))
                .collect::<spike_flash::Result<Vec<_>>>()?;
            ffn.set_caches(caches)?;
        }
        dram.caches = ffn.dram_bytes() - dram.staging;
        dram.total = fixed + dram.caches;
        // Parsing the hot list and the predictor left freed heap behind.
        spike_flash::io::trim_heap();
        Ok((ffn, dram))
    }
}
