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
//! The model is checked against measured reads by `experiments::cost_validation` (`spike io-bench`), on random
//! mixed sets and on a layout's own per-layer read sets. It is only as current as its profile: on a device
//! whose speed drifts, profile and prediction must come from the same sitting.

pub mod profile;

use std::path::Path;

use serde::Serialize;

pub use profile::{DeviceProfile, ProfilePoint, RoundSpread, PROFILE_FORMAT, PROFILE_VERSION};

use crate::io::plan::Plan;
use crate::io::{IoConfig, ReadReq};
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
    use super::profile::{ProfilePoint, PROFILE_FORMAT, PROFILE_VERSION};
    use super::*;

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
                    p50_latency_us: None,
                    p99_latency_us: None,
                    spread: None,
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
