//! The flash I/O cost model: the time a list of reads takes on a device, predicted from its profile
//! ([`DeviceProfile`], made by `spike profile-device`).
//!
//! # Model
//! 1. The logical reads are planned exactly as a read backend plans them ([`Plan`]): sorted, merged under
//!    the same [`IoConfig`], rounded to the alignment. The result is `n` device reads ("chunks") of sizes `s_i`.
//! 2. With queue depth `q`, at most `q_eff = min(q, n)` reads are in flight: that is the effective parallelism.
//! 3. In steady state at depth `q_eff`, a chunk of size `s` occupies the device for `s / T(s, q_eff)`, where
//!    `T` is the profile's throughput at that size and depth. (By Little's law this equals the mean latency at
//!    that depth divided by `q_eff`: the sum of the chunks' latencies divided by the parallelism.) The
//!    predicted time is the sum over chunks. For `n <= q` every read is in flight at once and the sum is the
//!    mean latency at depth `n`, as it should be; queue ramp-up and drain cancel to first order for `n > q`.
//! 4. `T(s, q)` between measured points: linear in `log2 s` between the two nearest measured sizes, and linear
//!    in `log2 q` between the two nearest measured depths. Below the smallest measured size a read costs what
//!    the smallest costs (a read is dominated by its fixed cost there); above the largest, the throughput stays
//!    that of the largest size. Depths outside the measured range are clamped.
//!
//! # Where it holds
//! Validated ([`validate_layout`], `spike io-bench --layout`) on the flash loop's own batches: one layer's
//! records (1 to all neurons) of a converted layout, merged and aligned, at depths 1 to 32. Measured batches of
//! `n` 4 KiB reads at depth 32 take what the profile's depth-`min(n, 32)` point says (no separate per-batch
//! term was needed: a lone read costs the depth-1 latency, which the profile measures). The model is only as
//! current as its profile: on a virtual disk whose speed drifts (the reference machine's depth-1 latency moved
//! between 39 and 55 us within minutes, and large reads between 1.0 and 2.3 GiB/s), profile and prediction
//! must come from the same sitting, and CPU contention from other processes delays completions by tens of
//! microseconds per read (results/device/NOTES.md).

use std::path::Path;

use serde::Serialize;

use crate::io::plan::Plan;
use crate::io::profile::DeviceProfile;
use crate::io::{IoConfig, ReadReq};
use crate::layout::Layout;
use crate::{Error, Result};

/// Throughput as a function of size, at one measured depth.
#[derive(Debug, Clone)]
struct Curve {
    depth: usize,
    /// (log2 chunk size, MiB/s), sorted by size.
    points: Vec<(f64, f64)>,
}

impl Curve {
    /// Seconds per chunk of `size` bytes in steady state.
    fn seconds(&self, size: f64) -> f64 {
        let x = size.max(1.0).log2();
        let (first, last) = (self.points[0], self.points[self.points.len() - 1]);
        let bytes_per_s = |mib_s: f64| mib_s * 1024.0 * 1024.0;
        if x <= first.0 {
            return first.0.exp2() / bytes_per_s(first.1);
        }
        if x >= last.0 {
            return size / bytes_per_s(last.1);
        }
        let k = self.points.partition_point(|p| p.0 <= x);
        let (a, b) = (self.points[k - 1], self.points[k]);
        let t = (x - a.0) / (b.0 - a.0);
        size / bytes_per_s(a.1 + t * (b.1 - a.1))
    }
}

/// A prediction for one batch of reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IoPrediction {
    /// Predicted wall time of the reads, seconds.
    pub seconds: f64,
    /// Device reads after planning.
    pub reads: usize,
    /// Device bytes after planning.
    pub bytes: u64,
    /// The parallelism used (`min(q, reads)`).
    pub depth: usize,
}

/// The cost model over one device profile.
#[derive(Debug, Clone)]
pub struct CostModel {
    curves: Vec<Curve>,
    cfg: IoConfig,
}

impl CostModel {
    /// A model of `profile`, planning reads as a backend with `cfg` would.
    pub fn new(profile: &DeviceProfile, cfg: &IoConfig) -> Result<Self> {
        let cfg = cfg.clone().validated()?;
        let mut depths: Vec<usize> = profile.points.iter().map(|p| p.queue_depth).collect();
        depths.sort_unstable();
        depths.dedup();
        let mut curves = Vec::new();
        for depth in depths {
            let mut points: Vec<(f64, f64)> = profile
                .points
                .iter()
                .filter(|p| p.queue_depth == depth && p.chunk_bytes > 0 && p.mib_s > 0.0 && p.mib_s.is_finite())
                .map(|p| ((p.chunk_bytes as f64).log2(), p.mib_s))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points.dedup_by(|a, b| a.0 == b.0);
            if !points.is_empty() {
                curves.push(Curve { depth, points });
            }
        }
        if curves.is_empty() {
            return Err(Error::Invalid("the device profile has no usable point".into()));
        }
        Ok(CostModel { curves, cfg })
    }

