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

use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::input::Input;
use super::kernels::{self, QMatrix};
use super::model::{activate, FfnStep, Model};
use super::sparse::NeuronSelector;
use crate::cache::{CacheStats, LayerCache};
use crate::cost::CostModel;
use crate::io::{AlignedBuf, IoStats, ReadBackend, ReadReq};
use crate::layout::Layout;
use crate::model::config::Activation;
use crate::model::quant::{self, DType};
use crate::{Error, Result};

/// Counters of a flash FFN, cumulative; the difference between two snapshots describes the tokens between.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FlashStats {
    /// Calls (layer x token batch).
    pub calls: u64,
    /// Token x layer pairs computed.
    pub token_layers: u64,
    /// Neurons selected, summed over tokens and layers.
    pub neurons_active: u64,
    /// Neurons whose records were read from flash.
    pub neurons_read: u64,
    /// Neuron rows the FFN was computed over (active rows plus any extra cached rows computed).
    pub neurons_computed: u64,
    /// Time choosing the active neurons (the predictor or oracle).
    pub select_ns: u64,
    /// Wall time of the batched reads (waiting for the device, and the backend's copy-out).
    pub io_ns: u64,
    /// Time placing rows: building read lists, cache bookkeeping and row copies.
    pub mm_ns: u64,
    /// Time computing the FFN over the rows.
    pub compute_ns: u64,
    /// The cost model's predicted time for the same reads (0 without a cost model).
    pub predicted_io_ns: u64,
}

/// A snapshot of a flash FFN's counters; two snapshots bracket the work between them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub flash: FlashStats,
    pub io: IoStats,
}

/// What one step (a token, or a prompt) cost in flash mode: the row of `--trace-out`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TokenRecord {
    /// What produced the step (a bench row's name, `prompt` or `decode`).
    pub label: String,
    /// Sequence (prompt) number.
    pub seq: usize,
    /// Step number (0 is the prompt when the prompt is recorded as one step).
    pub step: usize,
    /// Tokens in the step.
    pub tokens: usize,
    /// Wall time of the step, ms.
    pub total_ms: f64,
    pub bytes_requested: u64,
    pub bytes_read: u64,
    /// Device reads issued.
    pub reads: u64,
    /// Mean device read, bytes.
    pub mean_chunk: f64,
    /// Wall time of the batched reads, ms.
    pub io_ms: f64,
    /// Copying records out of the read backends' scratch buffers (requests whose destination could not take
    /// the aligned device read), ms: part of `io_ms`, except the prefetch thread's copies with overlap.
    pub io_copy_ms: f64,
    /// The cost model's prediction for the same reads, ms (0 without a device profile).
    pub predicted_io_ms: f64,
    /// Memory management (read lists, cache bookkeeping, row copies), ms.
    pub mm_ms: f64,
    /// FFN compute over the rows, ms.
    pub ffn_compute_ms: f64,
    /// Choosing the active neurons (predictor or oracle), ms.
    pub select_ms: f64,
    /// Everything else: attention, norms, embeddings, logits, ms.
    pub other_ms: f64,
    /// Active neurons, summed over the step's layers and tokens.
    pub neurons_active: u64,
    /// Neurons whose records were read from flash.
    pub neurons_read: u64,
    /// Share of the active neurons that did not have to be read.
    pub hit_rate: f64,
    /// Model bytes in DRAM (resident tensors, predictor, neuron caches).
    pub dram_bytes: u64,
}

impl TokenRecord {
    /// The record of the work between snapshots `a` and `b`, which took `total_ms` of wall time.
    pub fn between(step: usize, tokens: usize, total_ms: f64, a: &Snapshot, b: &Snapshot, dram_bytes: u64) -> Self {
        let (f, g) = (&a.flash, &b.flash);
        let ms = |x: u64, y: u64| y.saturating_sub(x) as f64 / 1e6;
        let reads = b.io.reads - a.io.reads;
        let bytes_read = b.io.bytes_read - a.io.bytes_read;
        let active = g.neurons_active - f.neurons_active;
        let read = g.neurons_read - f.neurons_read;
        let (io_ms, mm_ms, compute_ms, select_ms) =
            (ms(f.io_ns, g.io_ns), ms(f.mm_ns, g.mm_ns), ms(f.compute_ns, g.compute_ns), ms(f.select_ns, g.select_ns));
        TokenRecord {
            label: String::new(),
            seq: 0,
            step,
            tokens,
            total_ms,
            bytes_requested: b.io.bytes_requested - a.io.bytes_requested,
            bytes_read,
            reads,
            mean_chunk: if reads == 0 { 0.0 } else { bytes_read as f64 / reads as f64 },
            io_ms,
            io_copy_ms: ms(a.io.copy_ns, b.io.copy_ns),
            predicted_io_ms: ms(f.predicted_io_ns, g.predicted_io_ns),
            mm_ms,
            ffn_compute_ms: compute_ms,
            select_ms,
            other_ms: (total_ms - io_ms - mm_ms - compute_ms - select_ms).max(0.0),
            neurons_active: active,
            neurons_read: read,
            hit_rate: if active == 0 { 1.0 } else { 1.0 - (read.min(active) as f64 / active as f64) },
            dram_bytes,
        }
    }
}

