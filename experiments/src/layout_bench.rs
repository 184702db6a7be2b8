//! The layout read benchmark: a converted layout's neuron records read in random subsets per layer, as the flash
//! loop reads them (one batch per layer: the records of the selected neurons from the manifest's offsets, planned
//! and merged by each backend with its [`IoConfig`]), with each backend, at several subset sizes.
//!
//! Per token, for every subset fraction and every layer, one random subset of the layer's neurons is drawn and
//! every backend reads that same subset; the backends' order rotates from token to token so that a drift of the
//! device's speed favours none. The O_DIRECT backends (`uring`, `pool`) never touch the page cache. The `mmap`
//! backend reads through it: before each token's pass its map is dropped and the file's cached pages are evicted
//! (`posix_fadvise(DONTNEED)`), so every token's faults reach the device, as for a model larger than DRAM;
//! its device bytes come from the process's `/proc/self/io` `read_bytes` (readahead included).

use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use spike_flash::cost::CostModel;
use spike_flash::io::plan::Plan;
use spike_flash::io::{
    drop_page_cache, open_backend, process_read_bytes, AlignedBuf, BackendKind, IoConfig, ReadBackend,
};
use spike_flash::layout::{Layout, FFN_FILE};
use spike_flash::{Error, Result};

use crate::cost_validation::{neuron_read_set, random_neurons};

/// What to measure. Build with `LayoutBenchConfig { .., ..LayoutBenchConfig::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutBenchConfig {
    /// Fractions of each layer's neurons read per batch, in (0, 1]. Default 5%, 25%, 100%.
    pub fractions: Vec<f64>,
    /// Backends to compare. Default uring, pool, mmap.
    pub backends: Vec<BackendKind>,
    /// Passes over all layers ("tokens") per fraction, each with fresh subsets. Default 8.
    pub tokens: usize,
    /// io_uring queue depth and pool threads (their settings otherwise come from `io`). Default 32.
    pub depth: usize,
    /// Planning and backend settings (alignment, merging). Default [`IoConfig::default`].
    pub io: IoConfig,
    /// Seed of the subsets. Default 7.
    pub seed: u64,
}

impl Default for LayoutBenchConfig {
    fn default() -> Self {
        LayoutBenchConfig {
            fractions: vec![0.05, 0.25, 1.0],
            backends: BackendKind::ALL.to_vec(),
            tokens: 8,
            depth: 32,
            io: IoConfig::default(),
            seed: 7,
        }
    }
}

impl LayoutBenchConfig {
    pub fn validated(self) -> Result<Self> {
        let bad = |w: String| Err(Error::Invalid(w));
        if self.fractions.is_empty() || self.backends.is_empty() {
            return bad("the layout benchmark needs at least one fraction and one backend".into());
        }
        if let Some(f) = self.fractions.iter().find(|&&f| !(f > 0.0 && f <= 1.0)) {
            return bad(format!("subset fraction {f} is not in (0, 1]"));
        }
        if !(1..=100_000).contains(&self.tokens) {
            return bad(format!("tokens {} is not in 1..=100000", self.tokens));
        }
        let io = IoConfig { queue_depth: self.depth, threads: self.depth, ..self.io }.validated()?;
        Ok(LayoutBenchConfig { io, ..self })
    }
}

/// One (backend, fraction): totals over all tokens and layers.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutBenchRow {
    pub backend: String,
    /// Whether reads went through the page cache (mmap; dropped before every token).
    pub page_cache: bool,
    pub fraction: f64,
    /// io_uring queue depth or pool threads (mmap: 1, the faulting thread).
    pub depth: usize,
    pub tokens: usize,
    /// One batch per layer and token.
    pub batches: u64,
    /// Neurons read per batch.
    pub neurons_per_batch: usize,
    /// Logical requests (records).
    pub requests: u64,
    /// Device reads after planning (mmap: one per record copied; the kernel's reads are not visible).
    pub reads: u64,
    /// Bytes of the records asked for.
    pub bytes_useful: u64,
    /// Bytes the backend read: aligned, merged spans (mmap: the process's `read_bytes`, readahead included).
    pub bytes_read: u64,
    /// `bytes_read / bytes_useful`.
    pub read_amplification: f64,
    /// Mean device read, bytes (`bytes_read / reads`; mmap: the mean of the spans an O_DIRECT backend would
    /// read, for comparison: the kernel's readahead decides mmap's real reads).
    pub mean_chunk_bytes: f64,
    /// The process's `read_bytes` over the O_DIRECT backends' batches: an independent count of `bytes_read`.
    pub os_read_bytes: u64,
    /// Time waiting for the reads, seconds (sum over batches).
    pub seconds: f64,
    /// Median over tokens of one token's time (all layers), milliseconds.
    pub token_ms_median: f64,
    pub useful_mib_s: f64,
    pub read_mib_s: f64,
    /// The device profile's throughput for reads of `mean_chunk_bytes` at the backend's depth; none for mmap.
    pub profile_mib_s: Option<f64>,
    /// The cost model's time for the same batches (planned as the O_DIRECT backends plan them), seconds; none
    /// for mmap, whose device reads are the kernel's.
    pub predicted_seconds: Option<f64>,
}

struct Acc {
    requests: u64,
    reads: u64,
    useful: u64,
    read: u64,
    os_read: u64,
    ns: u64,
    planned_reads: u64,
    planned_bytes: u64,
    predicted: f64,
    token_ms: Vec<f64>,
}

