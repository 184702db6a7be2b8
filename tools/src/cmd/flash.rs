//! Options shared by the commands that run a model from a flash layout (`--layout NAME.spike`): the I/O
//! backend, the neuron cache and its DRAM budget, the neuron selector, the cost model. They fill the library's
//! [`FlashConfig`]; the session it opens does the work.

use std::path::PathBuf;

use anyhow::Context;
use predictor::selectors::{for_layout, Selection};
use spike_flash::cache::Budget;
use spike_flash::engine::flash::{CacheChoice, Dram, FlashConfig, FlashFfn, FlashSession};
use spike_flash::engine::input::ActPrecision;
use spike_flash::io::{BackendKind, IoConfig};
use spike_flash::layout::read_neuron_lists;

/// The `--help` heading of the options that only flash mode (`--layout`) reads.
pub const HEADING: &str = "Flash mode (with --layout)";

/// Flash mode: the FFN stays in a layout's `ffn.bin` and is read per token.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = HEADING)]
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
    pub cache: CacheChoice,
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
    /// Do not check the records read from ffn.bin against the layout's checksum table. The check is on by
    /// default (a damaged record is an error naming its layer, section, positions and byte offset); turning it
    /// off is for measuring what it costs (scripts/verify-cost.sh): damaged records then go unnoticed.
    #[arg(long)]
    pub no_verify_reads: bool,
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

impl FlashArgs {
    /// The library's configuration for the layout at `layout`, at activation precision `precision`.
    pub fn config(&self, layout: &std::path::Path, precision: ActPrecision) -> anyhow::Result<FlashConfig> {
        let hot = match &self.hot {
            Some(p) => Some(read_neuron_lists(p)?),
            None => None,
        };
        Ok(FlashConfig {
            backend: self.backend,
            io: self.io.config()?,
            cache: self.cache,
            budget: self.budget,
            hot,
            compute_all_cached: self.compute_all_cached,
            overlap: self.overlap,
            profile: self.profile.clone(),
            precision,
            verify_reads: !self.no_verify_reads,
            ..FlashConfig::new(layout)
        })
    }

    /// Without `--layout`, the flash options given (other than those in `allowed`) would be ignored: an error
    /// naming the first.
    pub fn check_unused(&self, allowed: &[&str]) -> anyhow::Result<()> {
        // The read settings' defaults, as clap fills them in.
        let defaults = {
            use clap::{Args, FromArgMatches};
            let m = IoArgs::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]);
            IoArgs::from_arg_matches(&m)?
        };
        let given = [
            ("backend", self.backend != BackendKind::Uring),
            ("cache", self.cache != CacheChoice::default()),
            ("budget", self.budget.is_some()),
            ("hot", self.hot.is_some()),
            ("compute-all-cached", self.compute_all_cached),
            ("overlap", self.overlap),
            ("profile", self.profile.is_some()),
            ("predictor", self.predictor.is_some()),
            ("oracle", self.oracle.is_some()),
            ("no-verify-reads", self.no_verify_reads),
            ("io-align", self.io.io_align != defaults.io_align),
            ("max-gap", self.io.max_gap != defaults.max_gap),
            ("max-merge", self.io.max_merge != defaults.max_merge),
            ("queue-depth", self.io.queue_depth != defaults.queue_depth),
        ];
        match given.iter().find(|(name, set)| *set && !allowed.contains(name)) {
            Some((name, _)) => anyhow::bail!("--{name} applies to flash mode only: give --layout, or leave it out"),
            None => Ok(()),
        }
    }

    /// What picks the neurons: `--predictor`, `--oracle`, or every neuron.
    pub fn selection(&self) -> Selection {
        match (&self.predictor, &self.oracle) {
            (Some(p), _) => Selection::Predictor(p.clone()),
            (None, Some(t)) => Selection::Oracle(t.clone()),
            (None, None) => Selection::All,
        }
    }

    /// Opens the layout `dir` as these options say (with its tokenizer when `tokenizer`), and the flash FFN
    /// with its caches; prints nothing.
    pub fn open(
        &self,
        dir: &std::path::Path,
        precision: ActPrecision,
        tokenizer: bool,
    ) -> anyhow::Result<(FlashSession, FlashFfn, Dram)> {
        let session = FlashSession::open(self.config(dir, precision)?, tokenizer)
            .with_context(|| format!("opening the layout {}", dir.display()))?;
        let selector = for_layout(&session.layout, &self.selection())?;
        let (ffn, dram) = session.ffn(selector).with_context(|| match self.budget {
            Some(b) => format!("DRAM budget {b} of the {}-byte model file", session.layout.manifest().source.len),
            None => format!("setting up flash mode on {}", dir.display()),
        })?;
        Ok((session, ffn, dram))
    }
}
