//! The flash-backed FFN: per layer and token batch, the active neurons' records are read from a layout's
//! `ffn.bin` through a read backend (O_DIRECT io_uring, a pread pool, or mmap) and the FFN is computed over
//! them with the quantized kernels, straight from the record bytes. Attention, embeddings and norms stay in
//! DRAM (the layout's resident model, [`Layout::load_model`]).
//!
//! A record holds one neuron in the bundled format of `docs/format.md`: gate row | up row | down column (OPT:
//! fc1 row | fc2 column | fc1 bias), each part `d_model` values: rows of the layout's row type, the column of its
//! column type (q8_0 columns beside Q4_1 rows by default, since 4-bit columns cost perplexity). Rows of many records side
//! by side are a strided matrix ([`QMatrix::strided`]): the gate (or up) rows of `k` neurons are multiplied by
//! the prepared activations in one call, like a dense matrix of `k` rows. The down columns are scaled by the
//! neuron activations and summed: dequantized and accumulated for one token, or multiplied as an f32 matrix
//! for a batch of tokens.

//!
//! Submodules: [`compute`](self) (the arithmetic and the per-layer step), `prefetch` (overlap), `stats` (the
//! counters), `session` (a whole flash run assembled from one configuration: budget, caches, backend).

mod compute;
mod prefetch;
mod resident_reads;
pub mod session;
mod stats;

use std::sync::Arc;
use std::time::Instant;

pub use session::{CacheChoice, Dram, FlashConfig, FlashSession};
pub use stats::{FlashStats, Snapshot};

use self::compute::{RowFormat, Scratch};
use self::prefetch::Prefetcher;
use super::model::Model;
use super::sparse::NeuronSelector;
use crate::cache::LayerCache;
use crate::cost::CostModel;
use crate::io::{AlignedBuf, ReadBackend, ReadReq, RunReader};
use crate::layout::Layout;
use crate::{Error, Result};

/// The FFN of a layout, read from flash through `backend`, over the neurons `selector` picks.
pub struct FlashFfn {
    layout: Arc<Layout>,
    backend: Box<dyn ReadBackend>,
    selector: Box<dyn NeuronSelector + Send>,
    fmt: RowFormat,
    // Per call, reused.
    active: Vec<u32>,
    /// Neurons to fetch for the batch (the union of the tokens' active sets), ascending.
    fetch: Vec<u32>,
    /// `n x d_ffn`: whether neuron `i` is active for token `t`.
    mask: Vec<bool>,
    /// Whether every token of the batch selected every neuron (no masking needed).
    all_active: bool,
    /// Of `fetch`, the neurons not cached (all of `fetch` without caches), ascending.
    missing: Vec<u32>,
    /// Per row of `staging`: whether the cache declined it (so it is computed from `staging`).
    declined: Vec<bool>,
    reqs: Vec<ReadReq>,
    staging: AlignedBuf,
    /// Where row 0 of `staging` starts: 0, or, after a direct read, the bytes of the aligned range before the
    /// first record.
    staging_at: usize,
    /// How runs of records are read straight into `staging`.
    direct: RunReader,
    /// The neurons of a run of records, in file order (reused).
    in_file: Vec<u32>,
    /// Per record of a run being read: whether it has been checked against the checksum table (reused).
    checked: Vec<bool>,
    caches: Option<Vec<LayerCache>>,
    opts: FlashOptions,
    scratch: Scratch,
    cost: Option<(CostModel, usize)>,
    prefetch: Option<Prefetcher>,
    next: Vec<u32>,
    /// The naive row's reads of `resident.bin` every token ([`FlashConfig::read_resident`]).
    resident_reads: Option<resident_reads::ResidentReads>,
    pub stats: FlashStats,
}