/// Runs the benchmark over `layout` (its `ffn.bin`). `model`, if given, adds the profile's figure and the cost
/// model's prediction beside each row. `progress` is called after each token with (token, tokens).
pub fn run_layout_bench(
    layout: &Layout,
    cfg: &LayoutBenchConfig,
    model: Option<&CostModel>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayoutBenchRow>> {
    let cfg = cfg.clone().validated()?;
    let path = layout.dir().join(FFN_FILE);
    let m = layout.manifest();
    let (n_layers, f) = (m.layers.len(), m.model.d_ffn);
    let counts: Vec<usize> = cfg.fractions.iter().map(|&x| ((x * f as f64).round() as usize).clamp(1, f)).collect();
    let open = |kind: BackendKind| open_backend(kind, &path, &cfg.io);
    let mut backends: Vec<Option<Box<dyn ReadBackend>>> =
        cfg.backends.iter().map(|&k| open(k).map(Some)).collect::<Result<_>>()?;
    let payload = layout.payload_bytes();
    let mut buf = AlignedBuf::new(f * payload)?;
    // Faults the buffer in, so that no measured read waits for fresh pages.
    buf.as_mut_slice().fill(0);
    let mut acc: Vec<Vec<Acc>> = (0..cfg.backends.len())
        .map(|_| {
            (0..counts.len())
                .map(|_| Acc {
                    requests: 0,
                    reads: 0,
                    useful: 0,
                    read: 0,
                    os_read: 0,
                    ns: 0,
                    planned_reads: 0,
                    planned_bytes: 0,
                    predicted: 0.0,
                    token_ms: Vec::new(),
                })
                .collect()
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut plan = Plan::default();
    let nb = cfg.backends.len();
    for token in 0..cfg.tokens {
        for (fi, &count) in counts.iter().enumerate() {
            let sets: Vec<_> = (0..n_layers)
                .map(|layer| neuron_read_set(layout, layer, &random_neurons(&mut rng, f, count)))
                .collect::<Result<_>>()?;
            for r in 0..nb {
                let bi = (r + token) % nb;
                let kind = cfg.backends[bi];
                if kind == BackendKind::Mmap {
                    // Unmap before evicting: the kernel does not drop pages that are still mapped.
                    backends[bi] = None;
                    drop_page_cache(&path)?;
                    backends[bi] = Some(open(kind)?);
                }
                let b = backends[bi].as_mut().expect("every backend is open outside the reopening above");
                let a = &mut acc[bi][fi];
                b.reset_stats();
                let os0 = process_read_bytes();
                let t0 = Instant::now();
                for reqs in &sets {
                    b.read_batch(reqs, &mut buf)?;
                }
                let token_ns = t0.elapsed().as_nanos() as u64;
                let os = process_read_bytes().zip(os0).map_or(0, |(b, a)| b.saturating_sub(a));
                let s = b.stats();
                a.requests += s.requests;
                a.reads += s.reads;
                a.useful += s.bytes_requested;
                a.read += if kind == BackendKind::Mmap { os } else { s.bytes_read };
                a.os_read += os;
                a.ns += if kind == BackendKind::Mmap { token_ns } else { s.wait_ns };
                a.token_ms.push(if kind == BackendKind::Mmap { token_ns } else { s.wait_ns } as f64 / 1e6);
                for reqs in &sets {
                    plan.build(reqs, &cfg.io, u64::MAX, &path, None)?;
                    a.planned_reads += plan.spans.len() as u64;
                    a.planned_bytes += plan.spans.iter().map(|s| s.len as u64).sum::<u64>();
                    if let Some(model) = model.filter(|_| kind != BackendKind::Mmap) {
                        a.predicted += model.predict(reqs, cfg.depth)?.seconds;
                    }
                }
            }
        }
        progress(token + 1, cfg.tokens);
    }
    let mib = 1024.0 * 1024.0;
    let mut rows = Vec::new();
    for (bi, &kind) in cfg.backends.iter().enumerate() {
        for (fi, &count) in counts.iter().enumerate() {
            let a = &mut acc[bi][fi];
            let seconds = a.ns as f64 / 1e9;
            let mmap = kind == BackendKind::Mmap;
            let mean_chunk = if mmap || a.reads == 0 {
                a.planned_bytes as f64 / a.planned_reads.max(1) as f64
            } else {
                a.read as f64 / a.reads as f64
            };
            let depth = if mmap { 1 } else { cfg.depth };
            a.token_ms.sort_by(f64::total_cmp);
            rows.push(LayoutBenchRow {
                backend: kind.as_str().into(),
                page_cache: mmap,
                fraction: cfg.fractions[fi],
                depth,
                tokens: cfg.tokens,
                batches: (cfg.tokens * n_layers) as u64,
                neurons_per_batch: count,
                requests: a.requests,
                reads: a.reads,
                bytes_useful: a.useful,
                bytes_read: a.read,
                read_amplification: a.read as f64 / a.useful.max(1) as f64,
                mean_chunk_bytes: mean_chunk,
                os_read_bytes: a.os_read,
                seconds,
                token_ms_median: a.token_ms[a.token_ms.len() / 2],
                useful_mib_s: a.useful as f64 / mib / seconds,
                read_mib_s: a.read as f64 / mib / seconds,
                profile_mib_s: model
                    .filter(|_| !mmap)
                    .map(|m| mean_chunk / m.chunk_seconds(mean_chunk.round() as usize, depth) / mib),
                predicted_seconds: model.filter(|_| !mmap).map(|_| a.predicted),
            });
        }
    }
    Ok(rows)
}
