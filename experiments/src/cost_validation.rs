//! The cost model against measured reads: read sets drawn at random (mixed sizes over a file, or a layout's
//! own per-layer neuron batches), each read several times by real backends and compared with
//! [`CostModel::predict`] at the backend's depth (`spike io-bench`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use spike_flash::cost::CostModel;
use spike_flash::io::{AlignedBuf, ReadBackend, ReadReq};
use spike_flash::layout::Layout;
use spike_flash::{Error, Result};

use crate::summary::median;

/// One read set measured against its prediction (see [`validate_sets`]).
#[derive(Debug, Clone, Serialize)]
pub struct ValidationRow {
    pub set: usize,
    pub depth: usize,
    pub requests: usize,
    pub reads: usize,
    pub bytes: u64,
    /// Median over passes of the backend's wait time for the set, ms.
    pub measured_ms: f64,
    /// The first pass alone, ms: the set's reads had not been read before (within this validation).
    pub first_ms: f64,
    /// Fastest and slowest pass, ms: the device's own spread on identical work.
    pub measured_min_ms: f64,
    pub measured_max_ms: f64,
    pub predicted_ms: f64,
    /// (predicted - measured) / measured.
    pub rel_err: f64,
}

/// A random read set: `n` logical reads of log-uniform sizes in `min_len..=max_len` at random (unaligned)
/// offsets of a file of `file_len` bytes, packed one after another in the destination buffer.
pub fn random_mixed_set(
    rng: &mut impl rand::Rng,
    file_len: u64,
    n: usize,
    min_len: usize,
    max_len: usize,
) -> Vec<ReadReq> {
    let (lo, hi) = ((min_len.max(1) as f64).ln(), (max_len.max(min_len).max(1) as f64).ln());
    let mut dst = 0;
    (0..n)
        .map(|_| {
            let len = (rng.gen_range(lo..=hi).exp().round() as usize).clamp(1, file_len as usize);
            let offset = rng.gen_range(0..=file_len - len as u64);
            let r = ReadReq { offset, len, dst };
            dst += len;
            r
        })
        .collect()
}

/// The reads the flash loop issues for `neurons` (original ids, ascending) of `layer`: each neuron's records,
/// placed one payload after another (as `FlashFfn` stages them).
pub fn neuron_read_set(layout: &Layout, layer: usize, neurons: &[u32]) -> Result<Vec<ReadReq>> {
    let payload = layout.payload_bytes();
    let mut reqs = Vec::with_capacity(neurons.len() * layout.manifest().layers[layer].sections.len());
    for (k, &n) in neurons.iter().enumerate() {
        layout.neuron_reads(layer, n as usize, k * payload, &mut reqs)?;
    }
    Ok(reqs)
}

/// `count` distinct neuron ids below `d_ffn`, drawn uniformly, ascending.
pub fn random_neurons(rng: &mut impl rand::Rng, d_ffn: usize, count: usize) -> Vec<u32> {
    let mut v: Vec<u32> =
        rand::seq::index::sample(rng, d_ffn, count.min(d_ffn)).into_iter().map(|i| i as u32).collect();
    v.sort_unstable();
    v
}

/// A random read set of a layout, as one layer's batch of the flash loop: a random layer and a random subset
/// of its neurons whose size is log-uniform between 1 and all of them, so that the device reads range from
/// isolated 4 KiB spans (a few neurons) to whole-layer merges of `max_merge` bytes.
pub fn random_layout_set(rng: &mut impl rand::Rng, layout: &Layout) -> Result<Vec<ReadReq>> {
    let m = layout.manifest();
    let f = m.model.d_ffn;
    let layer = rng.gen_range(0..m.layers.len());
    let count = (rng.gen_range(0.0..=(f as f64).ln()).exp().round() as usize).clamp(1, f);
    neuron_read_set(layout, layer, &random_neurons(rng, f, count))
}

/// Where a validation's read sets come from.
#[derive(Debug, Clone, Copy)]
pub enum ReadSets<'a> {
    /// Sets of 64..=1024 reads of log-uniform sizes 4 KiB..1 MiB at unaligned offsets of a file of this
    /// many bytes ([`random_mixed_set`]).
    Mixed { file_len: u64 },
    /// One layer's batches of the flash loop over this layout's `ffn.bin` ([`random_layout_set`]); the
    /// backends must read that file.
    Layout(&'a Layout),
}