/// Choices of the flash loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashOptions {
    /// Compute over every cached neuron, not only the selected ones: more compute, and cached neurons the
    /// selector missed still contribute. Default false.
    pub compute_all_cached: bool,
    /// While a layer computes (one-token steps), read the records the selector predicts, from this layer's
    /// FFN input, for the next layer, on a second backend and thread; the next layer reads only what that
    /// prediction missed. Default false.
    pub overlap: bool,
    /// Check each record read against the layout's checksum table as it arrives, before it is used or cached
    /// ([`Layout::check_records`]). Default true; off only to measure the check's cost.
    pub verify_reads: bool,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions { compute_all_cached: false, overlap: false, verify_reads: true }
    }
}

fn nanos(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// An error of reading `layer`, saying which layer; a damaged record's error names its layer already.
fn in_layer(layer: usize, e: Error) -> Error {
    match e {
        e @ Error::RecordChecksum { .. } => e,
        e => Error::InLayer { layer, source: Box::new(e) },
    }
}

impl FlashFfn {
    /// A flash FFN over `layout`'s records, read with `backend` (opened on the layout's `ffn.bin`), computing
    /// the neurons `selector` picks. `model` must be the layout's resident model.
    pub fn new(
        model: &Model,
        layout: Arc<Layout>,
        backend: Box<dyn ReadBackend>,
        selector: Box<dyn NeuronSelector + Send>,
    ) -> Result<FlashFfn> {
        layout.check_model(model.config(), None)?;
        let cfg = model.config();
        let fmt = RowFormat {
            dtype: layout.dtype(),
            column_dtype: layout.column_dtype(),
            d: cfg.d_model,
            f: cfg.d_ffn,
            gated: layout.gated(),
            part: layout.row_bytes(),
            column: layout.column_bytes(),
            payload: layout.payload_bytes(),
            act: cfg.activation,
        };
        let mut backend = backend;
        backend.reserve_scratch(fmt.f * fmt.payload)?;
        let io = backend.config().cloned().unwrap_or_default();
        // `Layout::open` checked ffn.bin's length against the manifest.
        let direct = RunReader::new(&io, layout.manifest().ffn.len);
        Ok(FlashFfn {
            layout,
            backend,
            selector,
            fmt,
            active: Vec::new(),
            fetch: Vec::new(),
            mask: Vec::new(),
            all_active: false,
            missing: Vec::new(),
            declined: Vec::new(),
            reqs: Vec::new(),
            // Room for a whole layer and the alignment around it, so the buffer never grows while decoding.
            staging: AlignedBuf::with_align(fmt.f * fmt.payload + 2 * io.align, io.align.max(4096))?,
            staging_at: 0,
            direct,
            in_file: Vec::new(),
            checked: Vec::new(),
            caches: None,
            opts: FlashOptions::default(),
            scratch: Scratch::default(),
            cost: None,
            prefetch: None,
            next: Vec::new(),
            resident_reads: None,
            stats: FlashStats::default(),
        })
    }

    /// Keeps neurons in `caches` (one per layer, rows of [`Layout::payload_bytes`]) and fills the rows each
    /// policy pins (every neuron for `all`, the hot set for `hot:F`) from flash now.
    pub fn set_caches(&mut self, mut caches: Vec<LayerCache>) -> Result<()> {
        let (f, payload) = (self.fmt.f, self.fmt.payload);
        if caches.len() != self.layout.manifest().layers.len() {
            return Err(Error::Invalid(format!(
                "{} neuron caches for {} layers",
                caches.len(),
                self.layout.manifest().layers.len()
            )));
        }
        for (l, c) in caches.iter_mut().enumerate() {
            if c.record_bytes() != payload || c.n_neurons() != f {
                return Err(Error::Invalid(format!(
                    "layer {l}: a cache of {} neurons x {} bytes for records of {f} x {payload}",
                    c.n_neurons(),
                    c.record_bytes()
                )));
            }
            let mut pinned = c.pinned().to_vec();
            pinned.sort_unstable();
            if pinned.is_empty() {
                continue;
            }
            // The cache is empty: every pinned neuron comes back missing.
            c.begin_token(&pinned, &mut self.missing);
            self.read(l, self.missing.len())?;
            for (k, &n) in self.missing.iter().enumerate() {
                c.insert(n, &self.staged()[k * payload..(k + 1) * payload]);
            }
            c.end_token();
            c.reset_stats();
        }
        self.caches = Some(caches);
        self.reset_stats();
        Ok(())
    }

    /// Sets the loop's options; overlapping reads opens a second backend of the same kind, with the same
    /// settings.
    pub fn set_options(&mut self, opts: FlashOptions) -> Result<()> {
        self.opts = opts;
        self.prefetch = None;
        if opts.overlap {
            // A test backend has no kind that opens again: the prefetch then reads through the pool.
            let kind = self.backend.kind().unwrap_or(crate::io::BackendKind::Pool);
            let cfg = self.backend.config().cloned().unwrap_or_default();
            let mut b = crate::io::open_backend(kind, &self.layout.ffn_path(), &cfg)?;
            let layer = self.fmt.f * self.fmt.payload;
            b.reserve_scratch(layer)?;
            // Its buffer becomes the staging buffer when handed over: the same size.
            self.prefetch = Some(Prefetcher::new(b, self.staging.capacity())?);
        }
        Ok(())
    }

    /// DRAM this FFN holds for weights: the caches' rows and maps, and the read buffers (the staging buffer and
    /// the backend's scratch, a layer each; with overlap the same again for the prefetch; with resident reads
    /// their batch buffer).
    pub fn dram_bytes(&self) -> u64 {
        let caches: u64 = self.caches.iter().flatten().map(LayerCache::bytes).sum();
        let prefetch = self.prefetch.as_ref().map_or(0, |p| p.dram_bytes as u64);
        let resident = self.resident_reads.as_ref().map_or(0, |r| r.dram_bytes() as u64);
        caches + (self.staging.capacity() + self.backend.scratch_bytes()) as u64 + prefetch + resident
    }

    /// Predicts every batch's I/O time with `cost` at queue depth `depth`, beside the measured time.
    pub fn set_cost_model(&mut self, cost: CostModel, depth: usize) {
        self.cost = Some((cost, depth));
    }

    /// The read backend (for its I/O counters).
    pub fn backend(&self) -> &dyn ReadBackend {
        &*self.backend
    }

    /// Picks each token's active neurons and their union.
    fn select(&mut self, layer: usize, x: &[f32], n: usize) -> Result<()> {
        let (d, f) = (self.fmt.d, self.fmt.f);
        self.mask.clear();
        self.mask.resize(n * f, false);
        self.all_active = true;
        for t in 0..n {
            self.selector.select(layer, &x[t * d..(t + 1) * d], &mut self.active)?;
            let m = &mut self.mask[t * f..(t + 1) * f];
            for &i in &self.active {
                let slot = m
                    .get_mut(i as usize)
                    .ok_or_else(|| Error::Invalid(format!("layer {layer}: the selector picked neuron {i} of {f}")))?;
                *slot = true;
            }
            self.all_active &= self.active.len() == f;
            self.stats.neurons_active += self.active.len() as u64;
        }
        self.fetch.clear();
        if self.all_active {
            self.fetch.extend(0..f as u32);
        } else {
            self.fetch.extend((0..f).filter(|&i| (0..n).any(|t| self.mask[t * f + i])).map(|i| i as u32));
        }
        Ok(())
    }

    /// The staging buffer's rows.
    fn staged(&self) -> &[u8] {
        &self.staging.as_slice()[self.staging_at..]
    }

    /// Reads the records of the first `count` neurons of `self.missing` into the staging buffer, one payload
    /// after another (the staging buffer is sized for all of `self.missing`). When they are all of
    /// `self.missing` and one run of records in the file, `self.missing` is put in file order and the aligned
    /// range around the run is read straight into the staging buffer.
    fn read(&mut self, layer: usize, count: usize) -> Result<()> {
        let t0 = Instant::now();
        self.reqs.clear();
        let payload = self.fmt.payload;
        for (k, &i) in self.missing[..count].iter().enumerate() {
            self.layout.neuron_reads(layer, i as usize, k * payload, &mut self.reqs)?;
        }
        self.staging_at = 0;
        let mut len = self.missing.len() * payload;
        // One record per neuron (bundled), all of `missing`: if they are one run in the file (taken in file
        // order: a reordered layout stores the neurons in another order), read the aligned range around it.
        let one_each = self.reqs.len() == count && self.reqs.iter().all(|r| r.len == payload);
        let mut run = false;
        if count > 0 && count == self.missing.len() && one_each {
            if let Some((at, range)) = self.direct.plan(&mut self.reqs, &self.missing, payload, &mut self.in_file) {
                self.missing.clone_from(&self.in_file);
                self.staging_at = at;
                len = range;
                run = true;
            }
        }
        self.staging.resize(len)?;
        self.stats.mm_ns += nanos(t0);
        if let Some((cost, depth)) = &self.cost {
            self.stats.predicted_io_ns += (cost.predict(&self.reqs, *depth)?.seconds * 1e9) as u64;
        }
        let t1 = Instant::now();
        if run && self.opts.verify_reads {
            self.read_run_checked(layer, count)?;
        } else {
            self.backend.read_batch(&self.reqs, &mut self.staging).map_err(|e| in_layer(layer, e))?;
            self.check(layer, 0..count)?;
        }
        self.stats.io_ns += nanos(t1);
        self.stats.neurons_read += count as u64;
        Ok(())
    }

    /// Reads the run of `count` records planned in `self.reqs` (chunks of the aligned range around it) and
    /// checks them against the checksum table: the records a chunk holds whole as the chunk arrives, while the
    /// later chunks are still in flight (where the backend hands chunks over early), and the records that
    /// straddle two chunks once all have arrived.
    fn read_run_checked(&mut self, layer: usize, count: usize) -> Result<()> {
        let (p, at) = (self.fmt.payload, self.staging_at);
        self.checked.clear();
        self.checked.resize(count, false);
        let (layout, missing, checked, reqs) = (&self.layout, &self.missing, &mut self.checked, &self.reqs);
        let mut spent = 0;
        let mut arrived = |i: usize, bytes: &[u8]| -> Result<()> {
            let t = Instant::now();
            let (lo, hi) = (reqs[i].dst, reqs[i].dst + bytes.len());
            // The records that start at or after `lo` and end at or before `hi`.
            let (k0, k1) = (lo.saturating_sub(at).div_ceil(p), (hi.saturating_sub(at) / p).min(count));
            if k0 < k1 {
                let from = at + k0 * p - lo;
                layout.check_records(layer, &missing[k0..k1], &bytes[from..from + (k1 - k0) * p])?;
                checked[k0..k1].fill(true);
            }
            spent += nanos(t);
            Ok(())
        };
        let r = self.backend.read_batch_arriving(reqs, &mut self.staging, &mut arrived);
        self.stats.verify_ns += spent;
        r.map_err(|e| in_layer(layer, e))?;
        let mut k = 0;
        while k < count {
            let start = k;
            while k < count && !self.checked[k] {
                k += 1;
            }
            self.check(layer, start..k)?;
            k += 1;
        }
        Ok(())
    }

    /// Checks the staged records of `self.missing[range]` against the checksum table, unless the options turn
    /// the check off; counts the time.
    fn check(&mut self, layer: usize, range: std::ops::Range<usize>) -> Result<()> {
        if !self.opts.verify_reads || range.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let (p, at) = (self.fmt.payload, self.staging_at);
        let rows = &self.staging.as_slice()[at + range.start * p..at + range.end * p];
        self.layout.check_records(layer, &self.missing[range], rows)?;
        self.stats.verify_ns += nanos(t);
        Ok(())
    }
}