/// How a record's bytes are laid out, from the layout's manifest.
#[derive(Debug, Clone, Copy)]
struct RowFormat {
    /// Element type of the rows (gate, up, fc1).
    dtype: DType,
    /// Element type of the down (fc2) column.
    column_dtype: DType,
    d: usize,
    f: usize,
    gated: bool,
    /// Bytes of one row (gate, up, fc1) of `d` values.
    part: usize,
    /// Bytes of the down (fc2) column of `d` values, which follows the rows.
    column: usize,
    /// Bytes of a whole payload (the stride of rows side by side).
    payload: usize,
    act: Activation,
}

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
    direct: DirectReads,
    /// The neurons of a run of records, in file order (reused).
    in_file: Vec<u32>,
    caches: Option<Vec<LayerCache>>,
    opts: FlashOptions,
    scratch: Scratch,
    cost: Option<(CostModel, usize)>,
    prefetch: Option<Prefetcher>,
    next: Vec<u32>,
    pub stats: FlashStats,
}

/// Choices of the flash loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlashOptions {
    /// Compute over every cached neuron, not only the selected ones: more compute, and cached neurons the
    /// selector missed still contribute.
    pub compute_all_cached: bool,
    /// While a layer computes (one-token steps), read the records the selector predicts, from this layer's
    /// FFN input, for the next layer, on a second backend and thread; the next layer reads only what that
    /// prediction missed.
    pub overlap: bool,
}

/// A read job for the prefetch thread.
struct Job {
    reqs: Vec<ReadReq>,
    buf: AlignedBuf,
}

/// A finished prefetch: the job's buffers back, the outcome and the backend's counters for it.
struct Done {
    reqs: Vec<ReadReq>,
    buf: AlignedBuf,
    result: Result<()>,
    io: IoStats,
}

/// A finished prefetch handed to the loop: layer, neurons (ascending), the job's requests and buffer.
type Fetched = (usize, Vec<u32>, Vec<ReadReq>, AlignedBuf);

/// Reads of the next layer's predicted neurons on their own thread and backend.
struct Prefetcher {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    done: std::sync::mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Buffers when no job is in flight.
    idle: Option<(Vec<ReadReq>, AlignedBuf)>,
    /// The layer and the neurons (ascending) of the job in flight.
    pending: Option<(usize, Vec<u32>)>,
    /// Counters of the prefetch backend, summed over finished jobs.
    io: IoStats,
    /// Its buffer and its backend's scratch (room for a whole layer each), counted in the DRAM in use.
    dram_bytes: usize,
}