/// Validates `model` against measured reads: per `(depth, backend)`, `sets_per_depth` sets drawn from
/// `sets` with one generator seeded with `seed`. See [`validate_sets`] for how they are measured.
pub fn validate(
    backends: &mut [(usize, Box<dyn ReadBackend>)],
    model: &CostModel,
    sets: ReadSets,
    sets_per_depth: usize,
    passes: usize,
    seed: u64,
) -> Result<Vec<ValidationRow>> {
    let file_len = match sets {
        ReadSets::Mixed { file_len } => file_len,
        ReadSets::Layout(l) => l.manifest().ffn.len,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut drawn = Vec::new();
    for b in 0..backends.len() {
        for _ in 0..sets_per_depth {
            let set = match sets {
                ReadSets::Mixed { file_len } => {
                    let n = rng.gen_range(64..=1024);
                    random_mixed_set(&mut rng, file_len, n, 4096, 1 << 20)
                }
                ReadSets::Layout(l) => random_layout_set(&mut rng, l)?,
            };
            drawn.push((b, set));
        }
    }
    validate_sets(backends, model, file_len, drawn, passes, &mut rng)
}

/// Measures each `(backend index, reads)` set with its backend (`backends[i] = (queue depth, backend)`) and
/// compares with `model`'s prediction at that depth. Every set is read `passes` times; each pass runs all sets
/// in a fresh random order, so that a drift of a shared device's speed spreads over all sets instead of
/// biasing one depth. The measured time of a set is the median of its passes' wait times (the backend's
/// [`IoStats::wait_ns`](spike_flash::io::IoStats): planning and copying are not included).
pub fn validate_sets(
    backends: &mut [(usize, Box<dyn ReadBackend>)],
    model: &CostModel,
    file_len: u64,
    sets: Vec<(usize, Vec<ReadReq>)>,
    passes: usize,
    rng: &mut impl rand::Rng,
) -> Result<Vec<ValidationRow>> {
    let mut preds = Vec::with_capacity(sets.len());
    for (b, reqs) in &sets {
        let depth = backends
            .get(*b)
            .ok_or_else(|| Error::Invalid(format!("read set for backend {b} of {}", backends.len())))?
            .0;
        preds.push(model.predict(reqs, depth)?);
    }
    let most = sets.iter().map(|s| s.1.iter().map(|r| r.dst + r.len).max().unwrap_or(0)).max().unwrap_or(0);
    let mut buf = AlignedBuf::new(most.max(1 << 20))?;
    // One unmeasured batch of large reads per backend: it faults the buffer in (so that no measured read
    // waits for fresh pages) and brings the device to its sustained state, as the profile's warm-up does.
    let warm_len = (1usize << 20).min(file_len as usize);
    for (_, b) in backends.iter_mut() {
        let warm = random_mixed_set(rng, file_len, buf.len() / warm_len, warm_len, warm_len);
        b.read_batch(&warm, &mut buf)?;
    }
    let mut times = vec![Vec::with_capacity(passes); sets.len()];
    let mut order: Vec<usize> = (0..sets.len()).collect();
    for _ in 0..passes.max(1) {
        order.shuffle(rng);
        for &k in &order {
            let (b, reqs) = &sets[k];
            let backend = &mut backends[*b].1;
            backend.reset_stats();
            backend.read_batch(reqs, &mut buf)?;
            times[k].push(backend.stats().wait_ns as f64 / 1e6);
        }
    }
    Ok(sets
        .iter()
        .zip(preds)
        .zip(times.iter_mut())
        .enumerate()
        .map(|(set, (((b, reqs), pred), t))| {
            let first_ms = t[0];
            t.sort_by(f64::total_cmp);
            let measured_ms = t[t.len() / 2];
            let predicted_ms = pred.seconds * 1e3;
            ValidationRow {
                set,
                depth: backends[*b].0,
                requests: reqs.len(),
                reads: pred.reads,
                bytes: pred.bytes,
                measured_ms,
                first_ms,
                measured_min_ms: t[0],
                measured_max_ms: t[t.len() - 1],
                predicted_ms,
                rel_err: (predicted_ms - measured_ms) / measured_ms,
            }
        })
        .collect())
}

/// How far predictions were from measurements over a group of validation rows, as fractions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorSummary {
    pub sets: usize,
    /// Median of |predicted - measured| / measured.
    pub median_abs: f64,
    pub worst_abs: f64,
    /// Median of (predicted - measured) / measured.
    pub median_signed: f64,
    /// Median |error| against each set's first pass alone.
    pub median_abs_first: f64,
}

impl ErrorSummary {
    /// The summary of the rows at queue depth `depth` (every row when `None`).
    pub fn of(rows: &[ValidationRow], depth: Option<usize>) -> ErrorSummary {
        let rows: Vec<&ValidationRow> = rows.iter().filter(|r| depth.is_none_or(|d| r.depth == d)).collect();
        let abs: Vec<f64> = rows.iter().map(|r| r.rel_err.abs()).collect();
        ErrorSummary {
            sets: rows.len(),
            median_abs: median(abs.iter().copied()),
            worst_abs: abs.iter().copied().fold(0.0, f64::max),
            median_signed: median(rows.iter().map(|r| r.rel_err)),
            median_abs_first: median(rows.iter().map(|r| ((r.predicted_ms - r.first_ms) / r.first_ms).abs())),
        }
    }
}

/// The device's own spread on identical work: median over sets of slowest / fastest pass - 1.
pub fn device_spread(rows: &[ValidationRow]) -> f64 {
    median(rows.iter().map(|r| r.measured_max_ms / r.measured_min_ms - 1.0))
}

#[cfg(test)]
mod validate_tests {
    use super::*;
    use crate::device::{run_profile, ProfileConfig};
    use spike_flash::io::{open_backend, BackendKind, IoConfig, ScratchFile};

    #[test]
    fn validation_runs_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProfileConfig {
            file_size: 32 << 20,
            chunks: vec![4096, 1 << 20],
            depths: vec![1, 8],
            seconds_per_point: 0.02,
            rounds: 1,
            seed: 3,
        };
        let profile = run_profile(dir.path(), &cfg, &mut |_, _| {}).unwrap();
        let model = CostModel::new(&profile, &IoConfig::default()).unwrap();
        let f = ScratchFile::create(dir.path(), 32 << 20).unwrap();
        let mut backends: Vec<(usize, Box<dyn ReadBackend>)> = [1usize, 8]
            .iter()
            .map(|&d| {
                let io = IoConfig { queue_depth: d, ..IoConfig::default() };
                (d, open_backend(BackendKind::Uring, f.path(), &io).unwrap())
            })
            .collect();
        let rows = validate(&mut backends, &model, ReadSets::Mixed { file_len: f.len() }, 2, 3, 9).unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.measured_min_ms <= r.measured_ms && r.measured_ms <= r.measured_max_ms);
            assert!(r.predicted_ms > 0.0 && r.rel_err.is_finite(), "{r:?}");
        }
    }
}