    /// Loads the profile at `path` (JSON written by `spike profile-device`).
    pub fn load(path: &Path, cfg: &IoConfig) -> Result<Self> {
        Self::new(&DeviceProfile::load(path)?, cfg)
    }

    /// The measured depths.
    pub fn depths(&self) -> impl Iterator<Item = usize> + '_ {
        self.curves.iter().map(|c| c.depth)
    }

    /// Steady-state seconds per chunk of `size` bytes at queue depth `depth` (see the module documentation).
    pub fn chunk_seconds(&self, size: usize, depth: usize) -> f64 {
        let q = (depth.max(1) as f64).log2();
        let c = &self.curves;
        let lq = |c: &Curve| (c.depth as f64).log2();
        let (first, last) = (&c[0], &c[c.len() - 1]);
        if q <= lq(first) {
            return first.seconds(size as f64);
        }
        if q >= lq(last) {
            return last.seconds(size as f64);
        }
        let k = c.partition_point(|cv| lq(cv) <= q);
        let (a, b) = (&c[k - 1], &c[k]);
        let t = (q - lq(a)) / (lq(b) - lq(a));
        // Interpolate the throughputs, not the times: the chart's curves are throughputs.
        let (ta, tb) = (a.seconds(size as f64), b.seconds(size as f64));
        let thr = (1.0 - t) / ta + t / tb;
        1.0 / thr
    }

    /// Predicted time of device reads of the given sizes issued together at queue depth `depth`.
    pub fn predict_chunks(&self, sizes: &[usize], depth: usize) -> IoPrediction {
        let q = depth.max(1).min(sizes.len().max(1));
        let seconds = sizes.iter().map(|&s| self.chunk_seconds(s, q)).sum();
        IoPrediction { seconds, reads: sizes.len(), bytes: sizes.iter().map(|&s| s as u64).sum(), depth: q }
    }

    /// Predicted time of one batch of logical reads at queue depth `depth`, after planning them as a backend
    /// with this model's [`IoConfig`] would.
    pub fn predict(&self, reqs: &[ReadReq], depth: usize) -> Result<IoPrediction> {
        let mut plan = Plan::default();
        plan.build(reqs, &self.cfg, u64::MAX, Path::new("<cost model>"), None)?;
        let sizes: Vec<usize> = plan.spans.iter().map(|s| s.len).collect();
        Ok(self.predict_chunks(&sizes, depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::profile::{ProfilePoint, PROFILE_FORMAT, PROFILE_VERSION};

    fn profile() -> DeviceProfile {
        let mut points = Vec::new();
        for (depth, scale) in [(1usize, 1.0), (4, 3.0), (16, 6.0)] {
            for (chunk, mib_s) in [(4096usize, 50.0), (65536, 400.0), (1 << 20, 800.0)] {
                points.push(ProfilePoint {
                    chunk_bytes: chunk,
                    queue_depth: depth,
                    reads: 1,
                    bytes: chunk as u64,
                    seconds: 1.0,
                    mib_s: mib_s * scale,
                    iops: 0.0,
                    mean_latency_us: 0.0,
                });
            }
        }
        DeviceProfile {
            format: PROFILE_FORMAT.into(),
            version: PROFILE_VERSION,
            dir: "/x".into(),
            file: None,
            file_size: 1 << 30,
            backend: "uring".into(),
            direct: true,
            offset_align: 4096,
            kernel: String::new(),
            created_unix: 0,
            points,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
    }

    #[test]
    fn measured_points_are_reproduced() {
        let m = CostModel::new(&profile(), &IoConfig::default()).unwrap();
        let mib = 1024.0 * 1024.0;
        assert!(close(m.chunk_seconds(4096, 1), 4096.0 / (50.0 * mib)));
        assert!(close(m.chunk_seconds(65536, 4), 65536.0 / (1200.0 * mib)));
        // Half way in log size between 4 KiB and 64 KiB (16 KiB): the throughputs' midpoint.
        assert!(close(m.chunk_seconds(16384, 1), 16384.0 / (225.0 * mib)));
        // Below the smallest size: the smallest's cost; above the largest: the largest's throughput.
        assert!(close(m.chunk_seconds(512, 1), m.chunk_seconds(4096, 1)));
        assert!(close(m.chunk_seconds(4 << 20, 16), 4.0 * m.chunk_seconds(1 << 20, 16)));
        // Depth 2 lies half way (in log depth) between 1 and 4; beyond 16, clamped.
        let t = m.chunk_seconds(4096, 2);
        assert!(close(1.0 / t, 0.5 / m.chunk_seconds(4096, 1) + 0.5 / m.chunk_seconds(4096, 4)));
        assert!(close(m.chunk_seconds(4096, 64), m.chunk_seconds(4096, 16)));
    }

    #[test]
    fn batches_are_planned_before_costing() {
        let m = CostModel::new(&profile(), &IoConfig::default()).unwrap();
        // Sixteen touching 4 KiB reads merge into one 64 KiB read.
        let reqs: Vec<ReadReq> = (0..16).map(|i| ReadReq { offset: i * 4096, len: 4096, dst: 0 }).collect();
        let p = m.predict(&reqs, 16).unwrap();
        assert_eq!((p.reads, p.bytes, p.depth), (1, 65536, 1));
        assert!(close(p.seconds, m.chunk_seconds(65536, 1)));
        // Far apart: sixteen reads at depth 16.
        let reqs: Vec<ReadReq> = (0..16).map(|i| ReadReq { offset: i * 65536, len: 100, dst: 0 }).collect();
        let p = m.predict(&reqs, 32).unwrap();
        assert_eq!((p.reads, p.depth), (16, 16));
        assert!(close(p.seconds, 16.0 * m.chunk_seconds(4096, 16)));
    }
}

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

/// Validates `model` against measured reads of random mixed sets of a file of `file_len` bytes: per
/// `(depth, backend)`, `sets_per_depth` sets of 64..=1024 reads of log-uniform sizes 4 KiB..1 MiB at unaligned
/// offsets. See [`validate_sets`] for how they are measured.
pub fn validate(
    backends: &mut [(usize, Box<dyn crate::io::ReadBackend>)],
    model: &CostModel,
    file_len: u64,
    sets_per_depth: usize,
    passes: usize,
    seed: u64,
) -> Result<Vec<ValidationRow>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sets = Vec::new();
    for b in 0..backends.len() {
        for _ in 0..sets_per_depth {
            let n = rng.gen_range(64..=1024);
            sets.push((b, random_mixed_set(&mut rng, file_len, n, 4096, 1 << 20)));
        }
    }
    validate_sets(backends, model, file_len, sets, passes, &mut rng)
}

/// Validates `model` against measured reads of `layout`'s `ffn.bin` (the backends must read that file): per
/// `(depth, backend)`, `sets_per_depth` sets from [`random_layout_set`]. See [`validate_sets`].
pub fn validate_layout(
    backends: &mut [(usize, Box<dyn crate::io::ReadBackend>)],
    model: &CostModel,
    layout: &Layout,
    sets_per_depth: usize,
    passes: usize,
    seed: u64,
) -> Result<Vec<ValidationRow>> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sets = Vec::new();
    for b in 0..backends.len() {
        for _ in 0..sets_per_depth {
            sets.push((b, random_layout_set(&mut rng, layout)?));
        }
    }
    validate_sets(backends, model, layout.manifest().ffn.len, sets, passes, &mut rng)
}

/// Measures each `(backend index, reads)` set with its backend (`backends[i] = (queue depth, backend)`) and
/// compares with `model`'s prediction at that depth. Every set is read `passes` times; each pass runs all sets
/// in a fresh random order, so that a drift of a shared device's speed spreads over all sets instead of
/// biasing one depth. The measured time of a set is the median of its passes' wait times (the backend's
/// [`IoStats::wait_ns`](crate::io::IoStats): planning and copying are not included).
pub fn validate_sets(
    backends: &mut [(usize, Box<dyn crate::io::ReadBackend>)],
    model: &CostModel,
    file_len: u64,
    sets: Vec<(usize, Vec<ReadReq>)>,
    passes: usize,
    rng: &mut impl rand::Rng,
) -> Result<Vec<ValidationRow>> {
    use rand::seq::SliceRandom;
    let mut preds = Vec::with_capacity(sets.len());
    for (b, reqs) in &sets {
        let depth = backends
            .get(*b)
            .ok_or_else(|| Error::Invalid(format!("read set for backend {b} of {}", backends.len())))?
            .0;
        preds.push(model.predict(reqs, depth)?);
    }
    let most = sets.iter().map(|s| s.1.iter().map(|r| r.dst + r.len).max().unwrap_or(0)).max().unwrap_or(0);
    let mut buf = crate::io::AlignedBuf::new(most.max(1 << 20))?;
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

#[cfg(test)]
mod validate_tests {
    use super::*;
    use crate::io::profile::{run_profile, ProfileConfig, ScratchFile};
    use crate::io::{open_backend, BackendKind, IoConfig};

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
        let mut backends: Vec<(usize, Box<dyn crate::io::ReadBackend>)> = [1usize, 8]
            .iter()
            .map(|&d| {
                let io = IoConfig { queue_depth: d, ..IoConfig::default() };
                (d, open_backend(BackendKind::Uring, f.path(), &io).unwrap())
            })
            .collect();
        let rows = validate(&mut backends, &model, f.len(), 2, 3, 9).unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.measured_min_ms <= r.measured_ms && r.measured_ms <= r.measured_max_ms);
            assert!(r.predicted_ms > 0.0 && r.rel_err.is_finite(), "{r:?}");
        }
    }
}