impl Prefetcher {
    fn new(mut backend: Box<dyn ReadBackend>, buf_bytes: usize) -> Result<Prefetcher> {
        // Its buffer (a layer and its alignment) and its backend's scratch (a layer).
        let dram_bytes = buf_bytes + backend.scratch_bytes();
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (tx, done) = std::sync::mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("spike-prefetch".into())
            .spawn(move || {
                for mut job in rx {
                    backend.reset_stats();
                    let result = backend.read_batch(&job.reqs, &mut job.buf);
                    let io = backend.stats().clone();
                    if tx.send(Done { reqs: job.reqs, buf: job.buf, result, io }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the prefetch thread: {e}")))?;
        Ok(Prefetcher {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            idle: Some((Vec::new(), AlignedBuf::new(buf_bytes)?)),
            pending: None,
            io: IoStats::default(),
            dram_bytes,
        })
    }

    /// Waits for the job in flight, if any; returns its layer, neurons and buffer (which the caller gives
    /// back with [`Prefetcher::give_back`]).
    fn wait(&mut self) -> Result<Option<Fetched>> {
        let Some((layer, neurons)) = self.pending.take() else { return Ok(None) };
        let d = self.done.recv().map_err(|_| Error::Invalid("the prefetch thread stopped".into()))?;
        self.io.add(&d.io);
        match d.result {
            Ok(()) => Ok(Some((layer, neurons, d.reqs, d.buf))),
            Err(e) => {
                self.idle = Some((d.reqs, d.buf));
                Err(Error::InLayer { layer, source: Box::new(e) })
            }
        }
    }

    fn give_back(&mut self, reqs: Vec<ReadReq>, buf: AlignedBuf) {
        self.idle = Some((reqs, buf));
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reading a batch that is one run of records, contiguous in the file and in the staging buffer (the naive and
/// hybrid rows of a bundled layout): the aligned range around the run is read in chunks straight into the
/// staging buffer, whose rows then start a few bytes in, instead of through the backend's scratch buffer and a
/// copy.
#[derive(Debug, Clone, Copy)]
struct DirectReads {
    /// The backend's read alignment.
    align: u64,
    /// Bytes per read: the backend's largest merged read, rounded down to the alignment.
    chunk: u64,
    /// Length of `ffn.bin`: the aligned range must end inside it.
    file_len: u64,
}

impl DirectReads {
    /// The aligned file range around `bytes` bytes from `first`, if it ends inside the file.
    fn range(&self, first: u64, bytes: usize) -> Option<(u64, u64)> {
        let start = first / self.align * self.align;
        let end = (first + bytes as u64).div_ceil(self.align) * self.align;
        (end <= self.file_len).then_some((start, end))
    }
}

/// Buffers of the FFN computation, reused from call to call.
#[derive(Default)]
struct Scratch {
    input: Input,
    g: Vec<f32>,
    u: Vec<f32>,
    dense_down: Vec<f32>,
}

fn nanos(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
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
        let align = io.align as u64;
        // `Layout::open` checked ffn.bin's length against the manifest.
        let file_len = layout.manifest().ffn.len;
        let direct = DirectReads { align, chunk: (io.max_merge as u64 / align).max(1) * align, file_len };
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
            caches: None,
            opts: FlashOptions::default(),
            scratch: Scratch::default(),
            cost: None,
            prefetch: None,
            next: Vec::new(),
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
            let kind = match self.backend.name() {
                "uring" => crate::io::BackendKind::Uring,
                "mmap" => crate::io::BackendKind::Mmap,
                _ => crate::io::BackendKind::Pool,
            };
            let cfg = self.backend.config().cloned().unwrap_or_default();
            let mut b = crate::io::open_backend(kind, &self.layout.ffn_path(), &cfg)?;
            let layer = self.fmt.f * self.fmt.payload;
            b.reserve_scratch(layer)?;
            // Its buffer becomes the staging buffer when handed over: the same size.
            self.prefetch = Some(Prefetcher::new(b, self.staging.capacity())?);
        }
        Ok(())
    }

    /// The caches' counters, summed over layers.
    pub fn cache_stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for c in self.caches.iter().flatten() {
            s.add(&c.stats());
        }
        s
    }

    /// DRAM this FFN holds for weights: the caches' rows and maps, and the read buffers (the staging buffer and
    /// the backend's scratch, a layer each; with overlap the same again for the prefetch).
    pub fn dram_bytes(&self) -> u64 {
        let caches: u64 = self.caches.iter().flatten().map(LayerCache::bytes).sum();
        let prefetch = self.prefetch.as_ref().map_or(0, |p| p.dram_bytes as u64);
        caches + (self.staging.capacity() + self.backend.scratch_bytes()) as u64 + prefetch
    }

    /// Predicts every batch's I/O time with `cost` at queue depth `depth`, beside the measured time.
    pub fn set_cost_model(&mut self, cost: CostModel, depth: usize) {
        self.cost = Some((cost, depth));
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let mut io = self.backend.stats().clone();
        if let Some(p) = &self.prefetch {
            io.add(&p.io);
        }
        Snapshot { flash: self.stats, io }
    }

    /// The read backend (for its I/O counters).
    pub fn backend(&self) -> &dyn ReadBackend {
        &*self.backend
    }

    /// Zeroes the flash and I/O counters.
    pub fn reset_stats(&mut self) {
        self.stats = FlashStats::default();
        self.backend.reset_stats();
        if let Some(p) = self.prefetch.as_mut() {
            p.io = IoStats::default();
        }
    }

    /// Takes the records of a finished prefetch for `layer` into `staging`: the missing neurons it holds go
    /// to the end of `self.missing` (after those still to read), their rows copied in place after the read.
    /// Returns how many of `self.missing` (its first ones) must still be read.
    fn use_prefetch(&mut self, layer: usize) -> Result<usize> {
        let Some(p) = self.prefetch.as_mut() else { return Ok(self.missing.len()) };
        let t0 = Instant::now();
        let got = p.wait()?;
        self.stats.io_ns += nanos(t0);
        let Some((pl, neurons, reqs, mut buf)) = got else { return Ok(self.missing.len()) };
        // The cost model's prediction for the prefetch's reads, on the requests it hands back (instrumentation:
        // not timed as memory management).
        if let Some((cost, depth)) = &self.cost {
            self.stats.predicted_io_ns += (cost.predict(&reqs, *depth)?.seconds * 1e9) as u64;
        }
        let t1 = Instant::now();
        let payload = self.fmt.payload;
        if pl == layer && neurons == self.missing {
            // The prefetch read exactly the missing records, in order (hybrid and naive rows, whose selection
            // does not change): its buffer becomes the staging buffer, no copy.
            std::mem::swap(&mut self.staging, &mut buf);
            p.give_back(reqs, buf);
            self.stats.mm_ns += nanos(t1);
            return Ok(0);
        }
        // Split missing into (not prefetched) ++ (prefetched), remembering where each prefetched row is.
        let mut from = Vec::new();
        if pl == layer {
            let mut rest = Vec::with_capacity(self.missing.len());
            for &m in &self.missing {
                match neurons.binary_search(&m) {
                    Ok(k) => from.push((m, k)),
                    Err(_) => rest.push(m),
                }
            }
            let n_rest = rest.len();
            rest.extend(from.iter().map(|&(m, _)| m));
            self.missing = rest;
            self.staging.resize(self.missing.len() * payload)?;
            let dst = self.staging.as_mut_slice();
            for (i, &(_, k)) in from.iter().enumerate() {
                let at = (n_rest + i) * payload;
                dst[at..at + payload].copy_from_slice(&buf.as_slice()[k * payload..(k + 1) * payload]);
            }
        }
        p.give_back(reqs, buf);
        self.stats.mm_ns += nanos(t1);
        Ok(self.missing.len() - from.len())
    }

    /// Starts reading, for layer `layer`, the neurons the selector predicts from `x` (this layer's FFN input)
    /// that the next layer's cache does not hold.
    fn start_prefetch(&mut self, layer: usize, x: &[f32]) -> Result<()> {
        let Some(p) = self.prefetch.as_mut() else { return Ok(()) };
        let Some((mut reqs, mut buf)) = p.idle.take() else { return Ok(()) };
        let t0 = Instant::now();
        self.selector.select(layer, x, &mut self.next)?;
        self.stats.select_ns += nanos(t0);
        let t1 = Instant::now();
        if let Some(c) = self.caches.as_ref() {
            let c = &c[layer];
            self.next.retain(|&n| !c.contains(n));
        }
        let payload = self.fmt.payload;
        reqs.clear();
        for (k, &i) in self.next.iter().enumerate() {
            self.layout.neuron_reads(layer, i as usize, k * payload, &mut reqs)?;
        }
        buf.resize(self.next.len() * payload)?;
        self.stats.neurons_read += self.next.len() as u64;
        p.pending = Some((layer, self.next.clone()));
        p.jobs
            .as_ref()
            .expect("the job channel lives as long as the prefetcher")
            .send(Job { reqs, buf })
            .map_err(|_| Error::Invalid("the prefetch thread stopped".into()))?;
        self.stats.mm_ns += nanos(t1);
        Ok(())
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
        if count > 0 && count == self.missing.len() && one_each {
            // A run spans exactly `count` records (scattered selections stop here), and each record's place in it,
            // from its offset, is filled once.
            let (first, last) = self.reqs.iter().fold((u64::MAX, 0), |(a, b), r| (a.min(r.offset), b.max(r.offset)));
            let mut run = last - first == ((count - 1) * payload) as u64;
            let in_file = &mut self.in_file;
            in_file.clear();
            if run {
                in_file.resize(count, u32::MAX);
                for (r, &m) in self.reqs.iter().zip(&self.missing) {
                    let at = (r.offset - first) as usize;
                    match in_file.get_mut(at / payload) {
                        Some(slot) if at.is_multiple_of(payload) && *slot == u32::MAX => *slot = m,
                        _ => {
                            run = false;
                            break;
                        }
                    }
                }
            }
            if let Some((start, end)) = run.then(|| self.direct.range(first, count * payload)).flatten() {
                self.missing.clone_from(in_file);
                self.staging_at = (first - start) as usize;
                len = (end - start) as usize;
                self.reqs.clear();
                let mut at = start;
                while at < end {
                    let n = self.direct.chunk.min(end - at);
                    self.reqs.push(ReadReq { offset: at, len: n as usize, dst: (at - start) as usize });
                    at += n;
                }
            }
        }
        self.staging.resize(len)?;
        self.stats.mm_ns += nanos(t0);
        if let Some((cost, depth)) = &self.cost {
            self.stats.predicted_io_ns += (cost.predict(&self.reqs, *depth)?.seconds * 1e9) as u64;
        }
        let t1 = Instant::now();
        self.backend
            .read_batch(&self.reqs, &mut self.staging)
            .map_err(|e| Error::InLayer { layer, source: Box::new(e) })?;
        self.stats.io_ns += nanos(t1);
        self.stats.neurons_read += count as u64;
        Ok(())
    }
}

/// `out (n x d) += h (n x k) * rows' down parts (k x d)`: the second projection over `k` rows side by side.
#[allow(clippy::too_many_arguments)]
fn accumulate_down(
    fmt: &RowFormat,
    rows: &[u8],
    k: usize,
    h: &[f32],
    n: usize,
    dense: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let (d, column, payload, dtype) = (fmt.d, fmt.column, fmt.payload, fmt.column_dtype);
    let off = if fmt.gated { 2 * fmt.part } else { fmt.part };
    if n >= 8 {
        // A batch: dequantize the columns, a bounded block of rows at a time, and multiply as f32 matrices.
        const BLOCK: usize = 256;
        let hv = ArrayView2::from_shape((n, k), h).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ov = ArrayViewMut2::from_shape((n, d), out).map_err(|e| Error::Invalid(e.to_string()))?;
        for j0 in (0..k).step_by(BLOCK) {
            let kb = BLOCK.min(k - j0);
            dense.resize(kb * d, 0.0);
            for j in 0..kb {
                let at = (j0 + j) * payload + off;
                quant::dequantize(dtype, &rows[at..at + column], &mut dense[j * d..(j + 1) * d])?;
            }
            let dv = ArrayView2::from_shape((kb, d), &dense[..]).map_err(|e| Error::Invalid(e.to_string()))?;
            let hb = hv.slice(ndarray::s![.., j0..j0 + kb]);
            ndarray::linalg::general_mat_mul(1.0, &hb, &dv, 1.0, &mut ov);
        }
        return Ok(());
    }
    let bl = dtype.block_len();
    let blocks = d / bl;
    let isa = kernels::isa();
    let cols = kernels::Columns { dtype, data: rows, stride: payload, offset: off };
    // One token: split the output dimensions (whole blocks) over the pool; every task walks all k columns.
    let tasks = if n == 1 && k >= 64 { rayon::current_num_threads().min(blocks).max(1) } else { 1 };
    let per = blocks.div_ceil(tasks);
    if tasks > 1 {
        use rayon::prelude::*;
        out[..d].par_chunks_mut(per * bl).enumerate().for_each(|(i, o)| {
            let b0 = i * per;
            kernels::add_scaled_columns(isa, cols, &h[..k], b0..b0 + o.len() / bl, o);
        });
    } else {
        for t in 0..n {
            let o = &mut out[t * d..(t + 1) * d];
            kernels::add_scaled_columns(isa, cols, &h[t * k..(t + 1) * k], 0..blocks, o);
        }
    }
    Ok(())
}

/// The FFN over `k` rows side by side (`rows`, stride `fmt.payload`) whose neurons are `ids`, for the `n`
/// tokens prepared in `sc.input`, added to `out`. `keep(t, j)` says whether row `j` counts for token `t`.
#[allow(clippy::too_many_arguments)]
fn compute_rows(
    fmt: &RowFormat,
    sc: &mut Scratch,
    rows: &[u8],
    ids: &[u32],
    n: usize,
    b1: Option<&[f32]>,
    keep: &dyn Fn(usize, usize) -> bool,
    out: &mut [f32],
) -> Result<u64> {
    let (d, k) = (fmt.d, ids.len());
    if k == 0 {
        return Ok(0);
    }
    let rows = &rows[..(k - 1) * fmt.payload + fmt.payload];
    sc.g.resize(n * k, 0.0);
    let first = QMatrix::strided(fmt.dtype, k, d, rows, fmt.payload)?;
    sc.input.matmul(&first, &mut sc.g);
    if fmt.gated {
        sc.u.resize(n * k, 0.0);
        let up = QMatrix::strided(fmt.dtype, k, d, &rows[fmt.part..], fmt.payload)?;
        sc.input.matmul(&up, &mut sc.u);
    }
    for t in 0..n {
        for (j, &i) in ids.iter().enumerate() {
            let g = &mut sc.g[t * k + j];
            if !keep(t, j) {
                *g = 0.0;
                continue;
            }
            let a = activate(fmt.act, *g + b1.map_or(0.0, |b| b[i as usize]));
            *g = if fmt.gated { a * sc.u[t * k + j] } else { a };
        }
    }
    accumulate_down(fmt, rows, k, &sc.g, n, &mut sc.dense_down, out)?;
    Ok((n * k) as u64)
}

impl FfnStep for FlashFfn {
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let fmt = self.fmt;
        let (d, f, payload) = (fmt.d, fmt.f, fmt.payload);
        self.stats.calls += 1;
        self.stats.token_layers += n as u64;
        let t0 = Instant::now();
        self.select(layer, x, n)?;
        self.stats.select_ns += nanos(t0);

        let t1 = Instant::now();
        match self.caches.as_mut() {
            Some(c) => c[layer].begin_token(&self.fetch, &mut self.missing),
            None => self.missing.clone_from(&self.fetch),
        }
        self.stats.mm_ns += nanos(t1);
        let to_read = self.use_prefetch(layer)?;
        self.read(layer, to_read)?;
        if n == 1 && layer + 1 < self.layout.manifest().layers.len() {
            self.start_prefetch(layer + 1, x)?;
        }
        let t2 = Instant::now();
        self.declined.clear();
        match self.caches.as_mut() {
            Some(c) => {
                let c = &mut c[layer];
                let staged = &self.staging.as_slice()[self.staging_at..];
                for (k, &i) in self.missing.iter().enumerate() {
                    self.declined.push(c.insert(i, &staged[k * payload..(k + 1) * payload]).is_none());
                }
            }
            None => self.declined.resize(self.missing.len(), true),
        }
        self.stats.mm_ns += nanos(t2);

        let t3 = Instant::now();
        let (b1, b2) = model.layer(layer).ffn.biases();
        for t in 0..n {
            let o = &mut out[t * d..(t + 1) * d];
            match b2 {
                Some(b) => o.copy_from_slice(b),
                None => o.fill(0.0),
            }
        }
        self.scratch.input.prepare(fmt.dtype, x, n, d, model.precision());
        let (mask, all_active) = (&self.mask, self.all_active);
        let active = |t: usize, i: u32| all_active || mask[t * f + i as usize];
        let mut computed = 0;
        if let Some(c) = self.caches.as_ref() {
            let c = &c[layer];
            let ids = c.neurons();
            let all_cached = self.opts.compute_all_cached;
            let keep = |t: usize, j: usize| all_cached || active(t, ids[j]);
            computed += compute_rows(&fmt, &mut self.scratch, c.rows(), ids, n, b1, &keep, out)?;
        }
        let (ids, declined) = (&self.missing, &self.declined);
        let keep = |t: usize, j: usize| declined[j] && active(t, ids[j]);
        if declined.iter().any(|&x| x) {
            let rows = &self.staging.as_slice()[self.staging_at..];
            computed += compute_rows(&fmt, &mut self.scratch, rows, ids, n, b1, &keep, out)?;
        }
        self.stats.neurons_computed += computed;
        self.stats.compute_ns += nanos(t3);
        if let Some(c) = self.caches.as_mut() {
            let t4 = Instant::now();
            c[layer].end_token();
            self.stats.mm_ns += nanos(t4);
        }
        Ok(())
    }
}
